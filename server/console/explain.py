"""“Why this amount”: a settlement's rule trace told as a billing clerk reads
it — each fee line's class and split, then the deductible (起付线), the
reimbursement ratio (报销比例) and the annual cap (年度限额), each with the
policy or catalog entry and the date it took effect.

Pure: a Settlement answer and the world in, plain data out. The figures are
the answer's own; the world supplies only the terms that were in force (the
same lookup the rules made: the insured region's policy, the treatment
region's catalog, on the visit date)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from settlesim.server.model import CatalogClass, InsuranceType, World
from settlesim.server.rules.settlement import apply_ratio, fen
from settlesim.v1 import settlement_service_pb2 as pb

CLASS_NAMES = {
    CatalogClass.A: "甲类 class A",
    CatalogClass.B: "乙类 class B",
    CatalogClass.C: "丙类 class C",
    CatalogClass.NOT_LISTED: "not on the catalog",
}
_PB_CLASS = {
    pb.CATALOG_CLASS_A: CatalogClass.A,
    pb.CATALOG_CLASS_B: CatalogClass.B,
    pb.CATALOG_CLASS_C: CatalogClass.C,
    pb.CATALOG_CLASS_NOT_LISTED: CatalogClass.NOT_LISTED,
}


yuan = fen  # 17963 -> '179.63', as the rules' own trace writes money


@dataclass(frozen=True)
class Link:
    text: str
    href: str


@dataclass(frozen=True)
class Step:
    """One sentence of the explanation, the figure it gives and its source."""

    title: str
    text: str
    figure: str = ""
    source: Link | None = None


@dataclass
class Line:
    sequence_no: str
    catalog_code: str
    name: str
    amount: str
    catalog_class: str
    full_self_pay: str
    over_ceiling: str
    pre_self_pay: str
    in_scope: str
    why: str
    source: Link | None = None


@dataclass
class Explanation:
    lines: list[Line] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


def policy_href(region: str, insurance_type: str, disease: str) -> str:
    return f"/world/policies/{region}#terms-{insurance_type}-{disease}"


def catalog_href(region: str, code: str) -> str:
    return f"/world/catalogs/{region}?code={code}#item-{code}"


def explain(s: pb.Settlement, world: World) -> Explanation:
    out = Explanation()
    day = date.fromisoformat(s.visit_date)
    t = s.totals
    catalog = world.catalog_for(s.treatment_region)
    for item in s.items:
        klass = _PB_CLASS.get(item.catalog_class, CatalogClass.NOT_LISTED)
        entry = catalog.items.get(item.catalog_code) if catalog else None
        dated = entry.terms.on(day) if entry else None
        source = None
        if catalog is not None and dated is not None:
            source = Link(
                f"catalog {catalog.region} · {item.catalog_code} since {dated[0]}",
                catalog_href(catalog.region, item.catalog_code),
            )
        out.lines.append(
            Line(
                item.sequence_no, item.catalog_code, entry.name if entry else "", yuan(item.amount_fen),
                CLASS_NAMES[klass], yuan(item.full_self_pay_fen), yuan(item.over_ceiling_self_pay_fen),
                yuan(item.pre_self_pay_fen), yuan(item.in_scope_fen), _line_why(item, klass), source,
            )
        )  # fmt: skip

    for entry in s.trace:
        if entry.rule == "check_registration":
            out.steps.append(
                Step(
                    "Registration (跨省异地就医备案)",
                    f"The patient may settle here: {entry.detail} ({entry.source}).",
                )
            )
    out.steps.append(
        Step(
            "Fee lines (费用明细)",
            f"The visit's fee lines add up to {yuan(t.total_fen)} yuan. Of that, {yuan(t.full_self_pay_fen)} is "
            f"full self-pay (丙类 or not listed), {yuan(t.over_ceiling_self_pay_fen)} is above price ceilings "
            f"(超限价), {yuan(t.pre_self_pay_fen)} is the patient's first share of 乙类 items (先行自付); "
            f"the remaining {yuan(t.in_scope_fen)} is within the policy's scope (政策范围内).",
            yuan(t.in_scope_fen),
        )
    )
    policy = world.policy_for(s.insured_region)
    insurance = InsuranceType(str(s.insurance_type)) if s.insurance_type else None
    terms = None
    source = None
    if policy is not None and insurance is not None and (insurance, s.disease_code) in policy.terms:
        dated_terms = policy.terms[(insurance, s.disease_code)].on(day)
        if dated_terms is not None:
            since, terms = dated_terms
            source = Link(
                f"policy {policy.region} · {insurance.value}/{s.disease_code} since {since}",
                policy_href(policy.region, insurance.value, s.disease_code),
            )
    if terms is not None:
        used_before = terms.deductible - t.deductible_remaining_fen - t.deductible_applied_fen
        out.steps.append(
            Step(
                "Deductible (起付线)",
                f"The year's deductible is {yuan(terms.deductible)}; {yuan(used_before)} of it was already used "
                f"this year, so the patient pays the next {yuan(t.deductible_applied_fen)} of the in-scope "
                f"amount ({yuan(t.deductible_remaining_fen)} of the deductible is left for later visits).",
                yuan(t.deductible_applied_fen),
                source,
            )
        )
        payable = t.in_scope_fen - t.deductible_applied_fen
        before_cap = apply_ratio(payable, terms.ratio_bp)
        out.steps.append(
            Step(
                "Reimbursement ratio (报销比例)",
                f"The fund pays {terms.ratio_bp / 100:g}% of what is left above the deductible: "
                f"{terms.ratio_bp / 100:g}% of {yuan(payable)} = {yuan(before_cap)}.",
                yuan(before_cap),
                source,
            )
        )
        if terms.annual_cap is not None and t.HasField("cap_remaining_fen"):
            paid_before = terms.annual_cap - t.cap_remaining_fen - t.fund_pays_fen
            limited = (
                "" if t.fund_pays_fen == before_cap else f", so the fund pays only {yuan(t.fund_pays_fen)}"
            )
            out.steps.append(
                Step(
                    "Annual cap (年度限额)",
                    f"The fund pays at most {yuan(terms.annual_cap)} a year for this disease; "
                    f"{yuan(paid_before)} was paid before this visit, so {yuan(terms.annual_cap - paid_before)} "
                    f"was left{limited}. Cap left after this visit: {yuan(t.cap_remaining_fen)}.",
                    yuan(t.fund_pays_fen),
                    source,
                )
            )
    out.steps.append(
        Step(
            "Fund pays (统筹基金支付)",
            f"The fund pays {yuan(t.fund_pays_fen)} yuan.",
            yuan(t.fund_pays_fen),
        )
    )
    out.steps.append(
        Step(
            "Patient pays (个人负担)",
            f"The patient pays the rest: {yuan(t.total_fen)} − {yuan(t.fund_pays_fen)} = {yuan(t.patient_pays_fen)} "
            "yuan.",
            yuan(t.patient_pays_fen),
        )
    )
    return out


def _line_why(item: pb.SettledItem, klass: CatalogClass) -> str:
    if klass in (CatalogClass.C, CatalogClass.NOT_LISTED):
        return f"{CLASS_NAMES[klass]}: the patient pays all {yuan(item.amount_fen)}"
    parts = [f"{CLASS_NAMES[klass]}"]
    if item.over_ceiling_self_pay_fen:
        ceiling = yuan(item.price_ceiling_fen) if item.HasField("price_ceiling_fen") else "?"
        parts.append(
            f"price above the ceiling {ceiling}: {yuan(item.over_ceiling_self_pay_fen)} is the patient's"
        )
    if item.pre_self_pay_fen:
        parts.append(
            f"乙类 first share {item.self_pay_share_bp / 100:g}%: {yuan(item.pre_self_pay_fen)} is the patient's"
        )
    parts.append(f"{yuan(item.in_scope_fen)} in scope")
    return "; ".join(parts)
