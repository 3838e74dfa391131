"""The national visit flow's state in the ledger (schema version 5): the 2201 visit
(就诊, mdtrt_id), what 2203 said of it, its 2204 fee lines (费用明细), and the 2207
msgid of its latest settlement. Whether the visit is settled is the settlement's
own status, so a reversal or void through either door frees the visit again.

Visit-flow msgids (2201-2205) are idempotent like the money calls: the answer a
msgid got is kept (national_answers) and a retry of the same request gets it again;
the same msgid with another request, or already used by a money call, is refused.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import simplejson
from settlesim.server.ledger import Ledger
from settlesim.server.rules.reasons import Reason, Refusal


@dataclass(frozen=True, slots=True)
class Visit:
    """A 2201 visit as the ledger keeps it; settlement_status is '' before any settlement."""

    institution_code: str
    mdtrt_id: str
    psn_no: str
    insutype: str
    begntime: str
    status: str  # registered | cancelled
    med_type: str
    dise_codg: str
    settle_msgid: str
    settlement_status: str  # '' | settled | reversed | voided


@dataclass(frozen=True, slots=True)
class FeeLine:
    """A 2204 fee line as uploaded, money in fen."""

    feedetl_sn: str
    chrg_bchno: str
    med_list_codg: str
    medins_list_codg: str
    pric: int
    cnt: int
    amount: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


_VISIT = (
    "SELECT v.institution_code, v.mdtrt_id, v.psn_no, v.insutype, v.begntime, v.status, v.med_type, "
    "v.dise_codg, v.settle_msgid, COALESCE(s.status, '') FROM national_visits v LEFT JOIN settlements s "
    "ON s.session = v.session AND s.institution_code = v.institution_code AND s.msgid = v.settle_msgid "
    "AND v.settle_msgid != '' WHERE v.session = ? AND v.institution_code = ? AND v.mdtrt_id = ?"
)


def _visit(db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str) -> Visit:
    row = db.execute(_VISIT, (session, institution, mdtrt_id)).fetchone()
    if row is None:
        raise Refusal(
            Reason.VISIT_NOT_FOUND, f"no visit {mdtrt_id!r} of {institution} (2201 first)", mdtrt_id=mdtrt_id
        )
    return Visit(*row)


def _open_visit(db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str) -> Visit:
    """A visit that can still change: registered and without a settlement in force."""
    visit = _visit(db, session, institution, mdtrt_id)
    if visit.status == "cancelled":
        raise Refusal(Reason.VISIT_CANCELLED, f"visit {mdtrt_id} was cancelled (2202)", mdtrt_id=mdtrt_id)
    if visit.settlement_status == "settled":
        raise Refusal(
            Reason.VISIT_SETTLED,
            f"visit {mdtrt_id} is settled (msgid {visit.settle_msgid}): reverse it (2208) or void it (2601) first",
            mdtrt_id=mdtrt_id,
        )
    return visit


class VisitStore:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # --- idempotency by msgid ---------------------------------------------------------------

    def once(
        self,
        session: str,
        institution: str,
        msgid: str,
        infno: str,
        request_hash: str,
        work: Callable[[sqlite3.Connection], dict[str, Any]],
    ) -> dict[str, Any]:
        """`work(db)` once per msgid, in one transaction with the answer it gave; a
        retry of the same request answers the kept output."""

        def job(db: sqlite3.Connection) -> dict[str, Any]:
            seen = db.execute(
                "SELECT infno, request_hash, output FROM national_answers "
                "WHERE session = ? AND institution_code = ? AND msgid = ?",
                (session, institution, msgid),
            ).fetchone()
            if seen is not None:
                if (seen[0], seen[1]) == (infno, request_hash):
                    return simplejson.loads(seen[2], use_decimal=True)
                raise Refusal(
                    Reason.MSGID_REUSED,
                    f"msgid {msgid} was already used for a different request",
                    msgid=msgid,
                )
            refuse_if_money_msgid(db, session, institution, msgid)
            output = work(db)
            db.execute(
                "INSERT INTO national_answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session,
                    institution,
                    msgid,
                    infno,
                    request_hash,
                    simplejson.dumps(output, use_decimal=True),
                    _now(),
                ),
            )
            return output

        return self.ledger.write(job)

    # --- the writes (each runs inside `once`) ------------------------------------------------

    @staticmethod
    def register(
        db: sqlite3.Connection, session: str, institution: str, psn_no: str, insutype: str, begntime: str
    ) -> str:
        """2201 门诊挂号: a new visit; its mdtrt_id 就诊ID."""
        mdtrt_id = "MD" + uuid.uuid4().hex[:18].upper()
        db.execute(
            "INSERT INTO national_visits (session, institution_code, mdtrt_id, psn_no, insutype, begntime, "
            "status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'registered', ?)",
            (session, institution, mdtrt_id, psn_no, insutype, begntime, _now()),
        )
        return mdtrt_id

    @staticmethod
    def cancel(db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str) -> None:
        """2202 挂号撤销: refused while a settlement of the visit is in force."""
        _open_visit(db, session, institution, mdtrt_id)
        db.execute(
            "UPDATE national_visits SET status = 'cancelled' WHERE session = ? AND institution_code = ? "
            "AND mdtrt_id = ?",
            (session, institution, mdtrt_id),
        )

    @staticmethod
    def describe(
        db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str, med_type: str, dise_codg: str,
        begntime: str,
    ) -> Visit:  # fmt: skip
        """2203 就诊信息上传: the visit's medical type, main diagnosis and date."""
        visit = _open_visit(db, session, institution, mdtrt_id)
        db.execute(
            "UPDATE national_visits SET med_type = ?, dise_codg = ?, begntime = ? WHERE session = ? "
            "AND institution_code = ? AND mdtrt_id = ?",
            (med_type, dise_codg, begntime or visit.begntime, session, institution, mdtrt_id),
        )
        return _visit(db, session, institution, mdtrt_id)

    @staticmethod
    def upload(
        db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str, lines: list[FeeLine]
    ) -> None:
        """2204 费用明细上传: a feedetl_sn already uploaded (and not cancelled) is refused."""
        _open_visit(db, session, institution, mdtrt_id)
        for line in lines:
            row = db.execute(
                "SELECT status FROM national_fee_lines WHERE session = ? AND institution_code = ? "
                "AND mdtrt_id = ? AND feedetl_sn = ?",
                (session, institution, mdtrt_id, line.feedetl_sn),
            ).fetchone()
            if row is not None and row[0] == "uploaded":
                raise Refusal(
                    Reason.DUPLICATE_SEQUENCE_NO,
                    f"fee line {line.feedetl_sn} of visit {mdtrt_id} is already uploaded (2205 cancels it)",
                    field="feedetl_sn",
                )
            db.execute(
                "INSERT OR REPLACE INTO national_fee_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'uploaded', ?)",
                (
                    session, institution, mdtrt_id, line.feedetl_sn, line.chrg_bchno, line.med_list_codg,
                    line.medins_list_codg, line.pric, line.cnt, line.amount, _now(),
                ),
            )  # fmt: skip

    @staticmethod
    def cancel_lines(
        db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str, chrg_bchno: str
    ) -> int:
        """2205 费用明细撤销: the batch's lines ("0000": every line); refused after settlement."""
        _open_visit(db, session, institution, mdtrt_id)
        query = (
            "UPDATE national_fee_lines SET status = 'cancelled' WHERE session = ? AND institution_code = ? "
            "AND mdtrt_id = ? AND status = 'uploaded'"
        )
        args: tuple[str, ...] = (session, institution, mdtrt_id)
        if chrg_bchno != "0000":
            query += " AND chrg_bchno = ?"
            args += (chrg_bchno,)
        return db.execute(query, args).rowcount

    # --- settlement link (inside the settlement's transaction) ---------------------------------

    @staticmethod
    def link(db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str, msgid: str) -> None:
        """The visit's settlement: refused if the visit changed or settled meanwhile."""
        _open_visit(db, session, institution, mdtrt_id)
        refuse_if_visit_msgid(db, session, institution, msgid)
        db.execute(
            "UPDATE national_visits SET settle_msgid = ? WHERE session = ? AND institution_code = ? "
            "AND mdtrt_id = ?",
            (msgid, session, institution, mdtrt_id),
        )

    # --- reads --------------------------------------------------------------------------------

    def visit(self, session: str, institution: str, mdtrt_id: str) -> Visit:
        with self.ledger.reading() as db:
            return _visit(db, session, institution, mdtrt_id)

    def lines(self, session: str, institution: str, mdtrt_id: str) -> list[FeeLine]:
        """The visit's uploaded (not cancelled) lines, in feedetl_sn order."""
        with self.ledger.reading() as db:
            rows = db.execute(
                "SELECT feedetl_sn, chrg_bchno, med_list_codg, medins_list_codg, pric, cnt, amount "
                "FROM national_fee_lines WHERE session = ? AND institution_code = ? AND mdtrt_id = ? "
                "AND status = 'uploaded' ORDER BY feedetl_sn",
                (session, institution, mdtrt_id),
            ).fetchall()
        return [FeeLine(*row) for row in rows]


def refuse_if_money_msgid(db: sqlite3.Connection, session: str, institution: str, msgid: str) -> None:
    row = db.execute(
        "SELECT kind FROM messages WHERE session = ? AND institution_code = ? AND msgid = ?",
        (session, institution, msgid),
    ).fetchone()
    if row is not None:
        raise Refusal(Reason.MSGID_REUSED, f"msgid {msgid} was already used for a {row[0]}", msgid=msgid)


def refuse_if_visit_msgid(db: sqlite3.Connection, session: str, institution: str, msgid: str) -> None:
    row = db.execute(
        "SELECT infno FROM national_answers WHERE session = ? AND institution_code = ? AND msgid = ?",
        (session, institution, msgid),
    ).fetchone()
    if row is not None:
        raise Refusal(Reason.MSGID_REUSED, f"msgid {msgid} was already used for a {row[0]}", msgid=msgid)
