"""Each settlement's row and item rows of a SQLite ledger, handed to an AnswerCheck
(server/stored_answers.py decodes the stored answers; the ledger knows no protobuf)."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from typing import Any

from settlesim.server.ledger.contract import AnswerCheck
from settlesim.server.ledger.sqlite.schema import table_exists

# The columns an answer is compared with; the figures are NULL (or absent) before version 2.
_HEADER = ("settlement_id", "msgid", "institution_code", "person_no", "disease_code", "visit_date")
_MONEY = ("total", "fund_pays", "patient_pays", "deductible_applied")
_FIGURES = ("full_self_pay", "over_ceiling", "pre_self_pay", "in_scope", "ratio_bp")
_FUNDS = ("pooled_pays", "serious_threshold", "serious_pays", "assistance_pays", "account_pays")  # version 7


def answer_problems(db: sqlite3.Connection, check: AnswerCheck) -> list[str]:
    present = {row[1] for row in db.execute("PRAGMA table_info(settlements)")}
    has_figures, has_funds = present >= {"ratio_bp"}, present >= set(_FUNDS)
    columns = ("answer", *_HEADER, *_MONEY, *(_FIGURES if has_figures else ()), *(_FUNDS if has_funds else ()))
    settlements = db.execute(f"SELECT {', '.join(columns)} FROM settlements ORDER BY settlement_id")
    items = _items_by_settlement(db)
    found: list[str] = []
    pending = next(items, None)
    for row in settlements:
        settlement = dict(zip(columns, row, strict=True))
        for column in (*_FIGURES, *_FUNDS):  # NULL, or absent before versions 2 and 7: not compared
            settlement.setdefault(column, None)
        sid = settlement["settlement_id"]
        while pending is not None and pending[0] < sid:  # rows of a missing settlement: _item_problems says so
            pending = next(items, None)
        rows: list[dict[str, Any]] = []
        if pending is not None and pending[0] == sid:
            rows, pending = pending[1], next(items, None)
        found += check(settlement, rows)
    return found


def _items_by_settlement(db: sqlite3.Connection) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    if not table_exists(db, "settlement_items"):
        return iter(())
    cursor = db.execute("SELECT * FROM settlement_items ORDER BY settlement_id, sequence_no")
    names = [d[0] for d in cursor.description]
    rows = (dict(zip(names, row, strict=True)) for row in cursor)
    return ((sid, list(group)) for sid, group in itertools.groupby(rows, key=lambda r: r["settlement_id"]))
