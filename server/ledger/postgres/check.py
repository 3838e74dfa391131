"""`settlesim ledger check --db postgresql://...`: the ledger's invariants on PostgreSQL (the
same SQL as SQLite's, server/ledger/invariants.py), and each stored answer against its row.

Read in one REPEATABLE READ, read-only transaction: one snapshot, even beside replicas
writing, and nothing changed. PostgreSQL's own integrity (page checksums, `pg_amcheck`) is
the database operator's: a database server is checked by its own tools, not by a client.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
from settlesim.server.ledger.contract import AnswerCheck, CheckReport, LedgerFileError
from settlesim.server.ledger.invariants import (
    counts,
    fund_problems,
    institution_totals_problems,
    item_problems,
    message_problems,
    money_problems,
    namespaces_of,
    national_visit_problems,
    session_problems,
    totals_problems,
)
from settlesim.server.ledger.postgres import schema
from settlesim.server.ledger.postgres.errors import first_line

Connection = psycopg.Connection[Any]

# The columns an answer is compared with (server/stored_answers.py), visit_date as text.
_ANSWER_COLUMNS = (
    "answer", "settlement_id", "msgid", "institution_code", "person_no", "disease_code", "visit_date",
    "total", "fund_pays", "patient_pays", "deductible_applied", "full_self_pay", "over_ceiling",
    "pre_self_pay", "in_scope", "ratio_bp", "pooled_pays", "serious_threshold", "serious_pays",
    "assistance_pays", "account_pays",
)  # fmt: skip


def owners(db: Connection) -> dict[str, str]:
    return dict(db.execute("SELECT session, institutions FROM sessions").fetchall())


_FUNDS = ("pooled_pays", "serious_threshold", "serious_pays", "assistance_pays", "account_pays")  # version 7


def problems_of(
    db: Connection, answer_check: AnswerCheck | None = None, version: int = schema.SCHEMA_VERSION
) -> list[str]:
    """Every invariant of the current schema version (a PostgreSQL ledger is migrated to it
    before it serves), then each stored answer."""
    funds = version >= 7  # a database not yet upgraded has no fund columns
    problems = totals_problems(db, funds) + message_problems(db) + money_problems(db)
    problems += fund_problems(db) if funds else []
    problems += session_problems(db, owners(db)) + item_problems(db) + institution_totals_problems(db)
    problems += national_visit_problems(db)
    if answer_check is not None:
        problems += answer_problems(db, answer_check, funds)
    return problems


def answer_problems(db: Connection, check: AnswerCheck, funds: bool = True) -> list[str]:
    names = [c for c in _ANSWER_COLUMNS if funds or c not in _FUNDS]
    columns = ", ".join("to_char(visit_date, 'YYYY-MM-DD')" if c == "visit_date" else c for c in names)
    found: list[str] = []
    items = _items_by_settlement(db)
    pending = next(items, None)
    with db.cursor(name="answers") as settlements:  # server-side: one batch in memory at a time
        settlements.execute(f'SELECT {columns} FROM settlements ORDER BY settlement_id COLLATE "C"')
        for row in settlements:
            settlement = dict(zip(names, row, strict=True))
            for column in _FUNDS:  # absent before version 7: not compared
                settlement.setdefault(column, None)
            settlement["answer"] = bytes(settlement["answer"])
            sid = settlement["settlement_id"]
            while pending is not None and pending[0] < sid:
                pending = next(items, None)
            rows: list[dict[str, Any]] = []
            if pending is not None and pending[0] == sid:
                rows, pending = pending[1], next(items, None)
            found += check(settlement, rows)
    return found


def _items_by_settlement(db: Connection) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    cursor = db.cursor(name="items")
    cursor.execute('SELECT * FROM settlement_items ORDER BY settlement_id COLLATE "C", sequence_no')
    names = [d[0] for d in cursor.description]
    rows = (dict(zip(names, row, strict=True)) for row in cursor)
    return ((sid, list(group)) for sid, group in itertools.groupby(rows, key=lambda r: r["settlement_id"]))


def check_database(url: str, answer_check: AnswerCheck | None = None) -> CheckReport:
    """Check the PostgreSQL ledger at `url` without changing it. Raises LedgerFileError, in one
    line, when it cannot be reached or is not a settlesim ledger this version can read."""
    from settlesim.server.ledger.postgres.store import redacted

    where = redacted(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as db:
            db.read_only, db.isolation_level = True, psycopg.IsolationLevel.REPEATABLE_READ
            with db.transaction():
                version = schema.require_ledger(db, where)
                problems = problems_of(db, answer_check, version)
                return CheckReport(problems, counts(db), version, namespaces_of(db), owners(db))
    except psycopg.Error as error:
        raise LedgerFileError(f"{where}: cannot be checked: {first_line(error)}") from None
