#!/usr/bin/env python3
"""What a long load does to one `settlesim serve`: the bench's closed loop (32 calls in flight
over 4 connections) run back to back against the same server and ledger, one line a run, with
the server's CPU a settle, its resident memory and the size of the ledger, its WAL and the call
journal. A figure that climbs run after run (the WAL of docs/performance.md's session 17) is
what to look at.

    python scripts/soak.py                        # 1,000 people, 6 runs of 10 s
    python scripts/soak.py --persons 100000 --runs 30
    python scripts/soak.py --runs 6 main=/tmp/main-site   # another installed version

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from settlesim.clients import bench
from settlesim.server.journal import journal_path
from thread_cpu import parse_variant, running_with, scratch_world, thread_cpu


def megabytes(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def resident_megabytes(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", nargs="?", default="this=", help="LABEL=PYTHONPATH[::SERVE ARGS] (thread_cpu.py)")
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    label, pythonpath, serve_args = parse_variant(args.variant)
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        world, requests = scratch_world(scratch, args.persons)
        db = scratch / "ledger.db"
        command = [
            sys.executable, "-m", "settlesim", "serve", "--port", "0", "--world", str(world), "--db", str(db),
            "--log-level", "warning", *serve_args,
        ]  # fmt: skip
        with running_with(command, pythonpath) as server:
            pid = server.process.pid
            asyncio.run(bench._closed_loop(server.target, requests, 32, 2.0, 4))  # warm-up, as the bench's
            for run in range(1, args.runs + 1):
                before = sum(thread_cpu(pid).values())
                load = bench._closed_loop(server.target, requests, 32, args.seconds, 4)
                answered, errors, _, elapsed, _ = asyncio.run(load)
                cpu = sum(thread_cpu(pid).values()) - before
                print(
                    f"{label} run {run}: {answered / elapsed:6.0f} settles/s, {cpu / max(answered, 1) * 1e6:4.0f} us "
                    f"a settle, errors {errors}, RSS {resident_megabytes(pid):4.0f} MB, ledger "
                    f"{megabytes(db):5.0f} MB, WAL {megabytes(Path(f'{db}-wal')):5.0f} MB, journal "
                    f"{megabytes(journal_path(db)):5.0f} MB",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
