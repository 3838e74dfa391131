"""A digest of every answer the settle path gives, to show a change of its code changes no byte.

Runs many generated requests through `SettlementCore` (the flow both doors call) on a real
SQLite ledger: VerifyRegistration, PreSettleVisit, SettleVisit, some retries (replayed), some
reused msgids, GetSettlement of some settled ones, and requests mutated to be refused (bad
fields, unknown codes, other people and institutions, certificates, insurance types). Every
answer's bytes and every refusal's status (code, message, details) go into one SHA-256,
printed with the counts. Settlement and visit ids are numbered instead of time-ordered so two
runs can agree. Run it on two versions of the code; the digests must be equal.

    python scripts/answers_digest.py --world /tmp/world-1k --count 20000
    python scripts/answers_digest.py --count 5000          # the bundled world

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import tempfile
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from settlesim.clients.workload import Workload
from settlesim.server import service
from settlesim.server.calls import Caller
from settlesim.server.ledger import open_ledger
from settlesim.server.rules.reasons import Refusal
from settlesim.server.status import to_status
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb

IN_FLIGHT = 8  # settles awaited together: the group commit batches them, in order


class NumberedIds:
    def __init__(self) -> None:
        self.n = 0

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n:019d}"


class Requests:
    """Settlement requests over a world: mostly eligible visits of the workload, the rest any
    person at any institution for any disease on any day, some of them malformed."""

    def __init__(self, world, workload: Workload, seed: int) -> None:
        self.rng = random.Random(seed)
        self.world = world
        self.workload = workload
        self.people = sorted(world.people)
        self.institutions = sorted(world.institutions)
        self.diseases = sorted(world.diseases)
        codes = {code for catalog in world.catalogs.values() for code in catalog.items}
        self.codes = [*sorted(codes | set(workload.catalog_codes)), "NOT-A-CODE-1"]
        self.n = 0

    def items(self) -> list[pb.FeeItem]:
        rng = self.rng
        items = []
        for n in range(1, rng.randint(1, 6) + 1):
            code = rng.choice(self.codes if rng.random() < 0.3 else self.workload.catalog_codes)
            price = rng.choice((rng.randrange(0, 1000), rng.randrange(100, 60_000), rng.randrange(1, 2_000_000)))
            quantity = rng.randint(1, 3)
            items.append(
                pb.FeeItem(
                    sequence_no=f"{n:04d}",
                    catalog_code=code,
                    hospital_item_code=f"HIS-{code}" if rng.random() < 0.8 else "",
                    unit_price_fen=price,
                    quantity=quantity,
                    amount_fen=price * quantity,
                )
            )
        return items

    def next(self) -> pb.SettlementRequest:
        rng = self.rng
        self.n += 1
        if rng.random() < 0.7:
            visit = rng.choice(self.workload.visits)
            person_no, institution, disease, day = (
                visit.person_no, visit.institution_code, visit.disease_code, visit.day(rng),
            )  # fmt: skip
        else:
            person_no = rng.choice(self.people)
            institution = rng.choice(self.institutions)
            disease = rng.choice(self.diseases)
            day = (date(2019, 1, 1) + timedelta(days=rng.randrange(9 * 365))).isoformat()
        person = self.world.people[person_no]
        ref = pb.PersonRef(person_no=person_no)
        r = rng.random()
        if r < 0.05:
            ref = pb.PersonRef(certificate_type=person.certificate_type, certificate_no=person.certificate_no)
        elif r < 0.08:
            ref = pb.PersonRef(person_no=person_no, certificate_no=person.certificate_no)
        elif r < 0.09:
            ref = pb.PersonRef(person_no=person_no, certificate_no="X" + person.certificate_no)
        request = pb.SettlementRequest(
            msgid=f"{institution}{self.n:010d}",
            visit=pb.Visit(
                institution_code=institution,
                person=ref,
                disease_code=disease,
                visit_date=day,
                medical_type=pb.MEDICAL_TYPE_CHRONIC_SPECIAL_OUTPATIENT,
            ),
            items=self.items(),
            operator="digest",
            use_personal_account=rng.random() < 0.5,
        )
        if rng.random() < 0.05:
            request.visit.insurance_type = rng.choice((pb.INSURANCE_TYPE_EMPLOYEE, pb.INSURANCE_TYPE_RESIDENT, 7))
        if rng.random() < 0.08:
            self.mutate(request)
        return request

    def mutate(self, request: pb.SettlementRequest) -> None:
        rng = self.rng
        kind = rng.randrange(14)
        item = request.items[0]
        if kind == 0:
            request.msgid = rng.choice(("", "bad msgid", "x" * 65))
        elif kind == 1:
            request.visit.institution_code = rng.choice(("", "H99999999999", "bad code!"))
        elif kind == 2:
            request.visit.disease_code = rng.choice(("", "Z99999", "é"))
        elif kind == 3:
            request.visit.visit_date = rng.choice(("", "2024-02-30", "2024-W18-3", "1980-01-01", "20240101"))
        elif kind == 4:
            item.amount_fen += 1
        elif kind == 5:
            request.items.add().CopyFrom(item)  # a duplicate sequence_no
        elif kind == 6:
            item.quantity = rng.choice((0, -1, 100_001))
            item.amount_fen = item.unit_price_fen * item.quantity
        elif kind == 7:
            item.unit_price_fen = rng.choice((-5, 100_000_001))
            item.amount_fen = item.unit_price_fen * item.quantity
        elif kind == 8:
            del request.items[:]
        elif kind == 9:
            request.visit.medical_type = 11
        elif kind == 10:
            request.operator = "o" * 65
        elif kind == 11:
            request.visit.person.Clear()
        elif kind == 12:
            item.sequence_no = rng.choice(("", "bad seq", "é"))
            item.catalog_code = rng.choice(("", "bad code"))
        else:
            for _ in range(12):  # many violations: the listed ones and "(and N more)"
                bad = request.items.add(sequence_no="", catalog_code="", quantity=0)
                bad.amount_fen = 1


class Digest:
    def __init__(self, dump=None) -> None:
        self.sha = hashlib.sha256()
        self.counts: Counter[str] = Counter()
        self.dump = dump  # a file to write each answer's text to, to find where two runs part

    def _add(self, kind: str, data: bytes, text: object) -> None:
        self.sha.update(kind.encode() + b"\0" + data + b"\1")
        if self.dump is not None:
            print(kind, text, file=self.dump)

    def answer(self, kind: str, message) -> None:
        self.counts[kind] += 1
        self._add(kind, message.SerializeToString(), message)

    def refusal(self, kind: str, refusal: Refusal) -> None:
        self.counts[f"{kind} refused {refusal.reason.value}"] += 1
        # The refusal as its status carries it; ErrorInfo's metadata is a map, which protobuf
        # encodes in no fixed order, so it is taken sorted here.
        status = to_status(refusal)
        text = (
            status.code,
            refusal.reason.value,
            refusal.message,
            sorted(refusal.metadata.items()),
            [(v.field, v.description, v.reason.value) for v in refusal.violations],
        )
        self._add(kind, repr(text).encode(), text)


async def _call(digest: Digest, kind: str, call) -> object | None:
    try:
        answer = await call
    except Refusal as refusal:
        digest.refusal(kind, refusal)
        return None
    digest.answer(kind, answer)
    return answer


async def run(world_dir: str | None, count: int, seed: int, dump=None) -> tuple[Digest, float]:
    service.IDS = NumberedIds()  # type: ignore[assignment]  # ids two runs agree on
    world = load_world(world_dir)
    workload = Workload.load(world_dir)
    requests = Requests(world, workload, seed)
    digest = Digest(dump)
    caller = Caller("", "")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        ledger = open_ledger(Path(tmp) / "digest.db")
        core = service.SettlementCore(world, ledger)
        settled: list[pb.SettlementRequest] = []
        started = time.process_time()
        done = 0
        while done < count:
            batch = [requests.next() for _ in range(min(IN_FLIGHT, count - done))]
            done += len(batch)
            for request in batch:
                await _call(digest, "verify", core.verify_registration(
                    caller, pb.VerifyRegistrationRequest(visit=request.visit)))  # fmt: skip
                presettle = pb.PreSettleVisitRequest(request=request)
                await _call(digest, "presettle", core.pre_settle_visit(caller, presettle))
            rng = requests.rng
            calls = [core.settle_visit(caller, pb.SettleVisitRequest(request=r)) for r in batch]
            if settled and rng.random() < 0.3:  # a retry (replayed) and a reused msgid
                again = rng.choice(settled)
                calls.append(core.settle_visit(caller, pb.SettleVisitRequest(request=again)))
                reused = pb.SettlementRequest()
                reused.CopyFrom(again)
                reused.items[0].quantity += 1
                reused.items[0].amount_fen = reused.items[0].unit_price_fen * reused.items[0].quantity
                calls.append(core.settle_visit(caller, pb.SettleVisitRequest(request=reused)))
            answers = []
            for call in calls:  # awaited together, in order: the group commit batches them
                answers.append(asyncio.ensure_future(_call(digest, "settle", call)))
            for request, answer in zip(batch, await asyncio.gather(*answers), strict=False):
                if answer is not None:
                    settled.append(request)
                    if rng.random() < 0.1:
                        await _call(digest, "get", core.get_settlement(caller, pb.GetSettlementRequest(
                            institution_code=request.visit.institution_code, msgid=request.msgid)))  # fmt: skip
        cpu = time.process_time() - started
        ledger.close()
    return digest, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default=None, help="a world directory (default: the bundled world)")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dump", type=argparse.FileType("w"), help="write every answer's text here too")
    args = parser.parse_args()
    digest, cpu = asyncio.run(run(args.world, args.count, args.seed, args.dump))
    for kind, n in sorted(digest.counts.items()):
        print(f"{n:>8}  {kind}")
    print(f"{sum(digest.counts.values())} answers and refusals in {cpu:.1f} s CPU")
    print(f"digest {digest.sha.hexdigest()}  ({service.__file__})")


if __name__ == "__main__":
    main()
