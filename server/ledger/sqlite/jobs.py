"""The SQLite ledger's write jobs: what one write (settle 2207, reverse 2208, void 2601,
a sandbox's first write) does inside the group transaction, on its connection. Each is
made here and run by the store's writer (store.py) or the loop's group commit
(group_commit.py), in a SAVEPOINT of its own: a Refusal rolls back only that write.
The running totals a settle reads and writes go through the writer's copy of them
(running_totals.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from settlesim.server.ledger.contract import Compute, OnSettled, StoredSettlement, VoidOutcome
from settlesim.server.ledger.sqlite import rows
from settlesim.server.ledger.sqlite.national import SqliteNationalWrites
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Reason, Refusal

if TYPE_CHECKING:
    from settlesim.server.ledger.sqlite.store import SqliteLedger


def settle_job(
    store: SqliteLedger,
    session: str,
    msgid: str,
    institution_code: str,
    request_hash: str,
    person_no: str,
    disease_code: str,
    year: int,
    compute: Compute,
    on_settled: OnSettled | None = None,
) -> Callable[[sqlite3.Connection], tuple[StoredSettlement, bool]]:
    """For a new settlement the only reads are the person's totals: the msgid's row goes
    in first and its key says whether the msgid is new (only a msgid seen before reads
    what it was), and the institution's yearly total comes from the writer's copy of it
    (running_totals.py)."""
    person = (session, person_no, disease_code, year)
    running = store.running

    def job(db: sqlite3.Connection) -> tuple[StoredSettlement, bool]:
        # Pricing is pure: it runs before the msgid is known to be new, and a msgid seen
        # before (a retry, rare) throws its figures away.
        stored, after = compute(running.person(db, person))
        if stored.session != session:
            stored = replace(stored, session=session)
        stamp = store._stamp()
        new = db.execute(
            "INSERT INTO messages VALUES (?, ?, 'settle', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (session, msgid, institution_code, request_hash, stored.settlement_id, stamp),
        ).rowcount
        if not new:  # nothing is written: answer what the msgid was
            if running.batch is not None:  # the settlement may be one of this batch's
                running.batch.write(db)
            return seen_settle(db, session, institution_code, msgid, request_hash), True
        # A refusal here comes after the msgid's row: the job's rollback (SAVEPOINT, or the
        # group commit's run again with savepoints) takes it back, so nothing is stored.
        add_to_institution_year(store, db, stored, year, after)
        batch = running.batch
        if batch is None:
            rows.insert(db, stored, year, stamp)
        else:  # written with the batch's others at its end (batch_rows.py)
            batch.add(stored, year, stamp)
        running.put_person(db, person, after)
        if on_settled is not None:
            if batch is not None:  # a door's writes see the settlement in SQL
                batch.write(db)
            on_settled(SqliteNationalWrites(db, session, institution_code), stored)
        return stored, False

    job.keeps_rows = True  # type: ignore[attr-defined]  # group_commit.py: its rows may wait in the batch
    return job


def seen_settle(
    db: sqlite3.Connection, session: str, institution_code: str, msgid: str, request_hash: str
) -> StoredSettlement:
    """A settle with a msgid this institution used before: its settlement when it is the
    same request again, else why not."""
    kind, seen_hash, settlement_id = db.execute(
        "SELECT kind, request_hash, settlement_id FROM messages "
        "WHERE session = ? AND institution_code = ? AND msgid = ?",
        (session, institution_code, msgid),
    ).fetchone()
    if kind == "blocked":
        raise Refusal(Reason.MSGID_VOIDED, f"msgid {msgid} was voided and cannot settle", msgid=msgid)
    if kind == "settle" and seen_hash == request_hash:
        return rows.get(db, session, settlement_id)
    raise Refusal(
        Reason.MSGID_REUSED,
        f"msgid {msgid} was already used for a different request",
        msgid=msgid,
    )


def reverse_job(
    store: SqliteLedger,
    session: str,
    msgid: str,
    institution_code: str,
    request_hash: str,
    settlement_id: str,
) -> Callable[[sqlite3.Connection], tuple[StoredSettlement, bool]]:
    def job(db: sqlite3.Connection) -> tuple[StoredSettlement, bool]:
        replay = rows.replay(db, session, msgid, "reverse", institution_code, request_hash)
        if replay is not None:
            return rows.get(db, session, replay), True
        stored = rows.owned(db, session, settlement_id, institution_code)
        undone = rows.undo(db, stored, "reversed", msgid)
        store.running.drop_for(stored)
        db.execute(
            "INSERT INTO messages VALUES (?, ?, 'reverse', ?, ?, ?, ?)",
            (session, msgid, institution_code, request_hash, settlement_id, store._stamp()),
        )
        return undone, False

    return job


def void_job(
    store: SqliteLedger,
    session: str,
    msgid: str,
    institution_code: str,
    request_hash: str,
    original_msgid: str,
) -> Callable[[sqlite3.Connection], VoidOutcome]:
    def job(db: sqlite3.Connection) -> VoidOutcome:
        replay = rows.replay(db, session, msgid, "void", institution_code, request_hash)
        if replay is not None:
            return VoidOutcome(rows.get(db, session, replay) if replay != "-" else None, True)
        original = db.execute(
            "SELECT kind, settlement_id FROM messages "
            "WHERE session = ? AND institution_code = ? AND msgid = ?",
            (session, institution_code, original_msgid),
        ).fetchone()
        voided: StoredSettlement | None = None
        if original is None:  # never sent by this institution (another's msgid is not its own)
            db.execute(
                "INSERT INTO messages VALUES (?, ?, 'blocked', ?, '', '', ?)",
                (session, original_msgid, institution_code, store._stamp()),
            )
        else:
            kind, settlement_id = original
            if kind == "settle":
                voided = rows.undo(db, rows.get(db, session, settlement_id), "voided", msgid)
                store.running.drop_for(voided)
            elif kind != "blocked":
                raise Refusal(
                    Reason.FIELD_INVALID,
                    f"msgid {original_msgid} is a {kind}; only settlements can be voided",
                    field="original_msgid",
                )
        db.execute(
            "INSERT INTO messages VALUES (?, ?, 'void', ?, ?, ?, ?)",
            (
                session,
                msgid,
                institution_code,
                request_hash,
                voided.settlement_id if voided else "-",
                store._stamp(),
            ),
        )
        return VoidOutcome(voided, False)

    return job


def open_session_job(
    store: SqliteLedger, session: str, institutions: frozenset[str]
) -> Callable[[sqlite3.Connection], frozenset[str]]:
    def job(db: sqlite3.Connection) -> frozenset[str]:
        db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (session, ",".join(sorted(institutions)), store._stamp()),
        )
        (group,) = db.execute("SELECT institutions FROM sessions WHERE session = ?", (session,)).fetchone()
        return frozenset(group.split(","))

    return job


def add_to_institution_year(
    store: SqliteLedger, db: sqlite3.Connection, stored: StoredSettlement, year: int, after: YearlyTotals
) -> None:
    """Refuse a settlement that would take the person's yearly totals or the
    institution's yearly total past its limit (LEDGER_LIMIT_EXCEEDED); else add
    it to the institution's yearly total."""
    counters = (after.fund_paid, after.deductible_used, after.serious_threshold_used, after.serious_paid,
                after.assistance_paid, after.account_paid)  # fmt: skip
    if max(counters) > store.MAX_PERSON_YEAR_FEN:
        raise Refusal(
            Reason.LEDGER_LIMIT_EXCEEDED,
            f"this settlement would take {stored.person_no}'s {year} fund for {stored.disease_code} "
            f"to {after.fund_paid} fen, over the platform's limit of {store.MAX_PERSON_YEAR_FEN} "
            "fen a person, disease and year; nothing was stored",
            limit="person_year_fund",
            person_no=stored.person_no,
        )
    key = (stored.session, stored.institution_code, year)
    total = store.running.institution(db, key) + stored.total
    if total > store.MAX_INSTITUTION_YEAR_FEN:
        raise Refusal(
            Reason.LEDGER_LIMIT_EXCEEDED,
            f"this settlement would take {stored.institution_code}'s settlements of {year} to "
            f"{total} fen, over the platform's limit of {store.MAX_INSTITUTION_YEAR_FEN} fen an "
            "institution and year; nothing was stored",
            limit="institution_year_total",
            institution_code=stored.institution_code,
        )
    store.running.put_institution(db, key, total)
