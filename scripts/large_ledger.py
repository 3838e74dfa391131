#!/usr/bin/env python3
"""Make a large, sound ledger to time start-up and `ledger check` on it.

    python scripts/large_ledger.py /tmp/large.db --settlements 1000000

One real settlement is made by a throw-away reference server (the 2021 Qinghai
case: 17963 fen, two fee items); it is then copied N times with its own ids,
answer included, spread over the visit days of 2024 and a thousand people, so
the file is what N such settles would leave (yearly and institution totals
included) and `settlesim ledger check` passes on it. Prints the file's size.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.app import ServerConfig, start
from settlesim.server.ledger.sqlite import SqliteLedger
from settlesim.v1 import settlement_service_pb2 as pb

INSTITUTION, PERSON, DISEASE = "H11010500001", "63000000000000000001", "M00503"
BATCH = 10_000


def one_real_settlement() -> tuple[pb.Settlement, list[tuple], tuple]:
    """A settlement made by the server: its answer, item rows and figure columns."""
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "one.db"
        running = start(ServerConfig(port=0, db_path=db, max_workers=2))
        his = Hospital.connect(running.target, INSTITUTION)
        try:
            his.settle(PERSON, DISEASE, "2024-03-01", [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)])
            answer = his.settle(
                PERSON, DISEASE, "2024-03-01", [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
            ).settlement  # deductible already met: fund 17963, patient 0
        finally:
            his.close()
            running.stop(grace=1)
        with sqlite3.connect(db) as conn:
            items = conn.execute(
                "SELECT * FROM settlement_items WHERE settlement_id = ?", (answer.settlement_id,)
            ).fetchall()
            figures = conn.execute(
                "SELECT total, fund_pays, patient_pays, deductible_applied, full_self_pay, over_ceiling, "
                "pre_self_pay, in_scope, ratio_bp FROM settlements WHERE settlement_id = ?",
                (answer.settlement_id,),
            ).fetchone()
    return answer, items, figures


# The settlement columns before schema version 7 (the fund columns stay NULL: every fund pooled).
SETTLEMENT_COLUMNS = (
    "settlement_id, session, msgid, institution_code, person_no, disease_code, visit_date, year, status, total, "
    "fund_pays, patient_pays, deductible_applied, undone_by_msgid, created_at, answer, full_self_pay, "
    "over_ceiling, pre_self_pay, in_scope, ratio_bp"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--settlements", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.path.exists():
        print(f"{args.path} exists; give a new path", file=sys.stderr)
        return 2
    started = time.monotonic()
    template, items, figures = one_real_settlement()
    total, fund, patient, deductible, full, over, pre, scope, ratio = figures
    SqliteLedger(args.path).close()  # the schema, as a server makes it
    db = sqlite3.connect(args.path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN IMMEDIATE")
    first = date(2024, 1, 1)
    for start_at in range(0, args.settlements, BATCH):
        settlements, item_rows, messages = [], [], []
        for n in range(start_at, min(start_at + BATCH, args.settlements)):
            sid, msgid, person = f"S{n:019d}", f"{INSTITUTION}{n:016d}", f"630000{n % 1000:014d}"
            day = (first + timedelta(days=n % 366)).isoformat()
            answer = pb.Settlement()
            answer.CopyFrom(template)
            answer.settlement_id, answer.msgid, answer.person_no, answer.visit_date = sid, msgid, person, day
            settlements.append(
                (sid, "", msgid, INSTITUTION, person, DISEASE, day, 2024, "settled", total, fund, patient,
                 deductible, "", "2026-01-01T00:00:00+00:00", answer.SerializeToString(), full, over, pre,
                 scope, ratio)
            )  # fmt: skip
            item_rows += [(sid, *item[1:]) for item in items]
            messages.append(("", msgid, "settle", INSTITUTION, f"h{n}", sid, "2026-01-01T00:00:00+00:00"))
        db.executemany(f"INSERT INTO settlements ({SETTLEMENT_COLUMNS}) VALUES ({', '.join('?' * 21)})", settlements)
        db.executemany(f"INSERT INTO settlement_items VALUES ({', '.join('?' * 14)})", item_rows)
        db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", messages)
    db.execute(
        "INSERT INTO yearly_totals (session, person_no, disease_code, year, deductible_used, fund_paid) "
        "SELECT session, person_no, disease_code, year, SUM(deductible_applied), SUM(fund_pays) FROM settlements "
        "GROUP BY 1, 2, 3, 4"
    )
    db.execute(
        "INSERT INTO institution_totals SELECT session, institution_code, year, SUM(total) FROM settlements "
        "GROUP BY 1, 2, 3"
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = args.path.stat().st_size
    print(f"{args.path}: {args.settlements} settlements, {size / 2**20:.0f} MiB, {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
