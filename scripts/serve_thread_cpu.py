"""CPU of each thread of `settlesim serve` per settle under the bench's closed loop (32 calls
in flight over 4 connections), from /proc, for one or more checkouts, interleaved round by round:

    python scripts/serve_thread_cpu.py --checkout /tmp/main-copy --checkout . --rounds 3

Each round starts a fresh server of each checkout (its code run by this venv's interpreter,
imported from that checkout) on a new ledger, warms it up, then runs the closed loop for
`--seconds` and prints, per thread (named by `py-spy dump` when py-spy is installed), the CPU
microseconds per settle, and the writes per group commit (the server's /metrics); with
`--open RATE` then the latency of an open loop at that rate; the medians at the end. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from settlesim.clients.bench import Requests, _closed_loop, _open_loop
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world

TICKS = os.sysconf("SC_CLK_TCK")
# Runs settlesim from the checkout named by SETTLESIM_CHECKOUT: this venv's editable finder,
# pointed there.
LAUNCH = """
import os, runpy, sys
import __editable___settlesim_0_1_0_finder as finder
root = os.environ["SETTLESIM_CHECKOUT"]
finder.MAPPING.update({"settlesim": root + "/settlesim", "settlesim.clients": root + "/clients",
                       "settlesim.server": root + "/server", "settlesim.v1": root + "/protos/settlesim/v1"})
sys.argv = ["settlesim", *sys.argv[1:]]
runpy.run_module("settlesim", run_name="__main__")
"""


def thread_ticks(pid: int) -> dict[int, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name (py-spy dump), else the kernel's comm."""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            names[int(tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if Path(spy).exists():
        dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
        for tid, name in re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', dump, re.M):
            names[int(tid)] = re.sub(r"_\d+$", "", name)
    return names


def one_round(
    checkout: Path, world: Path, db: Path, requests: Requests, seconds: float, port: int, rate: float
) -> dict[str, float]:
    env = {**os.environ, "SETTLESIM_CHECKOUT": str(checkout.resolve())}
    command = [sys.executable, "-c", LAUNCH, "serve", "--port", str(port), "--world", str(world), "--db", str(db),
               "--log-level", "warning", "--console-port", str(port + 1)]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(_wait_serving(target, server))
        asyncio.run(_closed_loop(target, requests, 32, 2.0, 4))  # warm-up: caches, the helper thread
        names = thread_names(server.pid)
        before, batches = thread_ticks(server.pid), commit_batches(port + 1)
        n, errors, _latencies, elapsed, _failed = asyncio.run(_closed_loop(target, requests, 32, seconds, 4))
        after, batches_after = thread_ticks(server.pid), commit_batches(port + 1)
        if rate:  # the open loop: latency from each request's planned time
            opened = asyncio.run(_open_loop(target, requests, rate, seconds, 4))
    finally:
        server.terminate()
        server.wait(30)
    writes, commits = (b - a for a, b in zip(batches, batches_after, strict=True))
    row: dict[str, float] = {
        "settles/s": n / elapsed,
        "errors": errors,
        "per batch": writes / max(commits, 1),
    }
    for tid, ticks in after.items():
        name = names.get(tid, "new thread")
        row[f"{name} us"] = row.get(f"{name} us", 0.0) + (ticks - before.get(tid, 0)) / TICKS / n * 1e6
    row["server us"] = sum(v for k, v in row.items() if k.endswith(" us"))
    if rate:
        latencies = sorted(opened[2])
        row["open p50 ms"] = latencies[len(latencies) // 2]
        row["open p99 ms"] = latencies[int(len(latencies) * 0.99)]
    return row


def commit_batches(console_port: int) -> tuple[float, float]:
    """(writes, group commits) so far, from the server's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{console_port}/metrics", timeout=5).read().decode()
    found = dict(re.findall(r"^settlesim_ledger_commit_batch_size_(sum|count) (\S+)$", text, re.M))
    return float(found.get("sum", 0)), float(found.get("count", 0))


async def _wait_serving(target: str, server: subprocess.Popen[str]) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, action="append", required=True)
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=50981)
    parser.add_argument("--open", type=float, default=0.0, help="then an open loop at this rate: p50, p99")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="serve-threads-"))
    try:
        generate_world(scratch / "world", args.persons, 1)
        requests = Requests(Workload.load(scratch / "world"), 1)
        figures: dict[Path, dict[str, list[float]]] = {c: {} for c in args.checkout}
        for r in range(args.rounds):
            for i, checkout in enumerate(args.checkout):
                db = scratch / f"ledger-{r}-{i}.db"
                row = one_round(checkout, scratch / "world", db, requests, args.seconds, args.port, args.open)
                figures_line = ", ".join(f"{k} {v:.1f}" for k, v in sorted(row.items()))
                print(f"round {r + 1} {checkout}: {figures_line}", flush=True)
                for k, v in row.items():
                    figures[checkout].setdefault(k, []).append(v)
        for checkout, columns in figures.items():
            medians = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in sorted(columns.items()))
            print(f"medians {checkout}: {medians}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
