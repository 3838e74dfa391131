"""The funds after the pooled one, and the personal account (2207 setlinfo / setldetail).

Once the basic pooled fund (统筹基金, hifp_pay) has paid (server/rules/settlement.py), the
patient's in-scope share (合规自付 = in scope − pooled fund) is what the funds above work on,
in this order, each with its own yearly counters (per person, disease and year, like the
deductible and the cap):

1. **serious illness** — 城乡居民大病保险 (residents, hifmi_pay) or 职工大额医疗费用补助
   (employees, hifob_pay): threshold applied = min(share, threshold − threshold used this
   year); pays round((share − threshold applied) × ratio), at most the cap left this year;
2. **medical assistance** — 医疗救助 (maf_pay), for people flagged as assisted on the visit
   date: round(what the share still is × ratio), at most the cap left this year;
3. **the personal account** — 个人账户 (acct_pay), when the HIS asks (acct_used_flag): pays
   the patient's part (psn_part_amt = total − every fund) first, at most the balance left
   this year (opening balance − what the account paid this year); the rest is cash
   (psn_cash_pay) and the balance after is balc.

Pure functions over plain data; money in fen, rounding half up once per fund and visit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import NamedTuple

from settlesim.server.model import (
    AssistanceTerms,
    Catalog,
    DiseaseTerms,
    FeeLine,
    FundTerms,
    InsuranceType,
    Person,
    RegionPolicy,
    SeriousIllnessTerms,
    TraceEntry,
    YearlyTotals,
    new_tuple,
)
from settlesim.server.rules.settlement import (
    Figures,
    SettlementResult,
    apply_deductible,
    apply_ratio,
    cap_fund_payment,
    fen,
    percent,
    pooled_fund,
)

# fund_pay_type 基金支付类型 and its name, as setldetail carries them.
POOLED = {
    InsuranceType.EMPLOYEE: ("310100", "职工基本医疗保险统筹基金"),
    InsuranceType.RESIDENT: ("390100", "城乡居民基本医疗保险基金"),
}
SERIOUS = {
    InsuranceType.EMPLOYEE: ("310300", "职工大额医疗费用补助基金"),
    InsuranceType.RESIDENT: ("390200", "城乡居民大病医疗保险资金"),
}
ASSISTANCE = ("610100", "医疗救助基金")


class FundInput(NamedTuple):
    """What the funds after the pooled one need to know about the visit and the person."""

    insurance_type: InsuranceType
    terms: FundTerms | None  # the insured region's fund terms on the visit date
    source: str  # e.g. "policy 630000/390 funds since 2021-01-01"
    assisted: bool  # 医疗救助对象 on the visit date
    account_opening: int | None  # 个人账户 opening balance of the visit's year; None: no account
    use_account: bool  # acct_used_flag


class FundPayment(NamedTuple):
    """One setldetail row: what one fund worked on and paid."""

    fund_type: str  # fund_pay_type
    name: str  # fund_pay_type_name
    base: int  # inscp_scp_amt: the amount the fund's rule applied to
    limit: int  # crt_payb_lmt_amt 本次可支付限额: the most it could pay this time (cap left)
    paid: int  # fund_payamt
    detail: str  # setl_proc_info: the arithmetic, as the trace says it


class FundFigures(NamedTuple):
    insurance_type: InsuranceType  # which fund serious_pays is: hifmi_pay (390) or hifob_pay (310)
    pooled: int  # hifp_pay: the basic pooled fund
    serious_threshold_applied: int  # 大病/大额 起付线 met by this visit
    serious_pays: int  # hifmi_pay (residents) or hifob_pay (employees)
    assistance_pays: int  # maf_pay
    fund_pay_sum: int  # fund_pay_sumamt: every fund, the pooled one included
    patient_part: int  # psn_part_amt = total − fund_pay_sumamt
    account_pays: int  # acct_pay
    cash_pays: int  # psn_cash_pay
    account_balance: int | None  # balc after this settlement; None: no personal account
    payments: tuple[FundPayment, ...]  # setldetail: the funds that apply, the pooled one first


def fund_input(policy: RegionPolicy, person: Person, day: date, use_account: bool) -> FundInput:
    """The insured region's fund terms for the person's insurance type on `day`, and the person's
    assistance and account, as compute_funds needs them."""
    insurance_type = person.insurance_type
    dated = policy.funds.get(insurance_type)
    found = dated.on(day) if dated is not None else None
    since, terms = found if found else (None, None)
    key = ("funds", insurance_type, since)
    source = policy.sources.get(key)
    if source is None:
        words = f" since {since}" if found else ": none in force"
        source = policy.sources[key] = f"policy {policy.region}/{insurance_type} funds{words}"
    return new_tuple(FundInput, (
        insurance_type, terms, source, person.assisted_on(day), person.account_opening(day.year), use_account
    ))  # fmt: skip


def terms_source(policy: RegionPolicy, insurance_type: InsuranceType, disease: str, since: date) -> str:
    """Where the deductible, ratio and cap come from, as the trace says it (made once per term)."""
    key = ("terms", insurance_type, disease, since)
    source = policy.sources.get(key)
    if source is None:
        source = policy.sources[key] = f"policy {policy.region}/{insurance_type}/{disease} since {since}"
    return source


def pooled_payment(
    insurance_type: InsuranceType, in_scope: int, pooled: int, cap_left_before: int | None, detail: str
) -> FundPayment:
    fund_type, name = POOLED[insurance_type]
    limit = pooled if cap_left_before is None else cap_left_before
    return new_tuple(FundPayment, (fund_type, name, in_scope, limit, pooled, detail))


def _cap_left(annual_cap: int | None, paid: int, uncapped: int) -> int:
    """crt_payb_lmt_amt: the cap left this year before the visit, or, uncapped, what the
    rule gives."""
    return uncapped if annual_cap is None else max(0, annual_cap - paid)


def compute_funds(
    total: int,
    in_scope: int,
    pooled: FundPayment,
    given: FundInput,
    totals: YearlyTotals,
    deductible_applied: int,
) -> tuple[FundFigures, list[TraceEntry], YearlyTotals]:
    """The funds after the pooled one and the personal account, with their trace and the
    yearly counters the visit leaves: the pooled fund's (its deductible met and `pooled`'s
    payment added to the year's `totals`) and the funds'."""
    share = in_scope - pooled.paid  # 合规自付: what the patient bears of the in-scope cost
    trace: list[TraceEntry] = []
    payments = [pooled]  # setldetail: the funds that pay, the pooled one first
    fund_terms = given.terms
    serious_threshold_applied = serious_pays = assistance_pays = 0
    if fund_terms is not None:
        if fund_terms.serious_illness is not None:
            serious_threshold_applied, serious_pays, entry, row = _serious_illness(
                fund_terms.serious_illness, share, pooled.paid, in_scope, given, totals
            )
            trace.append(entry)
            if row is not None:
                payments.append(row)
        if fund_terms.assistance is not None:
            assistance_pays, entry, row = _assistance(fund_terms.assistance, share - serious_pays, given, totals)
            trace.append(entry)
            if row is not None:
                payments.append(row)

    fund_pay_sum = pooled.paid + serious_pays + assistance_pays
    patient_part = total - fund_pay_sum
    trace.append(
        new_tuple(TraceEntry, (
            "fund_pays_fen",
            "sum_of_funds",
            given.source,
            f"pooled {fen(pooled.paid)} + serious illness {fen(serious_pays)} + assistance "
            f"{fen(assistance_pays)} = {fen(fund_pay_sum)}; patient part {fen(total)} − "
            f"{fen(fund_pay_sum)} = {fen(patient_part)}",
        ))
    )  # fmt: skip
    account_pays, balance, account_trace = pay_from_account(patient_part, given, totals.account_paid_year)
    trace.append(account_trace)
    figures = new_tuple(FundFigures, (  # every field, in order: a named tuple made per settle
        given.insurance_type, pooled.paid, serious_threshold_applied, serious_pays, assistance_pays, fund_pay_sum,
        patient_part, account_pays, patient_part - account_pays, balance, tuple(payments),
    ))  # fmt: skip
    after = YearlyTotals(  # deductible used, fund paid, serious threshold used, serious paid, ...
        totals.deductible_used + deductible_applied,
        totals.fund_paid + pooled.paid,
        totals.serious_threshold_used + serious_threshold_applied,
        totals.serious_paid + serious_pays,
        totals.assistance_paid + assistance_pays,
        totals.account_paid + account_pays,
        totals.account_paid_year + account_pays,
    )
    return figures, trace, after


def _serious_illness(
    serious: SeriousIllnessTerms, share: int, pooled: int, in_scope: int, given: FundInput, totals: YearlyTotals
) -> tuple[int, int, TraceEntry, FundPayment | None]:
    """大病保险 / 大额医疗补助: (threshold applied, pays, trace, setldetail row when it pays)."""
    applied = apply_deductible(share, serious.threshold, totals.serious_threshold_used)
    before_cap = apply_ratio(share - applied, serious.ratio_bp)
    pays, _ = cap_fund_payment(before_cap, serious.annual_cap, totals.serious_paid)
    detail = (
        f"in-scope share {fen(in_scope)} − pooled {fen(pooled)} = {fen(share)}; threshold "
        f"min({fen(share)}, {fen(serious.threshold)} − used {fen(totals.serious_threshold_used)}) = {fen(applied)}; "
        f"round(({fen(share)} − {fen(applied)}) × {percent(serious.ratio_bp)}) = {fen(before_cap)}"
    )
    if serious.annual_cap is not None:
        cap, paid = fen(serious.annual_cap), fen(totals.serious_paid)
        detail += f"; min({fen(before_cap)}, cap {cap} − paid {paid}) = {fen(pays)}"
    fund_type, name = SERIOUS[given.insurance_type]
    figure = "serious_illness_fen" if given.insurance_type is InsuranceType.RESIDENT else "large_amount_fen"
    limit = _cap_left(serious.annual_cap, totals.serious_paid, before_cap)
    row = new_tuple(FundPayment, (fund_type, name, share, limit, pays, detail)) if pays else None
    return applied, pays, new_tuple(TraceEntry, (figure, "serious_illness_fund", given.source, detail)), row


def _assistance(
    assistance: AssistanceTerms, left: int, given: FundInput, totals: YearlyTotals
) -> tuple[int, TraceEntry, FundPayment | None]:
    """医疗救助 for an assisted person, of the share the funds above left: (pays, trace, row)."""
    if not given.assisted:
        why = "not an assisted person on the visit date: 0.00"
        return 0, new_tuple(TraceEntry, ("medical_assistance_fen", "medical_assistance", given.source, why)), None
    before_cap = apply_ratio(left, assistance.ratio_bp)
    pays, _ = cap_fund_payment(before_cap, assistance.annual_cap, totals.assistance_paid)
    ratio = percent(assistance.ratio_bp)
    detail = f"assisted person; share left {fen(left)}; round({fen(left)} × {ratio}) = {fen(before_cap)}"
    if assistance.annual_cap is not None:
        cap, paid = fen(assistance.annual_cap), fen(totals.assistance_paid)
        detail += f"; min({fen(before_cap)}, cap {cap} − paid {paid}) = {fen(pays)}"
    limit = _cap_left(assistance.annual_cap, totals.assistance_paid, before_cap)
    row = new_tuple(FundPayment, (*ASSISTANCE, left, limit, pays, detail)) if pays else None
    return pays, new_tuple(TraceEntry, ("medical_assistance_fen", "medical_assistance", given.source, detail)), row


_NO_ACCOUNT = TraceEntry(
    "account_pays_fen", "personal_account", "person",
    "no personal account for the visit's year (residents have none): 0.00",
)  # fmt: skip


def pay_from_account(
    patient_part: int, given: FundInput, paid_this_year: int
) -> tuple[int, int | None, TraceEntry]:
    """个人账户: (acct_pay, balc after, its trace). The account pays the patient's part first,
    at most the balance left this year; without an account or the HIS's flag it pays 0."""
    if given.account_opening is None:
        return 0, None, _NO_ACCOUNT
    balance = max(0, given.account_opening - paid_this_year)
    where = "person's account opening balance"
    if not given.use_account:
        why = f"acct_used_flag is not 1: 0.00; balance stays {fen(balance)}"
        return 0, balance, new_tuple(TraceEntry, ("account_pays_fen", "personal_account", where, why))
    paid = min(patient_part, balance)
    why = (
        f"balance {fen(given.account_opening)} − paid this year {fen(paid_this_year)} = {fen(balance)}; "
        f"min(patient part {fen(patient_part)}, {fen(balance)}) = {fen(paid)}; balance after {fen(balance - paid)}"
    )
    return paid, balance - paid, new_tuple(TraceEntry, ("account_pays_fen", "personal_account", where, why))


def compute_visit(
    lines: Sequence[FeeLine],
    catalog: Catalog,
    terms: DiseaseTerms,
    terms_source: str,
    totals: YearlyTotals,
    day: date,
    given: FundInput,
) -> SettlementResult:
    """结算 with every fund: the pooled fund (compute_settlement), then the funds above it and
    the personal account. `figures.fund_pays` is then every fund (fund_pay_sumamt; the pooled
    fund alone is `funds.pooled`) and `figures.patient_pays` psn_part_amt (total − every fund)."""
    f, items, trace, pooled_detail = pooled_fund(lines, catalog, terms, terms_source, totals, day)
    cap_left = None if terms.annual_cap is None else max(0, terms.annual_cap - totals.fund_paid)
    pooled = pooled_payment(given.insurance_type, f.in_scope, f.fund_pays, cap_left, pooled_detail)
    funds, fund_trace, after = compute_funds(f.total, f.in_scope, pooled, given, totals, f.deductible_applied)
    figures = new_tuple(Figures, (  # the pooled fund's figures with every fund's sum and the patient's part
        f.total, f.full_self_pay, f.over_ceiling, f.pre_self_pay, f.in_scope, f.deductible_applied,
        funds.fund_pay_sum, f.ratio_bp, funds.patient_part, f.cap_remaining, f.deductible_remaining,
    ))  # fmt: skip
    trace += fund_trace
    return new_tuple(SettlementResult, (figures, items, tuple(trace), after, funds))
