#!/usr/bin/env python3
"""CPU per settle of each thread of `settlesim serve` under the bench's closed loop,
for one or more code versions measured interleaved (A, B, A, B, ...).

    python scripts/thread_cpu.py --rounds 3 main=/tmp/main-site this=
    python scripts/thread_cpu.py this= this-nojournal=::--no-journal
    python scripts/thread_cpu.py --rate 800 main=/tmp/main-site this=

Each VARIANT is LABEL=PYTHONPATH[::SERVE ARGS]: an empty PYTHONPATH runs this
checkout, a folder runs the settlesim package installed there (e.g. `pip install
--no-deps --no-build-isolation --target /tmp/main-site <a checkout of main>`).
The load is `settlesim bench`'s closed loop (clients/bench.py: 32 calls in flight
over 4 connections) on a generated world; threads are named by `py-spy dump`
(install py-spy in the venv) and their CPU read from /proc/PID/task/TID/schedstat.
It prints figures (µs of CPU per answered settle, medians over rounds); it asserts nothing.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid`: the scheduler's own count of the time it ran
    (/proc/PID/task/TID/schedstat, ns), exact where utime/stime are sampled at each tick."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except OSError:  # the thread ended meanwhile
            continue
    return seconds


def thread_names(pid: int) -> dict[int, str]:
    """Python's names of the threads (py-spy dump); C threads gRPC made are "native"."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    names = {int(tid): name for tid, name in re.findall(r"^Thread (\d+) \(\w+\): \"(.*)\"", out, re.M)}
    # The ledger's COMMIT helper is a ThreadPoolExecutor thread; gRPC's poller a _poll_wrapper.
    return {tid: re.sub(r"_\d+$", "", name) for tid, name in names.items()}


def variants_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every A/B script here takes: the variants, the world's size, rounds, seconds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="LABEL=PYTHONPATH[::SERVE ARGS]")
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def parse_variant(spec: str) -> tuple[str, str, list[str]]:
    """LABEL=PYTHONPATH[::SERVE ARGS] -> (label, pythonpath, serve args)."""
    label, _, rest = spec.partition("=")
    pythonpath, _, serve_args = rest.partition("::")
    return label, pythonpath, serve_args.split()


def scratch_world(folder: Path, persons: int) -> tuple[Path, bench.Requests]:
    """A world of `persons` in `folder` and the bench's requests on it, with `folder` the working
    directory: `python -m settlesim` looks there first, and in a checkout that is the checkout's
    own settlesim/, whatever PYTHONPATH says. The servers start in the scratch folder."""
    os.chdir(folder)
    world = folder / "world"
    generate_world(world, persons, 1)
    return world, bench.Requests(Workload.load(world), 1)


@contextmanager
def running_with(command: list[str], pythonpath: str) -> Iterator[bench.Server]:
    """bench.running(command) with PYTHONPATH set to `pythonpath` for the server only (the
    load generator in this process keeps the code it imported)."""
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
        yield server
    finally:
        server_cm.__exit__(None, None, None)


def run_load(command: list[str], pythonpath: str, requests, seconds: float, rate: float):  # type: ignore[no-untyped-def]
    """Start `command` (a server) with `pythonpath`, warm it up 2 s, load it `seconds` (closed
    loop, or open at `rate`/s): (answered, errors, elapsed, CPU before, CPU after, thread names)."""
    with running_with(command, pythonpath) as server:
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
        names = {**thread_names(pid), **names}  # a dump may miss a thread that is inside C code
    return answered, errors, elapsed, before, after, names


def measure(label: str, pythonpath: str, serve_args: list[str], world: Path, db: Path, requests, seconds, rate):  # type: ignore[no-untyped-def]
    command = [
        sys.executable, "-m", "settlesim", "serve", "--port", "0", "--world", str(world), "--db", str(db),
        "--log-level", "warning", *serve_args,
    ]  # fmt: skip
    answered, errors, elapsed, before, after, names = run_load(command, pythonpath, requests, seconds, rate)
    per_thread: dict[str, float] = defaultdict(float)
    for tid, cpu in after.items():
        per_thread[names.get(tid, "native")] += cpu - before.get(tid, 0.0)
    us = {name: cpu / max(answered, 1) * 1e6 for name, cpu in per_thread.items()}
    us["total"] = sum(per_thread.values()) / max(answered, 1) * 1e6
    print(
        f"{label:>14}: {answered / elapsed:7.0f} settles/s, errors {errors}, "
        + ", ".join(f"{name} {v:.0f}" for name, v in sorted(us.items(), key=lambda kv: -kv[1]) if v >= 1),
        flush=True,
    )
    return us


def main() -> int:
    parser = variants_parser(__doc__)
    parser.add_argument(
        "--rate", type=float, default=0.0,
        help="settles/s of the bench's open loop instead of the closed loop: the same batch sizes "
        "for every variant however busy the machine is",
    )  # fmt: skip
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="thread-cpu-"))
    world, requests = scratch_world(scratch, args.persons)
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    try:
        for n in range(args.rounds):
            for variant in args.variants:
                label, pythonpath, serve_args = parse_variant(variant)
                db = scratch / f"{label}-{n}.db"
                results[label].append(
                    measure(label, pythonpath, serve_args, world, db, requests, args.seconds, args.rate)
                )
        print(f"medians of {args.rounds} rounds, µs of CPU per settle:")
        for label, rounds in results.items():
            names = sorted(
                {name for r in rounds for name in r},
                key=lambda k: -statistics.median(r.get(k, 0) for r in rounds),
            )
            cells = [f"{name} {statistics.median(r.get(name, 0.0) for r in rounds):.0f}" for name in names]
            print(f"{label:>14}: " + ", ".join(c for c in cells if not c.endswith(" 0")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
