"""What the SQLite ledger's write path costs per settle, in process: CPU of each thread per
settle while `--in-flight` settles run at once (each batch takes all of them) through
`SqliteLedger.settle_async` on uvloop (the server's group commit, real SQLite,
synchronous=FULL), and WAL frames per COMMIT.

    python scripts/ledger_write_cost.py --persons 1000 --settles 12000 --in-flight 12 [--rounds 3]
    python scripts/ledger_write_cost.py --pages     # also the WAL frames a settle, by b-tree

`--path ledger` (default): each settle's pricing is a prepared settlement of the bench's own
requests (made once with the real rules), so the loop's CPU is the ledger's (SQL, group commit,
answering) plus this script's small driver, whose own cost `--path driver` prints (the same
loop without the ledger); `--path core` runs `SettlementCore.settle_visit` (validation, rules,
answer and ledger) as the server does without gRPC.
Prints figures, asserts nothing. Run it from two checkouts, interleaved, to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from settlesim.clients.bench import Requests
from settlesim.clients.workload import Workload
from settlesim.server.calls import Caller
from settlesim.server.ids import IDS
from settlesim.server.ledger.sqlite import SqliteLedger
from settlesim.server.model import YearlyTotals
from settlesim.server.service import SettlementCore, request_hash
from settlesim.server.world_generate import generate_world
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads (/proc schedstat, nanoseconds): the loop (this
    thread) and the others (the COMMIT helper; the synchronous API's writer thread idles)."""
    out = {"loop": 0.0, "other": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue
        out["loop" if int(tid) == threading.get_native_id() else "other"] += ns / 1e9
    return out


def frames_by_btree(ledger: SqliteLedger) -> Counter[str]:
    """WAL frames by the b-tree their page belongs to: the -wal file's frame headers (page
    numbers) against the dbstat table read on the ledger's write connection, before any
    checkpoint."""
    wal = Path(f"{ledger.path}-wal").read_bytes()
    page_size = struct.unpack(">I", wal[8:12])[0]
    pages = [struct.unpack(">I", wal[at : at + 4])[0] for at in range(32, len(wal) - page_size, 24 + page_size)]
    names = dict(ledger._db.execute("SELECT pageno, name FROM dbstat"))
    return Counter(names.get(page, "(new page)") for page in pages)


def wal_frames(ledger: SqliteLedger) -> int:
    """Frames in the WAL since it last started over (PRAGMA wal_checkpoint's second figure), on
    the ledger's write connection while no batch is under way."""
    return ledger._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


class Prepared:
    """Settlements priced once by the real rules, handed out again with fresh ids and msgids."""

    def __init__(self, core: SettlementCore, requests: list[pb.SettleVisitRequest]) -> None:
        self.items: list[tuple[pb.SettlementRequest, object, tuple[int, ...]]] = []
        captured: list[object] = []

        class Capture:  # stands in for the ledger once, to keep what the rules priced
            async def settle_async(self, *args: object) -> object:
                compute = args[7]
                stored, after = compute(YearlyTotals())
                captured.append((stored, after))
                return stored, False

        real, core.ledger = core.ledger, Capture()
        caller = Caller("", "")
        loop = asyncio.new_event_loop()
        for request in requests:
            captured.clear()
            try:
                loop.run_until_complete(core.settle_visit(caller, request))
            except Exception:
                continue
            stored, after = captured[0]
            self.items.append((request.request, stored, after))
        loop.close()
        core.ledger = real


async def drive(
    ledger: SqliteLedger, core: SettlementCore, requests: list[pb.SettleVisitRequest],
    prepared: Prepared | None, count: int, in_flight: int, null: bool = False,
) -> int:  # fmt: skip
    """`count` settles, `in_flight` at once; the settles that were refused."""
    caller = Caller("", "")
    tag = f"{time.time_ns() % 10**12:012d}"
    refused = 0
    n = 0

    async def one_core(i: int) -> None:
        nonlocal refused
        request = pb.SettleVisitRequest()
        request.CopyFrom(requests[i % len(requests)])
        request.request.msgid = f"{request.request.visit.institution_code}{tag}{i:08d}"  # as the bench's
        try:
            await core.settle_visit(caller, request)
        except Exception:
            refused += 1

    async def one_ledger(i: int) -> None:
        nonlocal refused
        source, stored, after = prepared.items[i % len(prepared.items)]
        msgid = f"{stored.institution_code}{tag}{i:08d}"  # the institution's code first, as the bench's
        fresh = replace(stored, settlement_id=IDS.next("S"), msgid=msgid)

        def compute(totals: YearlyTotals) -> tuple[object, YearlyTotals]:
            return fresh, YearlyTotals(
                totals.deductible_used + after.deductible_used,
                totals.fund_paid + after.fund_paid,
                totals.serious_threshold_used + after.serious_threshold_used,
                totals.serious_paid + after.serious_paid,
                totals.assistance_paid + after.assistance_paid,
                totals.account_paid + after.account_paid,
            )

        visit = source.visit
        if null:  # the driver alone: what `--path ledger` spends besides the ledger
            compute(YearlyTotals())
            request_hash(source)
            await asyncio.sleep(0)
            return
        try:
            await ledger.settle_async(
                "", msgid, visit.institution_code, request_hash(source), visit.person.person_no,
                visit.disease_code, stored.visit_date.year, compute,
            )  # fmt: skip
        except Exception:
            refused += 1

    one = one_ledger if prepared is not None else one_core

    async def worker() -> None:
        nonlocal n
        while n < count:
            i = n
            n += 1
            await one(i)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--settles", type=int, default=6000)
    # In process every settle in flight joins the next batch: 12 makes the batches that
    # `settlesim serve` commits under the bench's closed loop (32 in flight over the network),
    # and no batch waits for company (group_commit.py: fewer than 12 wait up to 3 ms).
    parser.add_argument("--in-flight", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--path", choices=("ledger", "core", "driver"), default="ledger")
    parser.add_argument("--world", type=Path, help="a generated world (default: one made of --persons)")
    parser.add_argument("--pages", action="store_true", help="also the WAL frames a settle by b-tree")
    args = parser.parse_args()
    import uvloop

    scratch = Path(tempfile.mkdtemp(prefix="ledger-cost-"))
    world_dir = args.world
    if world_dir is None:
        world_dir = scratch / "world"
        generate_world(world_dir, args.persons, 1)
    world = load_world(world_dir)
    workload = Workload.load(world_dir)
    source = Requests(workload, 1, count=2000)
    requests = [pb.SettleVisitRequest.FromString(source.next()) for _ in range(2000)]
    print(f"{sys.argv[0]}: {args.settles} settles a round, {args.in_flight} in flight, path {args.path}, "
          f"code {Path(__file__).resolve().parents[1]}")  # fmt: skip
    figures: dict[str, list[float]] = {}
    for r in range(args.rounds):
        db = scratch / f"ledger-{r}.db"
        ledger = SqliteLedger(db)
        core = SettlementCore(world, ledger)
        prepared = Prepared(core, requests) if args.path != "core" else None
        loop = uvloop.new_event_loop()
        if args.path == "driver":
            loop.run_until_complete(drive(ledger, core, requests, prepared, 1000, args.in_flight, null=True))
            before = thread_cpu()
            loop.run_until_complete(
                drive(ledger, core, requests, prepared, args.settles, args.in_flight, null=True)
            )
            driver = (thread_cpu()["loop"] - before["loop"]) / args.settles * 1e6
            print(f"round {r + 1}: the driver alone, loop us {driver:.1f}")
            figures.setdefault("driver loop us", []).append(driver)
            ledger.close()
            loop.close()
            continue
        # Warm-up (caches, the group commit's helper thread), then WAL frames per COMMIT with
        # no checkpoint in between, then the timed run as served.
        loop.run_until_complete(drive(ledger, core, requests, prepared, 1000, args.in_flight))
        ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ledger._db.execute("PRAGMA wal_autocheckpoint=0")
        committer = ledger._loop_committer
        batches, writes = committer.batches, committer.writes
        loop.run_until_complete(drive(ledger, core, requests, prepared, 1500, args.in_flight))
        frames = wal_frames(ledger)
        frame_batches, frame_writes = committer.batches - batches, committer.writes - writes
        if args.pages:
            by_btree = frames_by_btree(ledger)
            print(f"round {r + 1}: WAL frames a settle by b-tree: " + ", ".join(
                f"{name} {n / frame_writes:.2f}" for name, n in by_btree.most_common()
            ))  # fmt: skip
        ledger._db.execute("PRAGMA wal_autocheckpoint=10000")  # as connect() sets it
        batches, writes = committer.batches, committer.writes
        before, wall = thread_cpu(), time.perf_counter()
        refused = loop.run_until_complete(
            drive(ledger, core, requests, prepared, args.settles, args.in_flight)
        )
        after, wall = thread_cpu(), time.perf_counter() - wall
        batches, writes = committer.batches - batches, committer.writes - writes
        ledger.close()
        loop.close()
        settles = args.settles - refused
        row = {
            "settles/s": settles / wall,
            "per batch": writes / batches,
            "frames/commit": frames / frame_batches,
            "frames/settle": frames / frame_writes,
        }
        for name in sorted(after):
            row[f"{name} us"] = (after[name] - before.get(name, 0.0)) / settles * 1e6
        row["total us"] = sum(v for k, v in row.items() if k.endswith(" us"))
        print(f"round {r + 1}: refused {refused}; " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
        for k, v in row.items():
            figures.setdefault(k, []).append(v)
    if args.rounds > 1:
        print("medians: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
