"""Row lock vs SERIALIZABLE for the PostgreSQL ledger's settle transaction (docs/ledger.md).

Threads settle through `PostgresLedger.settle` as the server's do (the same transaction: the
person's yearly totals read, priced and updated, the institution's yearly total, the msgid),
with a pricing step that pays from the person's cap like the rules do. Scenarios:

- `one-person`: every settle is the same person's (the cap race's shape: all contend on one
  yearly-totals row);
- `spread`: each thread settles its own people at one institution (contention only on the
  institution's yearly row);
- `spread-institutions`: each thread its own people and its own institution (no shared row).

Prints settles/s, p50/p99 latency, how many transactions were run again after a conflict per
settle, and how many settles were refused (LEDGER_UNAVAILABLE) when the retries ran out.

    python scripts/pg_totals_lock.py [--dsn postgresql://...] [--threads 16] [--settles 800]

Without --dsn it starts a throw-away PostgreSQL as the tests do (tests/pg_server.py).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
import uuid
from datetime import date
from pathlib import Path

import psycopg
from settlesim.server.ledger import StoredItem, StoredSettlement
from settlesim.server.ledger.postgres.store import PostgresLedger
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Refusal

CAP = 10**11


def compute_for(settlement_id: str, msgid: str, institution: str, person: str):
    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        fund = min(9000, CAP - totals.fund_paid)
        stored = StoredSettlement(
            settlement_id, "", msgid, institution, person, "M00503", date(2021, 6, 1), 10000, fund, 10000 - fund, 0,
            answer=b"a" * 400, full_self_pay=0, over_ceiling=0, pre_self_pay=1000, in_scope=9000, ratio_bp=10000,
            items=(StoredItem("1", "A-1", "H-1", 10000, 1, 10000, "A", 0, None, 0, 0, 1000, 9000),),
        )  # fmt: skip
        return stored, YearlyTotals(totals.deductible_used, totals.fund_paid + fund)

    return compute


def run(dsn: str, lock: str, scenario: str, threads: int, settles: int) -> dict[str, float]:
    ledger = PostgresLedger(dsn, totals_lock=lock, pool_size=threads)
    latencies: list[float] = []
    refused: list[str] = []
    per_thread = settles // threads
    tag = uuid.uuid4().hex[:8]

    def worker(n: int) -> None:
        mine: list[float] = []
        for i in range(per_thread):
            person = "P-all" if scenario == "one-person" else f"P-{tag}-{n}-{i % 5}"
            institution = f"H-{n}" if scenario == "spread-institutions" else "H-one"
            msgid = f"{tag}-{n}-{i}"
            began = time.perf_counter()
            try:
                ledger.settle("", msgid, institution, "h", person, "M00503", 2021,
                              compute_for(f"S{msgid}", msgid, institution, person))  # fmt: skip
            except Refusal:  # conflicts past the retries: LEDGER_UNAVAILABLE
                refused.append(msgid)
                continue
            mine.append(time.perf_counter() - began)
        latencies.extend(mine)

    began = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    ledger.close()
    latencies.sort()
    return {
        "settles/s": len(latencies) / elapsed,
        "p50 ms": 1000 * statistics.median(latencies),
        "p99 ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "retries": ledger.conflicts,
        "retries/settle": ledger.conflicts / per_thread / threads,
        "refused": len(refused),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a PostgreSQL database to write into (default: a throw-away server)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--settles", type=int, default=800, help="per scenario and lock")
    parser.add_argument(
        "--lock", choices=("row", "serializable"), action="append", help="only this lock (repeatable)"
    )
    args = parser.parse_args()
    logging.getLogger("settlesim.server").setLevel(logging.CRITICAL)  # health flapping under SERIALIZABLE
    server = None
    dsn = args.dsn
    if dsn is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import pg_server

        server = pg_server.PostgresServer(pg_server.find_bin_dir())
        dsn = server.create_database()
    try:
        with psycopg.connect(dsn) as db:
            version = db.execute("SHOW server_version").fetchone()[0]
            sync = db.execute("SHOW synchronous_commit").fetchone()[0]
        print(
            f"PostgreSQL {version}, synchronous_commit={sync}, {args.threads} threads, {args.settles} settles each"
        )
        print(
            f"{'scenario':<22}{'lock':<14}{'settles/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'retries/settle':>16}"
        )
        for scenario in ("one-person", "spread", "spread-institutions"):
            for lock in args.lock or ("row", "serializable"):
                r = run(dsn, lock, scenario, args.threads, args.settles)
                print(f"{scenario:<22}{lock:<14}{r['settles/s']:>10.0f}{r['p50 ms']:>9.1f}{r['p99 ms']:>9.1f}"
                      f"{r['retries/settle']:>16.2f}{r['refused']:>9}")  # fmt: skip
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
