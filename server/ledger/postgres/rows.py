"""A settlement's row in the PostgreSQL ledger and back: the columns in one order, for reads
and writes alike."""

from __future__ import annotations

from typing import Any

from settlesim.server.ledger.contract import StoredSettlement

SETTLEMENT_COLUMNS = (
    "settlement_id, session, msgid, institution_code, person_no, disease_code, visit_date, year, status, "
    "total, fund_pays, patient_pays, deductible_applied, undone_by_msgid, created_at, answer, "
    "full_self_pay, over_ceiling, pre_self_pay, in_scope, ratio_bp, "
    "pooled_pays, serious_threshold, serious_pays, assistance_pays, account_pays"
)
ITEM_COLUMNS = (
    "settlement_id, sequence_no, catalog_code, hospital_item_code, unit_price, quantity, amount, "
    "catalog_class, self_pay_share_bp, price_ceiling, full_self_pay, over_ceiling, pre_self_pay, in_scope"
)


def settlement_of(row: tuple[Any, ...]) -> StoredSettlement:
    """A row in SETTLEMENT_COLUMNS' order (visit_date a date, answer bytes)."""
    (
        sid, session, msgid, inst, person, disease, visit, _year, status, total, fund, patient, ded, by, _at,
        doc, full_self_pay, over_ceiling, pre_self_pay, in_scope, ratio_bp,
        pooled_pays, serious_threshold, serious_pays, assistance_pays, account_pays,
    ) = row  # fmt: skip
    return StoredSettlement(
        settlement_id=sid,
        session=session,
        msgid=msgid,
        institution_code=inst,
        person_no=person,
        disease_code=disease,
        visit_date=visit,
        total=total,
        fund_pays=fund,
        patient_pays=patient,
        deductible_applied=ded,
        answer=bytes(doc),
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
