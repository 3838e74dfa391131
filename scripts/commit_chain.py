#!/usr/bin/env python3
"""Where a group-commit cycle's time goes: `settlesim serve` under the bench's closed loop,
with the SQLite group commit's phases timed in the server (perf_counter), printed per batch:

    job      the batch's writes run on the loop, in its transaction (pricing, SQL, the row)
    hand-off from the jobs' end until the helper thread starts the COMMIT
    COMMIT   the COMMIT call (the WAL's frames, the fsync, the locks), and its CPU
    back     from the COMMIT's end until the loop answers the batch
    next     from the answers until the next batch starts (what is left of its gathering)

A cycle is job + hand-off + COMMIT + back + next; one batch a cycle, so writes/s through the
ledger are at most writes-per-batch / cycle. It prints figures; it asserts nothing.

    python scripts/commit_chain.py                  # 1,000 people, 32 in flight, 8 s
    python scripts/commit_chain.py -- --no-journal  # serve arguments after --
    python scripts/commit_chain.py --rate 2000      # the bench's open loop at 2,000 settles/s

"at most ... writes/s" holds for that batch size; under an open loop batches grow as the cycle
does, so it is how near the ledger runs to its cycle, not a ceiling.
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
from pathlib import Path

from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world

# Run inside the server process (python -c): wraps four methods to time the phases. A batch's
# jobs are timed from `_run` (after its locks are taken: a wait for them is in "next") to the
# end of `_jobs`; the helper thread also takes locks for some batches, so its submissions are
# not a batch's marks.
_TIMED_SERVE = """
import json, sys, time
from settlesim.server.ledger.sqlite import group_commit as gc
out, starts, submits, commits, answers = sys.argv.pop(1), [], [], [], []
C = gc.LoopGroupCommit
run, jobs, commit, committed = C._run, C._jobs, C._commit, C._committed
def timed_run(self, batch):
    starts.append(time.perf_counter())
    return run(self, batch)
def timed_jobs(self, db, batch):
    try:
        return jobs(self, db, batch)
    finally:
        submits.append(time.perf_counter())
def timed_commit(self, db):
    began, cpu = time.perf_counter(), time.thread_time()
    try:
        return commit(self, db)
    finally:
        commits.append((began, time.perf_counter(), time.thread_time() - cpu))
def timed_committed(self, batch, outcomes, error):
    answers.append((time.perf_counter(), len(batch)))
    if len(answers) % 100 == 0:
        json.dump([starts, submits, commits, answers], open(out, "w"))
    return committed(self, batch, outcomes, error)
C._run, C._jobs, C._commit, C._committed = timed_run, timed_jobs, timed_commit, timed_committed
from settlesim.cli import main
sys.argv[0] = "settlesim"
sys.exit(main())
"""

PHASES = ("job", "hand-off", "COMMIT", "back", "next")


def phases(trace: list[list], since: float = 0.0) -> tuple[dict[str, list[float]], list[float], list[int]]:
    """ms of each phase per cycle, the COMMIT's CPU, and the writes of each batch, for the
    batches that started from `since` on (perf_counter: one clock for the machine's processes)."""
    starts, submits, commits, answers = trace
    table: dict[str, list[float]] = {name: [] for name in PHASES}
    cpu, writes = [], []
    for i in range(min(len(starts) - 1, len(submits), len(commits), len(answers))):
        (began, ended, commit_cpu), (answered, count) = commits[i], answers[i]
        if starts[i] < since:  # the warm-up's batches
            continue
        for name, ms in zip(PHASES, (submits[i] - starts[i], began - submits[i], ended - began,
                                     answered - ended, starts[i + 1] - answered), strict=True):  # fmt: skip
            table[name].append(ms * 1e3)
        cpu.append(commit_cpu * 1e3)
        writes.append(count)
    return table, cpu, writes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="calls/s of an open loop instead")
    parser.add_argument("serve_args", nargs="*", help="after --: arguments for settlesim serve")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        world, db, out = Path(folder) / "world", Path(folder) / "ledger.db", Path(folder) / "trace.json"
        generate_world(world, args.persons, 1)
        requests = bench.Requests(Workload.load(world), 1)
        command = [
            sys.executable, "-c", _TIMED_SERVE, str(out), "serve", "--port", "0", "--world", str(world),
            "--db", str(db), "--log-level", "warning", *args.serve_args,
        ]  # fmt: skip
        with bench.running(command) as server:
            asyncio.run(bench._closed_loop(server.target, requests, args.concurrency, 2.0, 4))
            measured_from = time.perf_counter()
            figures = (
                bench.measure_open(f"settle at {args.rate:g}/s", server, requests, args.rate, args.seconds, 4)
                if args.rate
                else bench.measure_closed("settle", server, requests, args.concurrency, args.seconds, 0, 4)
            )
        print(bench.HEADER)
        print(figures.row())
        table, cpu, writes = phases(json.loads(out.read_text()), measured_from)
    cycles = [sum(column) for column in zip(*table.values(), strict=True)]
    total = sum(cycles)
    print(f"{len(cycles)} batches, {statistics.mean(writes):.1f} writes each")
    for name, values in table.items():
        print(f"{name:<9} mean {statistics.mean(values):6.2f} ms  median {statistics.median(values):6.2f}"
              f"  {sum(values) / total:4.0%} of the cycle")  # fmt: skip
    print(f"COMMIT's own CPU: mean {statistics.mean(cpu):.2f} ms")
    print(
        f"cycle     mean {statistics.mean(cycles):6.2f} ms: "
        f"at most {sum(writes) / total * 1e3:,.0f} writes/s through the ledger"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
