"""The SQLite ledger's invariants (`settlesim ledger check`, `LedgerStore.check`): SQLite's
own quick_check, then the ledger's invariants, the portable SQL both stores run
(server/ledger/invariants.py), picked by what this file's schema version has. One line per
problem; each check is shown failing on a deliberately damaged ledger in tests/test_ledger_check.py."""

from __future__ import annotations

import sqlite3

from settlesim.server.ledger import invariants as portable
from settlesim.server.ledger.contract import AnswerCheck, Figures
from settlesim.server.ledger.invariants import MAX_INSTITUTION_YEAR_FEN, counts
from settlesim.server.ledger.sqlite.answer_rows import answer_problems
from settlesim.server.ledger.sqlite.schema import table_exists

__all__ = ["MAX_INSTITUTION_YEAR_FEN", "counts", "namespaces", "owners", "problems_of"]


def namespaces(db: sqlite3.Connection) -> dict[str, Figures]:
    """Figures per namespace: the real ledger ("") and every sandbox that holds anything."""
    return portable.namespaces_of(db, has_sessions=table_exists(db, "sessions"))


def owners(db: sqlite3.Connection) -> dict[str, str]:
    if not table_exists(db, "sessions"):
        return {}
    return dict(db.execute("SELECT session, institutions FROM sessions").fetchall())


def problems_of(db: sqlite3.Connection, answer_check: AnswerCheck | None = None) -> list[str]:
    """SQLite's own quick_check, then the ledger's invariants. A file SQLite finds
    damaged may fail the invariant queries themselves: that is one more problem."""
    try:
        problems = [
            f"sqlite quick_check: {line}"
            for (answer,) in db.execute("PRAGMA quick_check").fetchall()
            for line in answer.splitlines()
            if line != "ok" and not line.startswith("*** in database")
        ]
    except sqlite3.DatabaseError as error:  # too damaged for quick_check to finish
        problems = [f"sqlite quick_check: {error}"]
    try:
        funds = _has_fund_columns(db)  # schema version 7 on
        problems += portable.totals_problems(db, funds=funds)
        problems += portable.message_problems(db) + portable.money_problems(db)
        if funds:
            problems += portable.fund_problems(db)
        if table_exists(db, "sessions"):  # schema version 5 on
            problems += portable.session_problems(db, owners(db))
        if table_exists(db, "settlement_items"):  # schema version 2 on
            problems += portable.item_problems(db)
        if table_exists(db, "institution_totals"):  # schema version 4 on
            problems += portable.institution_totals_problems(db)
        if table_exists(db, "national_visits"):  # schema version 6 on
            problems += portable.national_visit_problems(db)
        if answer_check is not None:
            problems += answer_problems(db, answer_check)
    except sqlite3.DatabaseError as error:
        problems.append(f"the invariants could not be read: {error}")
    return problems


def _has_fund_columns(db: sqlite3.Connection) -> bool:
    """(version 7) The settlements carry their funds and the yearly totals each fund's counters."""
    settlements = {row[1] for row in db.execute("PRAGMA table_info(settlements)")}
    totals = {row[1] for row in db.execute("PRAGMA table_info(yearly_totals)")}
    return "pooled_pays" in settlements and "account_paid" in totals
