#!/usr/bin/env python3
"""What the door costs a call: the event loop's CPU per call of `settlesim serve` whose SettleVisit
answers a canned settlement at once (the door, the servicer, the journal and the gRPC server
around it; no validation, rules or ledger), beside the aio noop server, code versions
interleaved (A, B, A, B, ...), medians over rounds.

    python scripts/door_cpu.py --rounds 5 noop=noop:/tmp/main-site main=canned:/tmp/main-site this=canned:
    python scripts/door_cpu.py this=canned: this-nojournal=canned:::--no-journal noop=noop:
    python scripts/door_cpu.py --rate 1000 main=canned:/tmp/main-site this=canned:

Each VARIANT is LABEL=KIND:PYTHONPATH[::SERVE ARGS]: KIND `canned` (serve, canned core) or `noop`
(server/noop.py --design aio); an empty PYTHONPATH runs this checkout, a folder the settlesim
package installed there (as scripts/thread_cpu.py). The load is `settlesim bench`'s closed loop
(32 calls in flight over 4 connections), or its open loop at `--rate` calls/s (the same batching
for every variant however busy the machine is). It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world

sys.path.insert(0, str(Path(__file__).resolve().parent))
from thread_cpu import thread_cpu, thread_names


def serve_canned(argv: list[str]) -> int:
    """`settlesim serve` whose SettleVisit answers at once what the noop server answers."""
    from settlesim.server import service
    from settlesim.server.noop import _settlement
    from settlesim.v1 import settlement_service_pb2 as pb

    from settlesim.cli import main

    async def settle_visit(self, caller, request, on_settled=None):  # type: ignore[no-untyped-def]
        return pb.SettleVisitResponse(settlement=_settlement(request.request, "S" + request.request.msgid[-19:]))

    service.SettlementCore.settle_visit = settle_visit  # type: ignore[method-assign]
    sys.argv[0] = "settlesim"
    return main(argv)


def measure(command: list[str], pythonpath: str, requests: bench.Requests, seconds: float, rate: float) -> float:
    """The loop thread's CPU per answered call, us."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = pythonpath
    try:
        server_cm = bench.running(command)
        server = server_cm.__enter__()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        asyncio.run(bench._closed_loop(server.target, requests, 32, 2.0, 4))  # warm-up
        pid = server.process.pid
        names = thread_names(pid)
        before = thread_cpu(pid)
        load = (
            bench._open_loop(server.target, requests, rate, seconds, 4)
            if rate
            else bench._closed_loop(server.target, requests, 32, seconds, 4)
        )
        answered, errors, _, elapsed, _ = asyncio.run(load)
        after = thread_cpu(pid)
        names = {**thread_names(pid), **names}
    finally:
        server_cm.__exit__(None, None, None)
    # the reference server's loop thread is settlesim-loop; the noop's is its main thread
    loop_threads = [tid for tid in after if "loop" in names.get(tid, "") or names.get(tid) == "MainThread"]
    loop = sum(after[tid] - before.get(tid, 0.0) for tid in loop_threads)
    us = loop / max(answered, 1) * 1e6
    print(f"{answered / elapsed:7.0f} calls/s, errors {errors}, loop {us:.1f} us a call", flush=True)
    return us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="LABEL=KIND:PYTHONPATH[::SERVE ARGS]")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.0, help="calls/s of the open loop instead of the closed loop")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="door-cpu-"))
    os.chdir(scratch)  # `python -m settlesim` would find a checkout's own settlesim/ first
    world = scratch / "world"
    generate_world(world, 1000, 1)
    requests = bench.Requests(Workload.load(world), 1)
    results: dict[str, list[float]] = defaultdict(list)
    try:
        for n in range(args.rounds):
            for variant in args.variants:
                label, _, rest = variant.partition("=")
                kind, _, rest = rest.partition(":")
                pythonpath, _, serve_args = rest.partition("::")
                if kind == "noop":
                    command = [sys.executable, "-m", "settlesim.server.noop", "--port", "0", "--design", "aio"]
                else:
                    command = [
                        sys.executable, __file__, "--serve-canned", "serve", "--port", "0", "--world", str(world),
                        "--db", str(scratch / f"{label}-{n}.db"), "--log-level", "warning", "--no-console",
                        *serve_args.split(),
                    ]  # fmt: skip
                print(f"{label:>14}: ", end="", flush=True)
                results[label].append(measure(command, pythonpath, requests, args.seconds, args.rate))
        print(f"medians of {args.rounds} rounds, us of the loop's CPU per call:")
        for label, rounds in results.items():
            print(f"{label:>14}: {statistics.median(rounds):6.1f}   (rounds {', '.join(f'{r:.0f}' for r in rounds)})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-canned"]:
        raise SystemExit(serve_canned(sys.argv[2:]))
    raise SystemExit(main())
