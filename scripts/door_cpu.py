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
for every variant however busy the machine is). KIND `settle` is plain `serve` (real settles).

With `--callgrind N` each server runs under valgrind's callgrind (instrumented only from the
warm-up's end) and N calls are counted in instructions, a figure other jobs on the machine do not
move (`apt-get install valgrind`): the busiest thread's (the loop's) and all threads' per call.

    python scripts/door_cpu.py --rounds 1 --callgrind 1000 noop=noop:/tmp/main-site this=canned:

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import grpc
from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world

sys.path.insert(0, str(Path(__file__).resolve().parent))
from thread_cpu import run_load


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
    answered, errors, elapsed, before, after, names = run_load(command, pythonpath, requests, seconds, rate)
    # the reference server's loop thread is settlesim-loop; the noop's is its main thread
    loop_threads = [tid for tid in after if "loop" in names.get(tid, "") or names.get(tid) == "MainThread"]
    loop = sum(after[tid] - before.get(tid, 0.0) for tid in loop_threads)
    us = loop / max(answered, 1) * 1e6
    print(f"{answered / elapsed:7.0f} calls/s, errors {errors}, loop {us:.1f} us a call", flush=True)
    return us


async def _calls(target: str, requests: bench.Requests, count: int, in_flight: int = 16) -> None:
    """`count` settles, `in_flight` at a time over 4 connections."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [channel.unary_unary(bench.SETTLE) for channel in channels]
    left = count

    async def worker(i: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await stubs[i % len(stubs)](requests.next(), timeout=300)

    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    for channel in channels:
        await channel.close()


def count_instructions(command: list[str], pythonpath: str, requests: bench.Requests, calls: int) -> float:
    """Instructions per call of the busiest thread (the loop), under callgrind; prints all threads'."""
    out = Path.cwd() / f"callgrind-{os.getpid()}-{len(list(Path.cwd().glob('callgrind-*')))}"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                f"--callgrind-out-file={out}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": pythonpath}
    process = subprocess.Popen(
        [*valgrind, *command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if found := re.search(r"serving on ([\d.]+:\d+)", line):
                target = found.group(1)
                break
        else:
            raise RuntimeError(f"the server exited with {process.wait()}")
        asyncio.run(_calls(target, requests, 300))  # warm-up, not counted
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], capture_output=True, check=True)
        asyncio.run(_calls(target, requests, calls))
        subprocess.run(["callgrind_control", "-d", str(process.pid)], capture_output=True, check=True)
    finally:
        process.terminate()
        process.wait(120)
    per_thread = []
    for dump in out.parent.glob(f"{out.name}.1-*"):  # the dump after the counted calls, a file a thread
        if total := re.search(r"^(?:summary|totals):\s+(\d+)", dump.read_text(errors="replace"), re.M):
            per_thread.append(int(total.group(1)) / calls)
    loop = max(per_thread, default=0.0)
    every = sum(per_thread) / 1e3
    print(f"{loop / 1e3:7.1f} k instructions a call on the loop, {every:.1f} k in all threads", flush=True)
    return loop / 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="LABEL=KIND:PYTHONPATH[::SERVE ARGS]")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.0, help="calls/s of the open loop instead of the closed loop")
    parser.add_argument("--callgrind", type=int, default=0, metavar="N", help="count N calls' instructions instead")
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
                serve = [
                    "serve", "--port", "0", "--world", str(world), "--db", str(scratch / f"{label}-{n}.db"),
                    "--log-level", "warning", "--no-console", *serve_args.split(),
                ]  # fmt: skip
                command = {
                    "noop": [sys.executable, "-m", "settlesim.server.noop", "--port", "0", "--design", "aio"],
                    "canned": [sys.executable, __file__, "--serve-canned", *serve],
                    "settle": [sys.executable, "-m", "settlesim", *serve],
                }[kind]
                print(f"{label:>14}: ", end="", flush=True)
                if args.callgrind:
                    results[label].append(count_instructions(command, pythonpath, requests, args.callgrind))
                else:
                    results[label].append(measure(command, pythonpath, requests, args.seconds, args.rate))
        unit = "k instructions" if args.callgrind else "us of CPU"
        print(f"medians of {args.rounds} rounds, {unit} of the loop a call:")
        for label, rounds in results.items():
            print(f"{label:>14}: {statistics.median(rounds):6.1f}   (rounds {', '.join(f'{r:.0f}' for r in rounds)})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-canned"]:
        raise SystemExit(serve_canned(sys.argv[2:]))
    raise SystemExit(main())
