"""Instructions per call of each stage of the pure settle path, counted by valgrind's callgrind
(deterministic: other jobs on the machine do not move it), for code versions compared A/B.

Each stage runs over `--count` generated SettleVisit requests inside `itertools.starmap` (the only
C function callgrind collects in: `--toggle-collect=starmap_next`), and `itertools.pairwise()`
after each stage makes callgrind dump what the stage cost (`--dump-before=pairwise_new`). The
stages: validation, the registration check, the plan (both, the catalog), pricing with its trace,
the answer made into its response, the settle closure the ledger runs (pricing, the answer, the
stored row), the request hash, a response encoded (by the library: one its settle did not encode),
and `SettlementCore.settle_visit` with a ledger that only runs the closure, alone and with its
response encoded as sent (the pure path a settle costs the loop). The garbage collector is set as
`serve` sets it (app.tune_gc).

    python scripts/settle_instructions.py --world /tmp/world-1k            # runs itself under valgrind
    PYTHONPATH=/tmp/main12-site python scripts/settle_instructions.py --world /tmp/world-1k

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

STAGES = (
    "validation", "registration check", "plan", "pricing", "answer", "settle closure",
    "request hash", "encode response", "settle_visit", "settle_visit + encode",
)  # fmt: skip


def measure(world_dir: str | None, count: int) -> None:
    """Run in callgrind: every stage over the same requests, a dump after each."""
    from settlesim.server import service, validation
    from settlesim.server.app import tune_gc
    from settlesim.server.calls import Caller
    from settlesim.server.model import YearlyTotals
    from settlesim.server.rules.eligibility import check_registration
    from settlesim.server.world_loader import load_world

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from settle_path import ClosureOnly, requests

    world = load_world(world_dir)
    caller = Caller("", "")
    servicer = service.SettlementService(world, ClosureOnly())  # type: ignore[arg-type]
    encode = service.method_handlers(servicer)["SettleVisit"].response_serializer  # as the server sends
    warm, batch, fresh = (requests(world_dir, count, seed) for seed in (1, 2, 3))

    def settled(core: service.SettlementCore, request):  # type: ignore[no-untyped-def]
        coroutine = core.settle_visit(caller, request)  # nothing in it waits: one send runs it
        try:
            coroutine.send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("settle_visit waited")

    core = servicer.core
    for request in warm:  # the world's per-value memos, as a running server has them
        encode(settled(core, request))
    tune_gc()
    inner = [(r.request,) for r in batch]
    given = [validation.settlement_input(r, world) for (r,) in inner]
    plans = [core._plan(caller, r) for (r,) in inner]
    totals = YearlyTotals()
    results = [(p, p.compute(totals)) for p in plans]
    ledger = ClosureOnly()
    closing = service.SettlementCore(world, ledger)  # type: ignore[arg-type]
    responses = [settled(closing, r) for r in batch]

    def answer(plan, result):  # type: ignore[no-untyped-def]
        response = service.pb.SettleVisitResponse()
        plan.fill_answer(response.settlement, result, "S" * 20, "V" * 20, "")
        return response

    stages = (
        (lambda r: validation.settlement_input(r, world), inner),
        (lambda v: check_registration(world, v), [(g.visit,) for g in given]),
        (lambda r: core._plan(caller, r), inner),
        (lambda p: p.compute(totals), [(p,) for p in plans]),
        (answer, results),
        (lambda c: c(totals), [(c,) for c in ledger.closures]),
        (service.request_hash, inner),
        (encode, [(r,) for r in responses]),
        (lambda r: settled(core, r), [(r,) for r in fresh]),
        (lambda r: encode(settled(core, r)), [(r,) for r in requests(world_dir, count, 4)]),
    )
    itertools.pairwise(())  # dump what came before: the counts start here
    for work, arguments in stages:
        deque(itertools.starmap(work, arguments), 0)
        itertools.pairwise(())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default=None, help="a generated world (default: the bundled world)")
    parser.add_argument("--count", type=int, default=400, help="requests per stage")
    parser.add_argument("--label", default="", help="printed before the figures")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        measure(args.world, args.count)
        return
    with tempfile.TemporaryDirectory(prefix="cg-") as tmp:
        out = Path(tmp) / "cg.out"
        command = [
            "valgrind", "--tool=callgrind", "--toggle-collect=starmap_next", "--dump-before=pairwise_new",
            f"--callgrind-out-file={out}", sys.executable, __file__, "--inside", "--count", str(args.count),
        ] + (["--world", args.world] if args.world else [])  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, env=os.environ)
        dumps = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        counts = [int(re.search(r"^totals: (\d+)", d.read_text(), re.M).group(1)) for d in dumps]  # type: ignore[union-attr]
    from settlesim.server import service

    print(f"{args.label} instructions a call, {args.count} calls a stage ({service.__file__})")
    for name, total in zip(STAGES, counts[1:], strict=True):  # the first dump: start-up
        print(f"  {name:<24} {total / args.count / 1000:8.1f}k")


if __name__ == "__main__":
    main()
