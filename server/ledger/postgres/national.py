"""The national door's visit flow in a PostgreSQL ledger: the 2201 visit (就诊, mdtrt_id), what
2203 said of it, its 2204 fee lines (费用明细), the 2207 msgid of its latest settlement, and
the answer each visit-flow msgid got (national_answers); the SQLite store's national.py in
PostgreSQL's SQL, with what several replicas need besides: a visit about to change is locked
(FOR UPDATE) and then read afresh, so two replicas cannot both settle, describe or cancel it
from the same stale state; the same visit-flow msgid at two replicas at once makes one answer
(the loser's transaction meets the unique key, runs again and replays it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import simplejson
from settlesim.server.ledger.contract import FeeLine, NationalWrites, Visit
from settlesim.server.rules.reasons import Reason, Refusal

Connection = psycopg.Connection[Any]

_VISIT = (
    "SELECT v.institution_code, v.mdtrt_id, v.psn_no, v.insutype, v.begntime, v.status, v.med_type, "
    "v.dise_codg, v.settle_msgid, COALESCE(s.status, '') FROM national_visits v LEFT JOIN settlements s "
    "ON s.session = v.session AND s.institution_code = v.institution_code AND s.msgid = v.settle_msgid "
    "AND v.settle_msgid != '' WHERE v.session = %s AND v.institution_code = %s AND v.mdtrt_id = %s"
)


def _now() -> datetime:
    return datetime.now(UTC)


def visit(db: Connection, session: str, institution: str, mdtrt_id: str) -> Visit:
    row = db.execute(_VISIT, (session, institution, mdtrt_id)).fetchone()
    if row is None:
        raise Refusal(
            Reason.VISIT_NOT_FOUND, f"no visit {mdtrt_id!r} of {institution} (2201 first)", mdtrt_id=mdtrt_id
        )
    return Visit(*row)


def fee_lines(db: Connection, session: str, institution: str, mdtrt_id: str) -> list[FeeLine]:
    """The visit's uploaded (not cancelled) lines, in feedetl_sn order."""
    rows = db.execute(
        "SELECT feedetl_sn, chrg_bchno, med_list_codg, medins_list_codg, pric, cnt, amount "
        "FROM national_fee_lines WHERE session = %s AND institution_code = %s AND mdtrt_id = %s "
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
) -> Callable[[Connection], dict[str, Any]]:
    """The transaction's job for `LedgerStore.national_once`."""

    def job(db: Connection) -> dict[str, Any]:
        seen = db.execute(
            "SELECT infno, request_hash, output FROM national_answers "
            "WHERE session = %s AND institution_code = %s AND msgid = %s",
            (session, institution, msgid),
        ).fetchone()
        if seen is not None:
            if (seen[0], seen[1]) == (infno, request_hash):
                return simplejson.loads(seen[2], use_decimal=True)
            raise Refusal(
                Reason.MSGID_REUSED, f"msgid {msgid} was already used for a different request", msgid=msgid
            )
        writes = PostgresNationalWrites(db, session, institution)
        writes.refuse_if_money_msgid(msgid)
        output = work(writes)
        db.execute(
            "INSERT INTO national_answers VALUES (%s, %s, %s, %s, %s, %s, %s)",
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

    return job


class PostgresNationalWrites:
    """`NationalWrites` on the connection of the transaction in progress."""

    def __init__(self, db: Connection, session: str, institution: str) -> None:
        self.db, self.session, self.institution = db, session, institution

    def _open_visit(self, mdtrt_id: str) -> Visit:
        """A visit that can still change: registered and without a settlement in force. Locked
        first, then read in a statement of its own: what another replica committed meanwhile."""
        self.db.execute(
            "SELECT 1 FROM national_visits WHERE session = %s AND institution_code = %s AND mdtrt_id = %s FOR UPDATE",
            (self.session, self.institution, mdtrt_id),
        )
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
            "status, created_at) VALUES (%s, %s, %s, %s, %s, %s, 'registered', %s)",
            (self.session, self.institution, mdtrt_id, psn_no, insutype, begntime, _now()),
        )
        return mdtrt_id

    def cancel(self, mdtrt_id: str) -> None:
        self._open_visit(mdtrt_id)
        self.db.execute(
            "UPDATE national_visits SET status = 'cancelled' WHERE session = %s AND institution_code = %s "
            "AND mdtrt_id = %s",
            (self.session, self.institution, mdtrt_id),
        )

    def describe(self, mdtrt_id: str, med_type: str, dise_codg: str, begntime: str) -> Visit:
        found = self._open_visit(mdtrt_id)
        self.db.execute(
            "UPDATE national_visits SET med_type = %s, dise_codg = %s, begntime = %s WHERE session = %s "
            "AND institution_code = %s AND mdtrt_id = %s",
            (med_type, dise_codg, begntime or found.begntime, self.session, self.institution, mdtrt_id),
        )
        return visit(self.db, self.session, self.institution, mdtrt_id)

    def upload(self, mdtrt_id: str, lines: list[FeeLine]) -> None:
        self._open_visit(mdtrt_id)  # the visit's lock: its lines change one upload at a time
        for line in lines:
            row = self.db.execute(
                "SELECT status FROM national_fee_lines WHERE session = %s AND institution_code = %s "
                "AND mdtrt_id = %s AND feedetl_sn = %s",
                (self.session, self.institution, mdtrt_id, line.feedetl_sn),
            ).fetchone()
            if row is not None and row[0] == "uploaded":
                raise Refusal(
                    Reason.DUPLICATE_SEQUENCE_NO,
                    f"fee line {line.feedetl_sn} of visit {mdtrt_id} is already uploaded (2205 cancels it)",
                    field="feedetl_sn",
                )
            # A cancelled line of the same feedetl_sn is replaced by the new upload.
            self.db.execute(
                "INSERT INTO national_fee_lines VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'uploaded', %s) "
                "ON CONFLICT (session, institution_code, mdtrt_id, feedetl_sn) DO UPDATE SET "
                "chrg_bchno = excluded.chrg_bchno, med_list_codg = excluded.med_list_codg, "
                "medins_list_codg = excluded.medins_list_codg, pric = excluded.pric, cnt = excluded.cnt, "
                "amount = excluded.amount, status = 'uploaded', created_at = excluded.created_at",
                (
                    self.session, self.institution, mdtrt_id, line.feedetl_sn, line.chrg_bchno,
                    line.med_list_codg, line.medins_list_codg, line.pric, line.cnt, line.amount, _now(),
                ),
            )  # fmt: skip

    def cancel_lines(self, mdtrt_id: str, chrg_bchno: str) -> int:
        self._open_visit(mdtrt_id)
        query = (
            "UPDATE national_fee_lines SET status = 'cancelled' WHERE session = %s AND institution_code = %s "
            "AND mdtrt_id = %s AND status = 'uploaded'"
        )
        args: tuple[str, ...] = (self.session, self.institution, mdtrt_id)
        if chrg_bchno != "0000":
            query += " AND chrg_bchno = %s"
            args += (chrg_bchno,)
        return self.db.execute(query, args).rowcount

    def link(self, mdtrt_id: str, msgid: str) -> None:
        """Refused if the visit changed or settled meanwhile (at this or another replica)."""
        self._open_visit(mdtrt_id)
        self.refuse_if_visit_msgid(msgid)
        self.db.execute(
            "UPDATE national_visits SET settle_msgid = %s WHERE session = %s AND institution_code = %s "
            "AND mdtrt_id = %s",
            (msgid, self.session, self.institution, mdtrt_id),
        )

    def refuse_if_money_msgid(self, msgid: str) -> None:
        row = self.db.execute(
            "SELECT kind FROM messages WHERE session = %s AND institution_code = %s AND msgid = %s",
            (self.session, self.institution, msgid),
        ).fetchone()
        if row is not None:
            raise Refusal(Reason.MSGID_REUSED, f"msgid {msgid} was already used for a {row[0]}", msgid=msgid)

    def refuse_if_visit_msgid(self, msgid: str) -> None:
        row = self.db.execute(
            "SELECT infno FROM national_answers WHERE session = %s AND institution_code = %s AND msgid = %s",
            (self.session, self.institution, msgid),
        ).fetchone()
        if row is not None:
            raise Refusal(Reason.MSGID_REUSED, f"msgid {msgid} was already used for a {row[0]}", msgid=msgid)
