"""The national door's visit flow in a SQLite ledger (schema version 6): the 2201 visit
(就诊, mdtrt_id), what 2203 said of it, its 2204 fee lines (费用明细), the 2207 msgid of
its latest settlement, and the answer each visit-flow msgid got (national_answers).
Whether a visit is settled is its settlement's own status, so a reversal or void through
either door frees the visit again."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import simplejson
from settlesim.server.ledger.contract import FeeLine, NationalWrites, Visit
from settlesim.server.ledger.sqlite.rows import now
from settlesim.server.rules.reasons import Reason, Refusal

_VISIT = (
    "SELECT v.institution_code, v.mdtrt_id, v.psn_no, v.insutype, v.begntime, v.status, v.med_type, "
    "v.dise_codg, v.settle_msgid, COALESCE(s.status, '') FROM national_visits v LEFT JOIN messages m "
    "ON m.session = v.session AND m.institution_code = v.institution_code AND m.msgid = v.settle_msgid "
    "AND m.kind = 'settle' AND v.settle_msgid != '' LEFT JOIN settlements s ON s.settlement_id = m.settlement_id "
    "WHERE v.session = ? AND v.institution_code = ? AND v.mdtrt_id = ?"
)  # the settlement through its settle message's key (schema 8 has no index on settlements by msgid)


def visit(db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str) -> Visit:
    row = db.execute(_VISIT, (session, institution, mdtrt_id)).fetchone()
    if row is None:
        raise Refusal(
            Reason.VISIT_NOT_FOUND, f"no visit {mdtrt_id!r} of {institution} (2201 first)", mdtrt_id=mdtrt_id
        )
    return Visit(*row)


def fee_lines(db: sqlite3.Connection, session: str, institution: str, mdtrt_id: str) -> list[FeeLine]:
    """The visit's uploaded (not cancelled) lines, in feedetl_sn order."""
    rows = db.execute(
        "SELECT feedetl_sn, chrg_bchno, med_list_codg, medins_list_codg, pric, cnt, amount "
        "FROM national_fee_lines WHERE session = ? AND institution_code = ? AND mdtrt_id = ? "
        "AND status = 'uploaded' ORDER BY feedetl_sn",
        (session, institution, mdtrt_id),
    ).fetchall()
    return [FeeLine(*row) for row in rows]


def once_job(
    session: str,
    institution: str,
    msgid: str,
    infno: str,
    request_hash: str,
    work: Callable[[NationalWrites], dict[str, Any]],
) -> Callable[[sqlite3.Connection], dict[str, Any]]:
    """The write transaction's job for `LedgerStore.national_once`."""

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
        writes = SqliteNationalWrites(db, session, institution)
        writes.refuse_if_money_msgid(msgid)
        output = work(writes)
        db.execute(
            "INSERT INTO national_answers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session, institution, msgid, infno, request_hash, simplejson.dumps(output, use_decimal=True), now()),
        )
        return output

    return job


class SqliteNationalWrites:
    """`NationalWrites` on the connection of the transaction in progress."""

    def __init__(self, db: sqlite3.Connection, session: str, institution: str) -> None:
        self.db, self.session, self.institution = db, session, institution

    def _open_visit(self, mdtrt_id: str) -> Visit:
        """A visit that can still change: registered and without a settlement in force."""
        found = visit(self.db, self.session, self.institution, mdtrt_id)
        if found.status == "cancelled":
            raise Refusal(Reason.VISIT_CANCELLED, f"visit {mdtrt_id} was cancelled (2202)", mdtrt_id=mdtrt_id)
        if found.settlement_status == "settled":
            raise Refusal(
                Reason.VISIT_SETTLED,
                f"visit {mdtrt_id} is settled (msgid {found.settle_msgid}): reverse it (2208) or void it (2601) first",
                mdtrt_id=mdtrt_id,
            )
        return found

    def register(self, psn_no: str, insutype: str, begntime: str) -> str:
        mdtrt_id = "MD" + uuid.uuid4().hex[:18].upper()
        self.db.execute(
            "INSERT INTO national_visits (session, institution_code, mdtrt_id, psn_no, insutype, begntime, "
            "status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'registered', ?)",
            (self.session, self.institution, mdtrt_id, psn_no, insutype, begntime, now()),
        )
        return mdtrt_id

    def cancel(self, mdtrt_id: str) -> None:
        self._open_visit(mdtrt_id)
        self.db.execute(
            "UPDATE national_visits SET status = 'cancelled' WHERE session = ? AND institution_code = ? "
            "AND mdtrt_id = ?",
            (self.session, self.institution, mdtrt_id),
        )

    def describe(self, mdtrt_id: str, med_type: str, dise_codg: str, begntime: str) -> Visit:
        found = self._open_visit(mdtrt_id)
        self.db.execute(
            "UPDATE national_visits SET med_type = ?, dise_codg = ?, begntime = ? WHERE session = ? "
            "AND institution_code = ? AND mdtrt_id = ?",
            (med_type, dise_codg, begntime or found.begntime, self.session, self.institution, mdtrt_id),
        )
        return visit(self.db, self.session, self.institution, mdtrt_id)

    def upload(self, mdtrt_id: str, lines: list[FeeLine]) -> None:
        self._open_visit(mdtrt_id)
        for line in lines:
            row = self.db.execute(
                "SELECT status FROM national_fee_lines WHERE session = ? AND institution_code = ? "
                "AND mdtrt_id = ? AND feedetl_sn = ?",
                (self.session, self.institution, mdtrt_id, line.feedetl_sn),
            ).fetchone()
            if row is not None and row[0] == "uploaded":
                raise Refusal(
                    Reason.DUPLICATE_SEQUENCE_NO,
                    f"fee line {line.feedetl_sn} of visit {mdtrt_id} is already uploaded (2205 cancels it)",
                    field="feedetl_sn",
                )
            self.db.execute(
                "INSERT OR REPLACE INTO national_fee_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'uploaded', ?)",
                (
                    self.session, self.institution, mdtrt_id, line.feedetl_sn, line.chrg_bchno,
                    line.med_list_codg, line.medins_list_codg, line.pric, line.cnt, line.amount, now(),
                ),
            )  # fmt: skip

    def cancel_lines(self, mdtrt_id: str, chrg_bchno: str) -> int:
        self._open_visit(mdtrt_id)
        query = (
            "UPDATE national_fee_lines SET status = 'cancelled' WHERE session = ? AND institution_code = ? "
            "AND mdtrt_id = ? AND status = 'uploaded'"
        )
        args: tuple[str, ...] = (self.session, self.institution, mdtrt_id)
        if chrg_bchno != "0000":
            query += " AND chrg_bchno = ?"
            args += (chrg_bchno,)
        return self.db.execute(query, args).rowcount

    def link(self, mdtrt_id: str, msgid: str) -> None:
        """Refused if the visit changed or settled meanwhile."""
        self._open_visit(mdtrt_id)
        self.refuse_if_visit_msgid(msgid)
        self.db.execute(
            "UPDATE national_visits SET settle_msgid = ? WHERE session = ? AND institution_code = ? "
            "AND mdtrt_id = ?",
            (msgid, self.session, self.institution, mdtrt_id),
        )

    def refuse_if_money_msgid(self, msgid: str) -> None:
        row = self.db.execute(
            "SELECT kind FROM messages WHERE session = ? AND institution_code = ? AND msgid = ?",
            (self.session, self.institution, msgid),
        ).fetchone()
        if row is not None:
            raise Refusal(Reason.MSGID_REUSED, f"msgid {msgid} was already used for a {row[0]}", msgid=msgid)

    def refuse_if_visit_msgid(self, msgid: str) -> None:
        row = self.db.execute(
            "SELECT infno FROM national_answers WHERE session = ? AND institution_code = ? AND msgid = ?",
            (self.session, self.institution, msgid),
        ).fetchone()
        if row is not None:
            raise Refusal(Reason.MSGID_REUSED, f"msgid {msgid} was already used for a {row[0]}", msgid=msgid)
