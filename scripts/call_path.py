#!/usr/bin/env python3
"""Where a settle's latency goes, end to end: `settlesim serve` under a closed loop like the
bench's, each call timed on both sides of the connection and joined by its msgid. The clocks
are one: `time.perf_counter` is CLOCK_MONOTONIC, shared by the processes of one machine.

    inbound   the client's send until the server's door has the call (the client's gRPC,
              the socket, gRPC core, grpc.aio's accept of the call and its handler's first step)
    door      the door's whole handler: the body read, validation, the ledger, the answer
    ledger    of which in the ledger's group commit (gathering, jobs, COMMIT, hand-backs)
    outbound  the door's return until the client has the answer (gRPC's send and the client's)

By Little's law a segment's mean times the rate is the calls in it on average; the closed loop's
calls in flight are the sum. It prints figures; it asserts nothing.

    python scripts/call_path.py                       # 1,000 people, 32 in flight, 8 s
    python scripts/call_path.py --concurrency 96
    python scripts/call_path.py -- --no-journal       # serve arguments after --
    python scripts/call_path.py --rate 2400           # open loop: where the slowest 1 % waited

With `--rate` the load is an open loop like the bench's at 80 % (each call planned at
start + i/rate, latency counted from the plan): a segment `late` (the plan until the client's
send: the load generator behind its plan) comes first, and the segments are printed again for
the slowest 1 % of calls by total, to show where a p99 comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world
from settlesim.v1 import settlement_service_pb2 as pb

# Run inside the server process (python -c): wraps the door and the ledger's group commit to
# time each call, and the core's settle_visit to learn its msgid. Dumps every 1,000 calls.
_TIMED_SERVE = """
import asyncio, json, sys, time
from settlesim.server import limits, service
from settlesim.server.ledger.sqlite import group_commit
out, clock, calls, open_calls = sys.argv.pop(1), time.perf_counter, [], {}
settle_visit, run, door = service.SettlementCore.settle_visit, group_commit.LoopGroupCommit.run, limits.CallLimits.door
async def timed_settle_visit(self, caller, request):
    open_calls[asyncio.current_task()] = [request.request.msgid, 0.0, 0.0]
    return await settle_visit(self, caller, request)
async def timed_run(self, work):
    mark, began = open_calls.get(asyncio.current_task()), clock()
    try:
        return await run(self, work)
    finally:
        if mark is not None:
            mark[1], mark[2] = began, clock()
def timed_door(self, handler, **options):
    made = door(self, handler, **options)
    behavior = made.stream_unary
    async def timed(requests, context):
        began = clock()
        try:
            return await behavior(requests, context)
        finally:
            mark = open_calls.pop(asyncio.current_task(), None)
            if mark is not None:
                calls.append((mark[0], began, mark[1], mark[2], clock()))
                if len(calls) % 1000 == 0:
                    json.dump(calls, open(out, "w"))
    return made._replace(stream_unary=timed)
service.SettlementCore.settle_visit = timed_settle_visit
group_commit.LoopGroupCommit.run = timed_run
limits.CallLimits.door = timed_door
from settlesim.cli import main
sys.argv[0] = "settlesim"
sys.exit(main())
"""

SEGMENTS = ("late", "inbound", "door", "ledger", "outbound", "total")


def msgid_of(request: bytes) -> str:
    """The msgid of a bench request (a serialized SettleVisitRequest)."""
    return pb.SettleVisitRequest.FromString(request).request.msgid


Timed = tuple[str, float, float, float]  # msgid, planned, sent, answered (perf_counter seconds)


async def _closed_loop(
    target: str, requests: bench.Requests, concurrency: int, seconds: float, connections: int
) -> list[Timed]:
    """The bench's closed loop, noting each call's msgid, send and answer times."""
    opened = bench._channels(target, connections)
    calls = [channel.unary_unary(bench.SETTLE) for channel in opened]
    done: list[Timed] = []
    stop_at = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        call = calls[i % len(calls)]
        while time.perf_counter() < stop_at:
            request = requests.next()
            sent = time.perf_counter()
            await call(request, timeout=30)
            done.append((msgid_of(request), sent, sent, time.perf_counter()))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for channel in opened:
        await channel.close()
    return done


async def _open_loop(
    target: str, requests: bench.Requests, rate: float, seconds: float, connections: int
) -> list[Timed]:
    """The bench's open loop (clients/bench.py `_open_loop`: senders taking plans in order),
    noting each call's msgid, plan, send and answer times."""
    opened = bench._channels(target, connections)
    calls = [channel.unary_unary(bench.SETTLE) for channel in opened]
    done: list[Timed] = []
    total, taken, began = int(rate * seconds), 0, time.perf_counter()
    refused: Counter[str] = Counter()

    async def sender(k: int) -> None:
        nonlocal taken
        call = calls[k % len(calls)]
        while taken < total:
            planned = began + taken / rate
            taken += 1
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = requests.next()
            sent = time.perf_counter()
            try:
                await call(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                refused[error.code().name] += 1
                continue
            done.append((msgid_of(request), planned, sent, time.perf_counter()))

    senders = max(connections, min(2000, int(rate * 0.25) + 32))  # as the bench's (max_in_flight)
    await asyncio.gather(*(sender(k) for k in range(senders)))
    if refused:
        print(f"refused (not timed): {dict(refused)}")
    for channel in opened:
        await channel.close()
    return done


def segments(client: list[Timed], server: list[list]) -> dict[str, list[float]]:
    """ms of each segment for every call both sides saw, in the client's order."""
    seen = {msgid: rest for msgid, *rest in server}
    table: dict[str, list[float]] = {name: [] for name in SEGMENTS}
    for msgid, planned, sent, answered in client:
        if msgid not in seen or not seen[msgid][1]:
            continue
        door_in, ledger_in, ledger_out, door_out = seen[msgid]
        for name, seconds in zip(
            SEGMENTS,
            (
                sent - planned,
                door_in - sent,
                door_out - door_in,
                ledger_out - ledger_in,
                answered - door_out,
                answered - planned,
            ),
            strict=True,
        ):
            table[name].append(seconds * 1e3)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0, help="calls/s of an open loop instead")
    parser.add_argument("serve_args", nargs="*", help="after --: arguments for settlesim serve")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        world, db, out = Path(folder) / "world", Path(folder) / "ledger.db", Path(folder) / "calls.json"
        generate_world(world, args.persons, 1)
        requests = bench.Requests(Workload.load(world), 1)
        command = [
            sys.executable, "-c", _TIMED_SERVE, str(out), "serve", "--port", "0", "--world", str(world),
            "--db", str(db), "--log-level", "warning", *args.serve_args,
        ]  # fmt: skip
        with bench.running(command) as server:
            asyncio.run(_closed_loop(server.target, requests, args.concurrency, 2.0, args.connections))
            began = time.perf_counter()
            load = (
                _open_loop(server.target, requests, args.rate, args.seconds, args.connections)
                if args.rate
                else _closed_loop(server.target, requests, args.concurrency, args.seconds, args.connections)
            )
            client = asyncio.run(load)
            elapsed = time.perf_counter() - began
            time.sleep(0.5)  # the server's last dump
        table = segments(client, json.loads(out.read_text()))
    rate = len(client) / elapsed
    how = f"an open loop at {args.rate:,.0f}/s" if args.rate else f"{args.concurrency} calls in flight"
    print(
        f"{how} over {args.connections} connections: {rate:,.0f} settles/s; "
        f"{len(table['total']):,} of {len(client):,} calls timed on both sides"
    )
    for name in SEGMENTS:
        values = sorted(table[name])
        mean = statistics.mean(values)
        print(
            f"{name:<9} mean {mean:6.2f} ms  p50 {values[len(values) // 2]:6.2f}  "
            f"p90 {values[int(len(values) * 0.9)]:6.2f}  p99 {values[int(len(values) * 0.99)]:6.2f}  "
            f"~{mean * rate / 1e3:5.1f} calls in it"
        )
    totals = table["total"]
    slowest = sorted(range(len(totals)), key=totals.__getitem__)[-max(1, len(totals) // 100) :]
    print(f"the slowest 1 % ({len(slowest)} calls, from {totals[slowest[0]]:.1f} ms), mean of each segment:")
    print(
        "  "
        + "  ".join(f"{name} {statistics.mean(table[name][i] for i in slowest):.2f}" for name in SEGMENTS)
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
