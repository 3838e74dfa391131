"""The SQLite ledger's rows: settlements, their items, yearly totals and messages, read
and written inside a transaction the store holds (each function takes its connection)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from settlesim.server.ledger.contract import StoredSettlement
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Reason, Refusal


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def replay(
    db: sqlite3.Connection, session: str, msgid: str, kind: str, institution: str, request_hash: str
) -> str | None:
    """The settlement id a repeated identical call answered, or None if new."""
    seen = db.execute(
        "SELECT kind, request_hash, settlement_id FROM messages "
        "WHERE session = ? AND institution_code = ? AND msgid = ?",
        (session, institution, msgid),
    ).fetchone()
    if seen is None:
        return None
    if seen[0] == kind and seen[1] == request_hash:
        return seen[2]
    raise Refusal(Reason.MSGID_REUSED, f"msgid {msgid} was already used for a different request", msgid=msgid)


def owned(
    db: sqlite3.Connection, session: str, settlement_id: str, institution_code: str
) -> StoredSettlement:
    stored = get(db, session, settlement_id)
    if stored.institution_code != institution_code:
        raise Refusal(
            Reason.INSTITUTION_NOT_CALLER,
            f"settlement {settlement_id} belongs to another institution",
            settlement_id=settlement_id,
        )
    return stored


def undo(db: sqlite3.Connection, stored: StoredSettlement, status: str, by: str) -> StoredSettlement:
    if stored.status != "settled":
        reason = Reason.ALREADY_REVERSED if stored.status == "reversed" else Reason.ALREADY_VOIDED
        raise Refusal(
            reason,
            f"settlement {stored.settlement_id} is already {stored.status}",
            settlement_id=stored.settlement_id,
        )
    db.execute(
        "UPDATE settlements SET status = ?, undone_by_msgid = ? WHERE settlement_id = ?",
        (status, by, stored.settlement_id),
    )
    db.execute(
        "UPDATE institution_totals SET total = total - ? WHERE session = ? AND institution_code = ? "
        "AND year = ?",
        (stored.total, stored.session, stored.institution_code, stored.visit_date.year),
    )
    db.execute(
        "UPDATE yearly_totals SET deductible_used = deductible_used - ?, fund_paid = fund_paid - ?, "
        "serious_threshold_used = serious_threshold_used - ?, serious_paid = serious_paid - ?, "
        "assistance_paid = assistance_paid - ?, account_paid = account_paid - ? "
        "WHERE session = ? AND person_no = ? AND disease_code = ? AND year = ?",
        (
            stored.deductible_applied,
            stored.pooled,
            stored.serious_threshold or 0,
            stored.serious_pays or 0,
            stored.assistance_pays or 0,
            stored.account_pays or 0,
            stored.session,
            stored.person_no,
            stored.disease_code,
            stored.visit_date.year,
        ),
    )
    return replace(stored, status=status, undone_by_msgid=by)


def totals(
    db: sqlite3.Connection,
    session: str,
    person_no: str,
    disease: str,
    year: int,
    kept: dict[str, YearlyTotals] | None = None,
) -> YearlyTotals:
    """The person's totals for the disease and year, with what the personal account paid that
    year for every disease (the balance is the person's). Read in the settlement's own write
    transaction, so concurrent visits never spend the same balance twice. `kept`: the
    person's totals of the year by disease that the group commit's batch has not yet written
    (batch_rows.py), which stand for the rows read."""
    # One statement: the person's rows of the year (the key's prefix, then the year), whose
    # account_paid add up to the year's and one of which is this disease's.
    found = db.execute(
        "SELECT disease_code, deductible_used, fund_paid, serious_threshold_used, serious_paid, assistance_paid, "
        "account_paid FROM yearly_totals WHERE session = ? AND person_no = ? AND year = ?",
        (session, person_no, year),
    ).fetchall()
    if kept:
        found = [row for row in found if row[0] not in kept]
        found += [(d, *yearly_values("", "", d, 0, t)[4:]) for d, t in kept.items()]
    paid_year = sum(row[6] for row in found)
    for row in found:
        if row[0] == disease:
            return YearlyTotals(*row[1:], account_paid_year=paid_year)
    return YearlyTotals(account_paid_year=paid_year)


YEARLY_UPSERT = (
    " ON CONFLICT DO UPDATE SET "
    "deductible_used = excluded.deductible_used, fund_paid = excluded.fund_paid, "
    "serious_threshold_used = excluded.serious_threshold_used, serious_paid = excluded.serious_paid, "
    "assistance_paid = excluded.assistance_paid, account_paid = excluded.account_paid"
)
INSTITUTION_UPSERT = " ON CONFLICT DO UPDATE SET total = excluded.total"


def yearly_values(
    session: str, person_no: str, disease: str, year: int, totals: YearlyTotals
) -> tuple[str, str, str, int, int, int, int, int, int, int]:
    """A yearly_totals row, its columns in order."""
    return (
        session,
        person_no,
        disease,
        year,
        totals.deductible_used,
        totals.fund_paid,
        totals.serious_threshold_used,
        totals.serious_paid,
        totals.assistance_paid,
        totals.account_paid,
    )


def put_totals(
    db: sqlite3.Connection, session: str, person_no: str, disease: str, year: int, totals: YearlyTotals
) -> None:
    db.execute(
        "INSERT INTO yearly_totals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + YEARLY_UPSERT,
        yearly_values(session, person_no, disease, year, totals),
    )


def settlement_values(
    s: StoredSettlement, year: int, created_at: str, answer: bytes | bytearray | None = None
) -> tuple[Any, ...]:
    """A settlements row, its columns in order (`answer`: the stored answer's bytes as given)."""
    return (
        s.settlement_id,
        s.session,
        s.msgid,
        s.institution_code,
        s.person_no,
        s.disease_code,
        s.visit_date.isoformat(),
        year,
        s.status,
        s.total,
        s.fund_pays,
        s.patient_pays,
        s.deductible_applied,
        s.undone_by_msgid,
        created_at,
        s.answer if answer is None else answer,
        s.full_self_pay,
        s.over_ceiling,
        s.pre_self_pay,
        s.in_scope,
        s.ratio_bp,
        s.pooled_pays,
        s.serious_threshold,
        s.serious_pays,
        s.assistance_pays,
        s.account_pays,
    )


def insert(db: sqlite3.Connection, s: StoredSettlement, year: int, created_at: str) -> None:
    db.execute(
        "INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        settlement_values(s, year, created_at),
    )
    db.executemany(
        "INSERT INTO settlement_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(s.settlement_id, *item) for item in s.items],
    )


def get(db: sqlite3.Connection, session: str, settlement_id: str) -> StoredSettlement:
    row = db.execute(
        "SELECT * FROM settlements WHERE session = ? AND settlement_id = ?", (session, settlement_id)
    ).fetchone()
    if row is None:
        raise Refusal(
            Reason.SETTLEMENT_NOT_FOUND,
            f"no settlement {settlement_id}",
            settlement_id=settlement_id,
        )
    return settlement_of(row)


def settlement_of(row: tuple[Any, ...]) -> StoredSettlement:
    (
        sid,
        session,
        msgid,
        inst,
        person,
        disease,
        visit,
        _year,
        status,
        total,
        fund,
        patient,
        ded,
        by,
        _at,
        doc,
        full_self_pay,
        over_ceiling,
        pre_self_pay,
        in_scope,
        ratio_bp,
        pooled_pays,
        serious_threshold,
        serious_pays,
        assistance_pays,
        account_pays,
    ) = row
    return StoredSettlement(
        settlement_id=sid,
        session=session,
        msgid=msgid,
        institution_code=inst,
        person_no=person,
        disease_code=disease,
        visit_date=date.fromisoformat(visit),
        total=total,
        fund_pays=fund,
        patient_pays=patient,
        deductible_applied=ded,
        answer=doc,
        status=status,
        undone_by_msgid=by,
        full_self_pay=full_self_pay,
        over_ceiling=over_ceiling,
        pre_self_pay=pre_self_pay,
        in_scope=in_scope,
        ratio_bp=ratio_bp,
        pooled_pays=pooled_pays,
        serious_threshold=serious_threshold,
        serious_pays=serious_pays,
        assistance_pays=assistance_pays,
        account_pays=account_pays,
    )
