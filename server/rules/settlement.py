"""The settlement computation (what SettleVisit computes), in the order and
rounding of docs/domain.md: "就医地目录，参保地政策" — the treatment region's catalog
decides what is covered, the insured region's policy decides how much the fund
pays. All money is integer fen; rounding is half up to the fen, per item for the
class-B share and once per visit for the ratio."""

from __future__ import annotations

from bisect import bisect_right
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
    new_tuple,
)
from settlesim.server.rules.words import fen, percent

if TYPE_CHECKING:
    from settlesim.server.rules.funds import FundFigures


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def share_of(amount_fen: int, share_bp: int) -> int:
    """round(amount × share) half up to the fen (round_half_up over BASIS_POINTS, in one step)."""
    return (2 * amount_fen * share_bp + BASIS_POINTS) // (2 * BASIS_POINTS)


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
    words = item_words(catalog, line.catalog_code, day)
    if words is None:
        return None, None
    return words.terms, words.since


REMEMBERED_ITEMS = 1_000_000  # Catalog.words: a catalog's items whose words are kept, at most


class ItemWords(NamedTuple):
    """One version of a catalog item as its trace entry says it: made once per catalog and
    version (Catalog.words), not for every fee line that names the item."""

    terms: CatalogTerms
    since: date
    source: str  # "catalog 110000 item X since 2021-01-01"; class C: "catalog 110000 item X"
    head: str  # "class B since 2021-01-01; amount "; class C: "class C since 2021-01-01: full self-pay "
    ceiling: str  # "-81.00)×": the ceiling in "over ceiling (price-ceiling)×quantity"
    b_share: str  # "; B share 30% of "


def item_words(catalog: Catalog, code: str, day: date) -> ItemWords | None:
    """The words of the catalog item's version in force on `day`, or None when the item is not
    listed that day. Only the catalog's own codes are remembered (at most REMEMBERED_ITEMS)."""
    remembered = catalog.words.get(code)
    if remembered is None:
        item = catalog.items.get(code)
        if item is None:
            return None
        remembered = item.terms.starts, tuple(
            None if terms is None else _words(catalog.region, code, since, terms)
            for since, terms in zip(item.terms.starts, item.terms.values, strict=True)
        )
        if len(catalog.words) < REMEMBERED_ITEMS:
            catalog.words[code] = remembered
    starts, versions = remembered
    i = bisect_right(starts, day) - 1
    return versions[i] if i >= 0 else None


def _words(region: str, code: str, since: date, terms: CatalogTerms) -> ItemWords:
    where = f"catalog {region} item {code}"
    if terms.catalog_class is CatalogClass.C:
        return ItemWords(terms, since, where, f"class C since {since}: full self-pay ", "", "")
    ceiling = f"-{fen(terms.price_ceiling or 0)})×"
    b_share = f"; B share {percent(terms.b_share_bp)} of "
    return ItemWords(terms, since, f"{where} since {since}", f"class {terms.catalog_class} since {since}; amount ",
                     ceiling, b_share)  # fmt: skip


def price_item(line: FeeLine, catalog: Catalog, day: date) -> tuple[ItemResult, TraceEntry]:
    """Rules 1-4 for one fee line: full self-pay, over-ceiling self-pay,
    B-class pre-self-pay (先行自付), in scope (符合范围)."""
    sequence_no, code, unit_price, quantity = line.sequence_no, line.catalog_code, line.unit_price, line.quantity
    amount = unit_price * quantity
    words = item_words(catalog, code, day)
    if words is None:
        result = new_tuple(ItemResult, (sequence_no, code, CatalogClass.NOT_LISTED, 0, None, amount, amount, 0, 0, 0))
        detail = f"not listed on {day}: full self-pay {fen(amount)}"
        return result, new_tuple(TraceEntry, (f"items[{sequence_no}]", "full_self_pay",
                                              f"catalog {catalog.region} item {code}", detail))  # fmt: skip
    terms = words.terms
    klass, ceiling = terms.catalog_class, terms.price_ceiling
    if klass is CatalogClass.C:
        result = new_tuple(ItemResult, (sequence_no, code, klass, 0, ceiling, amount, amount, 0, 0, 0))
        return result, new_tuple(TraceEntry, (f"items[{sequence_no}]", "full_self_pay", words.source,
                                              words.head + fen(amount)))  # fmt: skip
    # rule 2 (限价): (price − ceiling) × quantity is the patient's
    over = 0 if ceiling is None or unit_price <= ceiling else (unit_price - ceiling) * quantity
    remaining = amount - over
    if klass is CatalogClass.B:
        b_share_bp = terms.b_share_bp
        pre = share_of(remaining, b_share_bp)  # rule 3 (乙类先行自付), apply_b_share
    else:
        b_share_bp = pre = 0
    in_scope = remaining - pre
    result = new_tuple(ItemResult, (sequence_no, code, klass, b_share_bp, ceiling, amount, 0, over, pre, in_scope))
    detail = words.head + fen(amount)
    if over:
        detail += f"; over ceiling ({fen(unit_price)}{words.ceiling}{quantity}={fen(over)}"
    if pre:
        detail += f"{words.b_share}{fen(remaining)} = {fen(pre)}"
    detail = f"{detail}; in scope {fen(in_scope)}"
    return result, new_tuple(TraceEntry, (f"items[{sequence_no}]", "price_item", words.source, detail))


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
        _, _, _, _, _, amount, item_full_self_pay, item_over_ceiling, item_pre_self_pay, item_in_scope = item
        total += amount
        full_self_pay += item_full_self_pay
        over_ceiling += item_over_ceiling
        pre_self_pay += item_pre_self_pay
        in_scope += item_in_scope
    items = tuple(items_)
    deductible, annual_cap = terms.deductible, terms.annual_cap
    used, fund_paid = totals.deductible_used, totals.fund_paid
    deductible_applied = apply_deductible(in_scope, deductible, used)
    before_cap = apply_ratio(in_scope - deductible_applied, terms.ratio_bp)
    fund_pays, cap_remaining = cap_fund_payment(before_cap, annual_cap, fund_paid)
    in_scope_text, applied_text, before_cap_text = fen(in_scope), fen(deductible_applied), fen(before_cap)
    deductible_detail = (
        f"min(in scope {in_scope_text}, deductible {fen(deductible)} − used {fen(used)}) = {applied_text}"
    )
    ratio_detail = f"round(({in_scope_text} − {applied_text}) × {percent(terms.ratio_bp)}) = {before_cap_text}"
    trace.append(new_tuple(TraceEntry, ("deductible_applied_fen", "apply_deductible", terms_source, deductible_detail)))
    trace.append(new_tuple(TraceEntry, ("fund_pays_fen", "apply_ratio", terms_source, ratio_detail)))
    if annual_cap is None:
        pooled_detail = f"{deductible_detail}; {ratio_detail}"
    else:
        cap_detail = (
            f"min({before_cap_text}, cap {fen(annual_cap)} − paid {fen(fund_paid)}) "
            f"= {fen(fund_pays)}; cap left {fen(cap_remaining or 0)}"
        )
        trace.append(new_tuple(TraceEntry, ("fund_pays_fen", "cap_fund_payment", terms_source, cap_detail)))
        pooled_detail = f"{deductible_detail}; {ratio_detail}; {cap_detail}"
    figures = new_tuple(Figures, (  # every field, in order: a named tuple made per settle
        total, full_self_pay, over_ceiling, pre_self_pay, in_scope, deductible_applied, fund_pays, terms.ratio_bp,
        total - fund_pays, cap_remaining, max(0, deductible - used - deductible_applied),
    ))  # fmt: skip
    return figures, items, trace, pooled_detail
