#!/usr/bin/env python3
"""p99 at a fraction of each run's own peak, for one or more code versions measured interleaved
(A, B, A, B, ...): the bench's "settle at 80 %" without the noop servers, so more rounds fit in a
sitting (the open loop's p99 spreads widely from run to run).

    python scripts/p99_at_load.py --rounds 5 main=/tmp/main-site this=
    python scripts/p99_at_load.py --fraction 0.7 this= this-nojournal=::--no-journal

Each VARIANT is LABEL=PYTHONPATH[::SERVE ARGS], as in scripts/thread_cpu.py: an empty PYTHONPATH
runs this checkout, a folder the settlesim package installed there. Each run is a fresh
`settlesim serve` on a fresh ledger: 2 s of warm-up, `--seconds` of the bench's closed loop (32
calls in flight over 4 connections: the peak), then `--seconds` of its open loop at `--fraction`
of that peak. Refused calls are counted, not timed, as in the bench. It prints figures (p99 ms,
medians over rounds); it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from settlesim.clients import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from thread_cpu import parse_variant, running_with, scratch_world, variants_parser


def one_run(
    world: Path, requests: bench.Requests, pythonpath: str, serve_args: list[str], args: argparse.Namespace
) -> tuple[float, float]:
    """(peak settles/s, p99 ms at the fraction) of a fresh server running `pythonpath`'s code."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable, "-m", "settlesim", "serve", "--port", "0", "--world", str(world),
            "--db", str(Path(folder) / "ledger.db"), "--log-level", "warning", *serve_args,
        ]  # fmt: skip
        with running_with(command, pythonpath) as server:
            peak = bench.measure_closed("peak", server, requests, 32, args.seconds, 2.0, 4)
            rate = peak.rps * args.fraction
            at_load = bench.measure_open("at load", server, requests, rate, args.seconds, 4)
    refused = f", {at_load.errors} refused" if at_load.errors else ""
    print(f"  peak {peak.rps:6,.0f}/s, at {rate:6,.0f}/s p50 {at_load.percentile(50):5.1f} "
          f"p99 {at_load.percentile(99):6.1f} ms{refused}", end="")  # fmt: skip
    return peak.rps, at_load.percentile(99)


def main() -> int:
    parser = variants_parser(__doc__)
    parser.add_argument("--fraction", type=float, default=0.8)
    args = parser.parse_args()
    variants = [parse_variant(spec) for spec in args.variants]
    with tempfile.TemporaryDirectory() as folder:
        world, requests = scratch_world(Path(folder), args.persons)
        figures: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
        for n in range(args.rounds):
            for label, pythonpath, serve_args in variants:
                print(f"round {n + 1} {label:>12}:", end="", flush=True)
                figures[label].append(one_run(world, requests, pythonpath, serve_args, args))
                print(flush=True)
    print(f"medians of {args.rounds} rounds, p99 at {args.fraction:.0%} of each run's peak:")
    for label, runs in figures.items():
        p99s = [p99 for _, p99 in runs]
        print(f"  {label:>12}: p99 {statistics.median(p99s):6.1f} ms (rounds {', '.join(f'{v:.1f}' for v in p99s)}); "
              f"peak {statistics.median(peak for peak, _ in runs):,.0f}/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
