"""The settlement computation (what SettleVisit computes), in the order and
rounding of docs/domain.md: "就医地目录，参保地政策" — the treatment region's catalog
decides what is covered, the insured region's policy decides how much the fund
pays. All money is integer fen; rounding is half up to the fen, per item for the
class-B share and once per visit for the ratio."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, NamedTuple

from settlesim.server.model import (
    BASIS_POINTS,
    Catalog,
    CatalogClass,
    CatalogTerms,
    DiseaseTerms,
    FeeLine,
    TraceEntry,
    YearlyTotals,
)

if TYPE_CHECKING:
    from settlesim.server.rules.funds import FundFigures


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def share_of(amount_fen: int, share_bp: int) -> int:
    """round(amount × share) half up to the fen."""
    return round_half_up(amount_fen * share_bp, BASIS_POINTS)


_FEN: dict[int, str] = {}  # fen's answers: deductibles, caps, 0 and common prices recur
_FEN_KEPT = 100_000  # at most this many (~14 MB): past it, amounts are formatted each time


def fen(amount: int) -> str:
    """A fen amount as yuan for people, e.g. 17963 -> '179.63'."""
    # A settle's trace writes 25-35 of these: remembered, each made once.
    text = _FEN.get(amount)
    if text is None:
        yuan, cents = divmod(amount, 100) if amount >= 0 else divmod(-amount, 100)
        text = f"{yuan}.{cents:02d}" if amount >= 0 else f"-{yuan}.{cents:02d}"
        if len(_FEN) < _FEN_KEPT:
            _FEN[amount] = text
    return text


_PERCENT: dict[int, str] = {}  # basis points as the trace says them: the world's few ratios


def percent(bp: int) -> str:
    """Basis points as a percentage for people, e.g. 7500 -> '75%', 1250 -> '12.5%'."""
    text = _PERCENT.get(bp)
    if text is None:
        text = f"{bp / 100:g}%"
        if len(_PERCENT) < _FEN_KEPT:
            _PERCENT[bp] = text
    return text


class ItemResult(NamedTuple):
    """One fee line split into full self-pay, over-ceiling, B pre-self-pay and
    in-scope; the four add up to `amount`. (The results of a settle are named tuples: made
    for every settle, and a tuple is made in one step where a frozen dataclass sets each
    field by a call.)"""

    sequence_no: str
    catalog_code: str
    catalog_class: CatalogClass
    b_share_bp: int
    price_ceiling: int | None
    amount: int
    full_self_pay: int  # 全自费 fulamt_ownpay_amt
    over_ceiling: int  # 超限价自费 overlmt_selfpay
    pre_self_pay: int  # 先行自付 preselfpay_amt
    in_scope: int  # 符合政策范围 inscp_scp_amt


class Figures(NamedTuple):
    """The visit's totals (2207 setlinfo)."""

    total: int  # medfee_sumamt
    full_self_pay: int
    over_ceiling: int
    pre_self_pay: int
    in_scope: int
    deductible_applied: int  # act_pay_dedc 实际支付起付线
    fund_pays: int  # hifp_pay 统筹基金支出
    ratio_bp: int  # 报销比例
    patient_pays: int  # psn_part_amt 个人负担
    cap_remaining: int | None  # 年度限额剩余
    deductible_remaining: int


class SettlementResult(NamedTuple):
    figures: Figures
    items: tuple[ItemResult, ...]
    trace: tuple[TraceEntry, ...]
    totals_after: YearlyTotals  # the running totals once this settlement commits
    # The funds after the pooled one and the personal account (rules/funds.py); None: the
    # pooled fund alone was computed.
    funds: FundFigures | None = None


def classify_item(line: FeeLine, catalog: Catalog, day: date) -> tuple[CatalogTerms | None, date | None]:
    """Rule 1 (就医地目录): the catalog terms in force for the item, or None when
    the item is not listed on that day."""
    item = catalog.items.get(line.catalog_code)
    found = item.terms.on(day) if item else None
    if found is None:
        return None, None
    since, terms = found
    return terms, since


def price_item(line: FeeLine, catalog: Catalog, day: date) -> tuple[ItemResult, TraceEntry]:
    """Rules 1-4 for one fee line: full self-pay, over-ceiling self-pay,
    B-class pre-self-pay (先行自付), in scope (符合范围)."""
    amount = line.amount
    terms, since = classify_item(line, catalog, day)
    where = f"catalog {catalog.region} item {line.catalog_code}"
    if terms is None or terms.catalog_class is CatalogClass.C:
        klass = CatalogClass.NOT_LISTED if terms is None else CatalogClass.C
        result = ItemResult(
            line.sequence_no,
            line.catalog_code,
            klass,
            0,
            terms.price_ceiling if terms else None,
            amount,
            amount,
            0,
            0,
            0,
        )
        why = "not listed on " + str(day) if terms is None else f"class C since {since}"
        return result, TraceEntry(
            f"items[{line.sequence_no}]", "full_self_pay", where, f"{why}: full self-pay {fen(amount)}"
        )
    over = split_over_ceiling(line, terms.price_ceiling)
    remaining = amount - over
    pre = apply_b_share(remaining, terms) if terms.catalog_class is CatalogClass.B else 0
    result = ItemResult(
        line.sequence_no,
        line.catalog_code,
        terms.catalog_class,
        terms.b_share_bp if terms.catalog_class is CatalogClass.B else 0,
        terms.price_ceiling,
        amount,
        0,
        over,
        pre,
        remaining - pre,
    )
    detail = f"class {terms.catalog_class} since {since}; amount {fen(amount)}"
    if over:
        ceiling = fen(terms.price_ceiling or 0)
        detail += f"; over ceiling ({fen(line.unit_price)}-{ceiling})×{line.quantity}={fen(over)}"
    if pre:
        detail += f"; B share {percent(terms.b_share_bp)} of {fen(remaining)} = {fen(pre)}"
    detail += f"; in scope {fen(result.in_scope)}"
    return result, TraceEntry(f"items[{line.sequence_no}]", "price_item", f"{where} since {since}", detail)


def split_over_ceiling(line: FeeLine, price_ceiling: int | None) -> int:
    """Rule 2 (限价): (price − ceiling) × quantity is the patient's."""
    if price_ceiling is None or line.unit_price <= price_ceiling:
        return 0
    return (line.unit_price - price_ceiling) * line.quantity


def apply_b_share(remaining: int, terms: CatalogTerms) -> int:
    """Rule 3 (乙类先行自付): round(remaining × B share), half up."""
    return share_of(remaining, terms.b_share_bp)


def apply_deductible(in_scope: int, deductible: int, already_used: int) -> int:
    """Rule 5 (起付线): min(in scope, deductible − deductible used this year)."""
    return max(0, min(in_scope, deductible - already_used))


def apply_ratio(payable: int, ratio_bp: int) -> int:
    """Rule 6a (报销比例): round(payable × ratio), half up, once per visit."""
    return share_of(payable, ratio_bp)


def cap_fund_payment(fund: int, annual_cap: int | None, fund_paid: int) -> tuple[int, int | None]:
    """Rule 6b (年度限额): the fund pays at most the cap left this year.
    Returns (fund pays, cap remaining after it)."""
    if annual_cap is None:
        return fund, None
    left = max(0, annual_cap - fund_paid)
    paid = min(fund, left)
    return paid, left - paid


def compute_settlement(
    lines: Sequence[FeeLine],
    catalog: Catalog,
    terms: DiseaseTerms,
    terms_source: str,
    totals: YearlyTotals,
    day: date,
) -> SettlementResult:
    """结算: price every line with the treatment region's catalog, then apply the
    insured region's deductible, ratio and cap against this year's totals."""
    figures, items, trace, _ = pooled_fund(lines, catalog, terms, terms_source, totals, day)
    after = YearlyTotals(  # the funds' counters (rules/funds.py) pass through unchanged
        totals.deductible_used + figures.deductible_applied,
        totals.fund_paid + figures.fund_pays,
        totals.serious_threshold_used,
        totals.serious_paid,
        totals.assistance_paid,
        totals.account_paid,
        totals.account_paid_year,
    )
    return SettlementResult(figures, items, tuple(trace), after)


def pooled_fund(
    lines: Sequence[FeeLine],
    catalog: Catalog,
    terms: DiseaseTerms,
    terms_source: str,
    totals: YearlyTotals,
    day: date,
) -> tuple[Figures, tuple[ItemResult, ...], list[TraceEntry], str]:
    """compute_settlement's work: the figures with the pooled fund alone, the items, the trace
    and the pooled fund's arithmetic as its setldetail row says it (its trace entries' details)."""
    items_: list[ItemResult] = []
    trace: list[TraceEntry] = []
    total = full_self_pay = over_ceiling = pre_self_pay = in_scope = 0
    for line in lines:  # one pass: price each line and add up its parts
        item, entry = price_item(line, catalog, day)
        items_.append(item)
        trace.append(entry)
        total += item.amount
        full_self_pay += item.full_self_pay
        over_ceiling += item.over_ceiling
        pre_self_pay += item.pre_self_pay
        in_scope += item.in_scope
    items = tuple(items_)
    deductible_applied = apply_deductible(in_scope, terms.deductible, totals.deductible_used)
    deductible_detail = (
        f"min(in scope {fen(in_scope)}, deductible {fen(terms.deductible)} − used "
        f"{fen(totals.deductible_used)}) = {fen(deductible_applied)}"
    )
    trace.append(TraceEntry("deductible_applied_fen", "apply_deductible", terms_source, deductible_detail))
    before_cap = apply_ratio(in_scope - deductible_applied, terms.ratio_bp)
    ratio_detail = (
        f"round(({fen(in_scope)} − {fen(deductible_applied)}) × {percent(terms.ratio_bp)}) = {fen(before_cap)}"
    )
    trace.append(TraceEntry("fund_pays_fen", "apply_ratio", terms_source, ratio_detail))
    pooled_detail = f"{deductible_detail}; {ratio_detail}"
    fund_pays, cap_remaining = cap_fund_payment(before_cap, terms.annual_cap, totals.fund_paid)
    if terms.annual_cap is not None:
        cap_detail = (
            f"min({fen(before_cap)}, cap {fen(terms.annual_cap)} − paid {fen(totals.fund_paid)}) "
            f"= {fen(fund_pays)}; cap left {fen(cap_remaining or 0)}"
        )
        trace.append(TraceEntry("fund_pays_fen", "cap_fund_payment", terms_source, cap_detail))
        pooled_detail = f"{pooled_detail}; {cap_detail}"
    figures = Figures(
        total=total,
        full_self_pay=full_self_pay,
        over_ceiling=over_ceiling,
        pre_self_pay=pre_self_pay,
        in_scope=in_scope,
        deductible_applied=deductible_applied,
        fund_pays=fund_pays,
        ratio_bp=terms.ratio_bp,
        patient_pays=total - fund_pays,
        cap_remaining=cap_remaining,
        deductible_remaining=max(0, terms.deductible - totals.deductible_used - deductible_applied),
    )
    return figures, items, trace, pooled_detail
