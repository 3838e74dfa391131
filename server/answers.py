"""Plain results -> protobuf answers (the outbound half of the gRPC adapter)."""

from __future__ import annotations

from typing import Any

from settlesim.server.model import (
    CatalogClass,
    Coverage,
    InsuranceType,
    Registration,
    RegistrationScope,
    Scheme,
    TraceEntry,
)
from settlesim.server.rules.funds import POOLED
from settlesim.server.rules.settlement import SettlementResult
from settlesim.v1 import settlement_service_pb2 as pb

CATALOG_CLASS = {
    CatalogClass.A: pb.CATALOG_CLASS_A,
    CatalogClass.B: pb.CATALOG_CLASS_B,
    CatalogClass.C: pb.CATALOG_CLASS_C,
    CatalogClass.NOT_LISTED: pb.CATALOG_CLASS_NOT_LISTED,
}
COVERAGE = {
    Coverage.CHRONIC_SPECIAL: pb.COVERAGE_CHRONIC_SPECIAL,
    Coverage.GENERAL_OUTPATIENT: pb.COVERAGE_GENERAL_OUTPATIENT,
    Coverage.NONE: pb.COVERAGE_NONE,
}
INSURANCE_TYPE = {t: int(t.value) for t in InsuranceType}  # 310, 390: the proto enum's numbers
STATUS = {
    "settled": pb.SETTLEMENT_STATUS_SETTLED,
    "reversed": pb.SETTLEMENT_STATUS_REVERSED,
    "voided": pb.SETTLEMENT_STATUS_VOIDED,
}


def registration(reg: Registration | None, scheme: Scheme | None) -> pb.Registration | None:
    if reg is None:
        return None
    institution_level = scheme is not None and scheme.scope is RegistrationScope.INSTITUTION
    return pb.Registration(
        registration_id=reg.id,
        category=reg.category,
        destination_region=reg.destination,
        scope=pb.REGISTRATION_SCOPE_INSTITUTION if institution_level else pb.REGISTRATION_SCOPE_CITY,
        institution_codes=reg.institutions,
        valid_from=reg.valid.start.isoformat(),
        valid_until=reg.valid.end.isoformat() if reg.valid.end else "",
    )


def add_trace(into: Any, entries: tuple[TraceEntry, ...]) -> None:
    """The trace appended to a Settlement's repeated field: `add` makes each entry in
    place (half the cost of building messages and copying them in), its fields set as
    attributes (a quarter less than keyword arguments)."""
    add = into.add
    for e in entries:
        m = add()
        m.figure, m.rule, m.source, m.detail = e


def fill_figures(totals: Any, result: SettlementResult) -> None:
    """The visit's totals written into a Settlement's `totals` (made in place: no message
    built and copied in). Present even when every figure is 0, as before."""
    f = result.figures
    totals.SetInParent()
    totals.total_fen = f.total
    # Figures that are often 0 are set only when they are not: a zero is not on the wire (no
    # explicit presence), and each field set is a lookup by name in the message.
    if f.full_self_pay:
        totals.full_self_pay_fen = f.full_self_pay
    if f.over_ceiling:
        totals.over_ceiling_self_pay_fen = f.over_ceiling
    if f.pre_self_pay:
        totals.pre_self_pay_fen = f.pre_self_pay
    totals.in_scope_fen = f.in_scope
    if f.deductible_applied:
        totals.deductible_applied_fen = f.deductible_applied
    totals.fund_pays_fen = f.fund_pays
    totals.ratio_bp = f.ratio_bp
    totals.patient_pays_fen = f.patient_pays
    if f.deductible_remaining:
        totals.deductible_remaining_fen = f.deductible_remaining
    if f.cap_remaining is not None:  # optional: present even when 0
        totals.cap_remaining_fen = f.cap_remaining
    m = result.funds
    if m is None:  # the pooled fund alone: it is every fund, and the patient pays cash
        totals.pooled_fund_fen = f.fund_pays
        totals.cash_pays_fen = f.patient_pays
        return
    totals.pooled_fund_fen = m.pooled
    if m.serious_threshold_applied:
        totals.serious_threshold_applied_fen = m.serious_threshold_applied
    if m.serious_pays:
        if m.insurance_type is InsuranceType.EMPLOYEE:
            totals.large_amount_fen = m.serious_pays
        else:
            totals.serious_illness_fen = m.serious_pays
    if m.assistance_pays:
        totals.medical_assistance_fen = m.assistance_pays
    if m.account_pays:
        totals.account_pays_fen = m.account_pays
    totals.cash_pays_fen = m.cash_pays
    if m.account_balance is not None:  # optional: present even when 0
        totals.account_balance_fen = m.account_balance


def add_funds(into: Any, result: SettlementResult) -> None:
    """2207 setldetail, one row per fund that pays, appended to a Settlement's `funds`."""
    if result.funds is None:
        return
    add = into.add
    for p in result.funds.payments:
        m = add()
        m.fund_type, m.name, m.base_fen, m.limit_fen, m.paid_fen, m.detail = p


def add_items(into: Any, result: SettlementResult) -> None:
    """The settled items appended to a Settlement's repeated field, made in place."""
    add = into.add
    for sequence_no, code, klass, b_share_bp, ceiling, amount, full_self_pay, over, pre, in_scope in result.items:
        item = add()
        item.sequence_no = sequence_no
        item.catalog_code = code
        item.catalog_class = CATALOG_CLASS[klass]
        item.amount_fen = amount
        # A zero is not on the wire for these (no explicit presence): not set, the same bytes, and
        # a field set is a lookup by name in the message.
        if b_share_bp:
            item.self_pay_share_bp = b_share_bp
        if full_self_pay:
            item.full_self_pay_fen = full_self_pay
        if over:
            item.over_ceiling_self_pay_fen = over
        if pre:
            item.pre_self_pay_fen = pre
        if in_scope:
            item.in_scope_fen = in_scope
        if ceiling is not None:  # optional: present even when 0
            item.price_ceiling_fen = ceiling


def complete_older(answer: pb.Settlement) -> pb.Settlement:
    """A stored answer from before the fund breakdown (no `funds` rows) gets the figures it
    implied: the pooled fund was every fund and the patient paid cash."""
    if answer.funds or not answer.HasField("totals"):
        return answer
    t = answer.totals
    t.pooled_fund_fen = t.fund_pays_fen
    t.cash_pays_fen = t.patient_pays_fen
    kind = (
        InsuranceType.EMPLOYEE
        if answer.insurance_type == pb.INSURANCE_TYPE_EMPLOYEE
        else InsuranceType.RESIDENT
    )
    fund_type, name = POOLED[kind]
    answer.funds.add(fund_type=fund_type, name=name, base_fen=t.in_scope_fen, limit_fen=t.fund_pays_fen,
                     paid_fen=t.fund_pays_fen)  # fmt: skip
    return answer
