"""CPU per settle of each stage of the settle path, and of `SettlementCore.settle_visit` end to end.

Over SettleVisit requests made from a world's eligible visits (as `settlesim bench` makes them):

- the pure stages, each timed alone over every request (`time.process_time`, one thread):
  validation, the registration check, the plan (both, and the catalog), pricing
  (`SettlementPlan.compute`), the answer message, the settle closure the ledger calls (pricing,
  answer, the stored row and its encoded answer: the stored row is what it costs beyond the two
  before), the request hash, the response as gRPC encodes it (the server's own serializer);
- `settle_visit` with a ledger that only calls the closure (the whole pure path, no SQL);
- `settle_visit` on a real SQLite ledger (group commit, COMMIT with fsync in its helper thread)
  on uvloop with `--in-flight` calls at a time: the process's CPU and the loop thread's.

Each figure is the median over `--rounds`. To compare two versions of the code in one sitting,
run it alternately with each on the import path (see docs/performance.md). It prints figures; it
asserts nothing.

    python scripts/settle_path.py --world /tmp/world-1k
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from settlesim.clients.workload import Workload
from settlesim.server import service, validation
from settlesim.server.app import new_event_loop
from settlesim.server.calls import Caller
from settlesim.server.ledger import open_ledger
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.eligibility import check_registration
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb

CALLER = Caller("", "")


def requests(world_dir: str | None, count: int, seed: int) -> list[pb.SettleVisitRequest]:
    workload = Workload.load(world_dir)
    rng = random.Random(seed)
    return [
        pb.SettleVisitRequest(request=workload.settlement_request(rng, f"SP{seed}-{i:08d}", operator="bench"))
        for i in range(count)
    ]


def per_call_us(items: list[Any], work: Callable[[Any], Any]) -> float:
    started = time.process_time()
    for item in items:
        work(item)
    return (time.process_time() - started) / len(items) * 1e6


class ClosureOnly:
    """A ledger that calls the settle closure and stores nothing: the pure path alone."""

    def __init__(self) -> None:
        self.closures: list[Callable[[YearlyTotals], Any]] = []

    async def settle_async(self, session, msgid, institution, request_hash, person, disease, year, compute, on_settled=None):  # noqa: E501
        self.closures.append(compute)
        stored, _ = compute(YearlyTotals())
        return stored, False


def pure_stages(world, batch: list[pb.SettleVisitRequest]) -> dict[str, float]:
    core = service.SettlementCore(world, ClosureOnly())  # type: ignore[arg-type]
    inner = [r.request for r in batch]
    figures: dict[str, float] = {}
    figures["validation"] = per_call_us(inner, lambda r: validation.settlement_input(r, world))
    visits = [validation.settlement_input(r, world).visit for r in inner]
    figures["registration"] = per_call_us(visits, lambda v: check_registration(world, v))
    figures["plan"] = per_call_us(inner, lambda r: core._plan(CALLER, r))
    plans = [core._plan(CALLER, r) for r in inner]
    totals = YearlyTotals()
    figures["compute"] = per_call_us(plans, lambda p: p.compute(totals))
    results = [(p, p.compute(totals)) for p in plans]
    figures["answer"] = per_call_us(results, lambda pr: pr[0].answer(pr[1], "S" * 20, "V" * 20, ""))
    ledger = ClosureOnly()
    core = service.SettlementCore(world, ledger)  # type: ignore[arg-type]

    async def settle_all() -> list[pb.SettleVisitResponse]:
        return [await core.settle_visit(CALLER, r) for r in batch]

    loop = asyncio.new_event_loop()
    try:
        started = time.process_time()
        answers = loop.run_until_complete(settle_all())
        figures["settle_visit"] = (time.process_time() - started) / len(batch) * 1e6
    finally:
        loop.close()
    figures["closure"] = per_call_us(ledger.closures, lambda c: c(totals))
    figures["stored row"] = figures["closure"] - figures["compute"] - figures["answer"]
    figures["request hash"] = per_call_us(inner, service.request_hash)
    serialize = pb.SettleVisitResponse.SerializeToString  # what service.add_to_server registers
    figures["encode response"] = per_call_us(answers, serialize)
    return figures


async def _settle_on_sqlite(world, batch: list[pb.SettleVisitRequest], db: Path, in_flight: int) -> tuple[float, float]:
    ledger = open_ledger(db)
    try:
        core = service.SettlementCore(world, ledger)
        pending = iter(batch)
        for r in batch[:in_flight]:  # warm: the tables' first pages, the loop's group commit
            await core.settle_visit(CALLER, _renamed(r, "warm"))

        async def worker() -> None:
            for r in pending:
                await core.settle_visit(CALLER, r)

        process, thread = time.process_time(), time.thread_time()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return (
            (time.process_time() - process) / len(batch) * 1e6,
            (time.thread_time() - thread) / len(batch) * 1e6,
        )
    finally:
        ledger.close()


def _renamed(request: pb.SettleVisitRequest, tag: str) -> pb.SettleVisitRequest:
    copy = pb.SettleVisitRequest()
    copy.CopyFrom(request)
    copy.request.msgid = f"{tag}-{request.request.msgid}"
    return copy


def on_sqlite(world, batch: list[pb.SettleVisitRequest], db_dir: str | None, in_flight: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=db_dir) as tmp:
        loop = new_event_loop()
        result: list[tuple[float, float]] = []
        # the loop runs in a thread of its own, as in the server, so thread_time is the loop's
        work = _settle_on_sqlite(world, batch, Path(tmp) / "l.db", in_flight)
        thread = threading.Thread(target=lambda: result.append(loop.run_until_complete(work)))
        thread.start()
        thread.join()
        loop.close()
    process, loop_thread = result[0]
    return {"sqlite settle_visit: process": process, "sqlite settle_visit: loop thread": loop_thread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default=None, help="a generated world (default: the bundled world)")
    parser.add_argument("--count", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--db-dir", default=None, help="where the SQLite ledger goes (default: the temp dir)")
    parser.add_argument("--label", default="", help="printed before the figures")
    args = parser.parse_args()
    world = load_world(args.world)
    runs: list[dict[str, float]] = []
    for n in range(args.rounds):
        batch = requests(args.world, args.count, seed=n + 1)
        figures = pure_stages(world, batch)
        figures |= on_sqlite(world, [_renamed(r, f"db{n}") for r in batch], args.db_dir, args.in_flight)
        runs.append(figures)
    print(f"{args.label} CPU us per settle, medians of {args.rounds} rounds of {args.count} ({service.__file__})")
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"  {name:<34} {statistics.median(values):8.1f}   ({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
