"""The national visit flow's state, kept by the ledger behind its contract
(LedgerStore.national_once / national_visit / national_fee_lines; the SQLite rows are in
server/ledger/sqlite/national.py): the 2201 visit (就诊, mdtrt_id), what 2203 said of
it, its 2204 fee lines (费用明细), and the 2207 msgid of its latest settlement. Whether
the visit is settled is the settlement's own status, so a reversal or void through
either door frees the visit again.

Visit-flow msgids (2201-2205) are idempotent like the money calls: the answer a
msgid got is kept and a retry of the same request gets it again; the same msgid
with another request, or already used by a money call, is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from settlesim.server.ledger import FeeLine, LedgerStore, NationalWrites, Visit

__all__ = ["FeeLine", "NationalWrites", "Visit", "VisitStore"]


class VisitStore:
    """The door's view of the ledger's national visit flow."""

    def __init__(self, ledger: LedgerStore) -> None:
        self.ledger = ledger

    def once(
        self,
        session: str,
        institution: str,
        msgid: str,
        infno: str,
        request_hash: str,
        work: Callable[[NationalWrites], dict[str, Any]],
    ) -> dict[str, Any]:
        """`work(writes)` once per msgid, in one transaction with the answer it gave; a
        retry of the same request answers the kept output."""
        return self.ledger.national_once(session, institution, msgid, infno, request_hash, work)

    def visit(self, session: str, institution: str, mdtrt_id: str) -> Visit:
        return self.ledger.national_visit(session, institution, mdtrt_id)

    def lines(self, session: str, institution: str, mdtrt_id: str) -> list[FeeLine]:
        """The visit's uploaded (not cancelled) lines, in feedetl_sn order."""
        return self.ledger.national_fee_lines(session, institution, mdtrt_id)
