"""What the console reads: the journal and the runs through read-only SQLite
connections of its own (mode=ro, query_only), so a page never takes a lock the
settle path waits for; the ledger through its contract (its read transactions). Every query is a keyed lookup or a
keyset page (`seq < ?` ... LIMIT n) over an index: no page scans a table."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from settlesim.server.journal import COLUMNS, JournalEntry, entry_of_row, query
from settlesim.server.ledger import LedgerStore, StoredSettlement
from settlesim.server.runs import Run, _run_of
from settlesim.v1 import settlement_service_pb2 as pb

PAGE = 50


@contextmanager
def read_only(path: Path | None) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to `path`, or None while the file does not exist yet
    (or there is none: a server without a journal)."""
    if path is None or not path.is_file():
        yield None
        return
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
        db.execute("PRAGMA query_only=1")
        yield db


# --- the journal -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalFilter:
    """The journal page's filters; empty strings filter nothing."""

    institution: str = ""
    rpc: str = ""
    outcome: str = ""  # "" | OK | refused | a status name (INVALID_ARGUMENT ...) | a reason
    msgid: str = ""
    session: str = ""
    run_id: str = ""

    def where(self) -> tuple[list[str], list[Any]]:
        where, args = [], []
        for column, value in (
            ("institution", self.institution), ("rpc", self.rpc), ("msgid", self.msgid),
            ("session", self.session), ("run_id", self.run_id),
        ):  # fmt: skip
            if value:
                where.append(f"{column} = ?")
                args.append(value)
                if column in ("session", "run_id"):  # their indexes hold only the calls that have one
                    where.append(f"{column} != ''")
        if self.outcome == "refused":
            where.append("code != 'OK'")
        elif self.outcome:  # a status name or a reason: they never share a spelling
            where.append("(code = ? OR reason = ?)")
            args += [self.outcome, self.outcome]
        return where, args


OUTCOME_WINDOW = 100_000  # an outcome filter looks among this many newest calls (no index on outcome)


def journal_sql(f: JournalFilter, before: int = 0) -> tuple[str, list[Any]]:
    """The page's query: every filter but the outcome has an index (column, seq), so
    a page reads its PAGE rows newest first; the outcome filter is bounded to the
    newest OUTCOME_WINDOW calls (before `before`) instead."""
    where, args = f.where()
    if before:
        where.append("seq < ?")
        args.append(before)
    if f.outcome:
        if before:
            where.append(f"seq > {int(before) - OUTCOME_WINDOW}")
        else:
            where.append(f"seq > (SELECT COALESCE(MAX(seq), 0) FROM journal) - {OUTCOME_WINDOW}")
    sql = f"SELECT {', '.join(COLUMNS)} FROM journal"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + f" ORDER BY seq DESC LIMIT {PAGE}", args


def journal_page(db: sqlite3.Connection | None, f: JournalFilter, before: int = 0) -> list[JournalEntry]:
    """Newest first, PAGE entries older than `before` (0: the newest)."""
    if db is None:
        return []
    sql, args = journal_sql(f, before)
    return [entry_of_row(row) for row in db.execute(sql, args)]


def journal_entry(db: sqlite3.Connection | None, seq: int) -> JournalEntry | None:
    if db is None:
        return None
    row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM journal WHERE seq = ?", (seq,)).fetchone()
    return entry_of_row(row) if row else None


def run_entries(db: sqlite3.Connection | None, run_id: str) -> list[JournalEntry]:
    return list(query(db, run_id=run_id)) if db is not None else []


# --- check runs ---------------------------------------------------------------------------------


def runs_page(db: sqlite3.Connection | None, before: str = "") -> list[Run]:
    """Newest first (run ids start with their opening time)."""
    if db is None:
        return []
    sql = "SELECT run_id, institution, scenario, session, opened_at, expires_at, closed_at, faults FROM runs"
    try:
        rows = db.execute(
            sql + (" WHERE run_id < ?" if before else "") + f" ORDER BY run_id DESC LIMIT {PAGE}",
            (before,) if before else (),
        ).fetchall()
    except sqlite3.OperationalError:  # a journal without runs yet
        return []
    return [_run_of(row) for row in rows]


def run(db: sqlite3.Connection | None, run_id: str) -> Run | None:
    if db is None:
        return None
    try:
        row = db.execute(
            "SELECT run_id, institution, scenario, session, opened_at, expires_at, closed_at, faults "
            "FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    return _run_of(row) if row else None


# --- the ledger (through its contract: server/ledger/contract.py) -----------------------------------


def settlement(ledger: LedgerStore, settlement_id: str) -> tuple[StoredSettlement, pb.Settlement] | None:
    """A settlement by id (the primary key) and its answer as the platform gave it."""
    stored = ledger.settlement_by_id(settlement_id)
    return None if stored is None else (stored, pb.Settlement.FromString(stored.answer))


def session_settlements(ledger: LedgerStore, session: str) -> list[StoredSettlement]:
    """A session's settlements, in the order they were made."""
    return ledger.session_settlements(session)


def yearly_totals(ledger: LedgerStore, session: str, person_no: str) -> list[tuple[str, int, int, int]]:
    """(disease, year, deductible used, fund paid): the primary key's prefix."""
    return ledger.person_totals(session, person_no)


# --- what a refusal reason means ------------------------------------------------------------------


def reason_meanings() -> dict[str, str]:
    """Each ErrorReason's comment in reasons.proto: what it means, for people."""
    text = resources.files("settlesim.v1").joinpath("reasons.proto").read_text(encoding="utf-8")
    meanings: dict[str, str] = {}
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            body = stripped.removeprefix("//").strip()
            if body.startswith("---"):
                comment = []
            else:
                comment.append(body)
        elif match := re.match(r"([A-Z][A-Z0-9_]+)\s*=\s*\d+;", stripped):
            meanings[match.group(1)] = " ".join(comment)
            comment = []
        else:
            comment = []
    return meanings
