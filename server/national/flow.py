"""The national transactions (交易) by infno, and the dispatch of an envelope to its own.

Every transaction that touches money goes through SettlementCore with a contract
message built from the visit the ledger keeps (2001 VerifyRegistration, 2206
PreSettleVisit, 2207 SettleVisit, 2208 ReverseSettlement, 2601 VoidByMessageId,
3201/3202 Reconcile, 5203 GetSettlement), so the national door validates, checks and
prices exactly as the gRPC door does. The transactions: people.py (9001 1101 5301
2001), visit_flow.py (2201-2205, state in visits.py), settling.py (2206-2208 2601),
reconciling.py (3201 3202 5203), files.py (9101, 3202 by file, 9102). Money leaves as Decimal yuan (money.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from settlesim.server import validation
from settlesim.server.national import files
from settlesim.server.national.call import Call
from settlesim.server.national.people import disease_registrations, entitlement, person_info, sign_in
from settlesim.server.national.reconciling import reconcile, settlement_query
from settlesim.server.national.settling import pre_settle, reverse, settle, void
from settlesim.server.national.visit_flow import (
    cancel_fees,
    cancel_registration,
    register,
    upload_fees,
    upload_visit,
)
from settlesim.server.rules.reasons import Reason, Refusal

TRANSACTIONS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "9001": sign_in,
    "1101": person_info,
    "5301": disease_registrations,
    "2001": entitlement,
    "2201": register,
    "2202": cancel_registration,
    "2203": upload_visit,
    "2204": upload_fees,
    "2205": cancel_fees,
    "2206": pre_settle,
    "2207": settle,
    "2208": reverse,
    "2601": void,
    "3201": reconcile,
    "3202": files.detail_reconcile,
    "5203": settlement_query,
    "9101": files.upload,
    "9102": files.download,
}


def run(call: Call) -> dict[str, Any]:
    """The transaction the envelope names."""
    validation.required_codes(msgid=call.envelope.msgid, fixmedins_code=call.institution)
    call.core.acting_for(call.caller, call.institution)
    call.session_for(writes=False)  # another's sandbox is refused
    transaction = TRANSACTIONS.get(call.envelope.infno)
    if transaction is None:
        raise Refusal(
            Reason.UNSUPPORTED_TRANSACTION,
            f"infno {call.envelope.infno!r} is not one this door speaks: {', '.join(TRANSACTIONS)}",
            field="infno",
        )
    return transaction(call)
