"""Unit tests of the funds after the pooled one and the personal account (server/rules/funds.py)
over the bundled world. Every expected figure is derived by hand in the comment next to it.

Policy facts used (server/worlds/default/policies, ILLUSTRATIVE):
Beijing 110000, 310, M00503: deductible 0, ratio 90%, no cap; funds 310: large_amount threshold
2_000_000, 85%, cap 30_000_000.
Qinghai 630000, 390, M00503: deductible 5000, 100%, cap 5_000_000; M03900: deductible 0, 60%,
cap 300_000; funds 390: serious_illness threshold 1_000_000, 60%, cap 40_000_000;
medical_assistance 70%, cap 5_000_000.
People: 11000000000000000006 Beijing employee in Sanya (H46020000001), account opening 100_000
in 2025; 63000000000000000011 Qinghai resident with hypertension, assisted from 2025-01-01;
63000000000000000001 the 2021 reference case.
Catalogs: Hainan 460000 A-TARGET-001 class A; Beijing 110000 A-CONSULT-001 class A.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from settlesim.server.model import FeeLine, FundTerms, SeriousIllnessTerms, VisitKey, World, YearlyTotals
from settlesim.server.rules.eligibility import check_registration
from settlesim.server.rules.funds import compute_visit, fund_input
from settlesim.server.rules.settlement import SettlementResult
from settlesim.server.world_loader import load_world

BEIJING_ACCOUNT = "11000000000000000006"
QINGHAI_ASSISTED = "63000000000000000011"
QINGHAI_REFERENCE = "63000000000000000001"
CLEAN = YearlyTotals()  # no settlement yet this year


@pytest.fixture(scope="module")
def world() -> World:
    return load_world()


def settle(
    world: World,
    person: str,
    institution: str,
    disease: str,
    day: date,
    lines: list[FeeLine],
    totals: YearlyTotals = CLEAN,
    *,
    use_account: bool = False,
    funds: FundTerms | None = None,
) -> SettlementResult:
    e = check_registration(world, VisitKey(institution, disease, day, person_no=person))
    assert e.eligible, e.message
    assert e.person and e.policy and e.terms and e.institution
    catalog = world.catalog_for(e.institution.region)
    assert catalog is not None
    given = fund_input(e.policy, e.person, day, use_account)
    if funds is not None:
        given = given._replace(terms=funds)
    return compute_visit(lines, catalog, e.terms, "policy", totals, day, given)


def big_sanya_visit(world: World, totals: YearlyTotals = CLEAN, **kw) -> SettlementResult:
    # 30 × 1,000,000 = 30,000,000 fen of class A: all in scope.
    lines = [FeeLine("1", "A-TARGET-001", 1_000_000, 30)]
    return settle(world, BEIJING_ACCOUNT, "H46020000001", "M00503", date(2025, 3, 1), lines, totals, **kw)


def test_large_amount_above_its_threshold_with_the_personal_account(world: World) -> None:
    r = big_sanya_visit(world, use_account=True)
    f, m = r.figures, r.funds
    assert m is not None
    # pooled: round(30,000,000 × 90%) = 27,000,000 (no cap); share 30,000,000 − 27,000,000 = 3,000,000
    assert m.pooled == 27_000_000
    # large amount: threshold min(3,000,000, 2,000,000 − 0) = 2,000,000;
    # round((3,000,000 − 2,000,000) × 85%) = 850,000 ≤ cap 30,000,000
    assert (m.serious_threshold_applied, m.serious_pays) == (2_000_000, 850_000)
    # every fund 27,000,000 + 850,000 = 27,850,000; patient part 30,000,000 − 27,850,000 = 2,150,000
    assert (m.fund_pay_sum, m.patient_part) == (27_850_000, 2_150_000)
    # the contract's fund_pays is every fund, so fund + patient is still the total
    assert (f.fund_pays, f.patient_pays, f.fund_pays + f.patient_pays) == (27_850_000, 2_150_000, f.total)
    # account: min(2,150,000, balance 100,000) = 100,000; cash 2,050,000; balance after 0
    assert (m.account_pays, m.cash_pays, m.account_balance) == (100_000, 2_050_000, 0)
    # setldetail: the pooled fund (uncapped: its limit is what it pays), then the large-amount
    # subsidy (its limit: the cap left, 30,000,000)
    assert [(p.fund_type, p.base, p.limit, p.paid) for p in m.payments] == [
        ("310100", 30_000_000, 27_000_000, 27_000_000),
        ("310300", 3_000_000, 30_000_000, 850_000),
    ]
    # the yearly counters it leaves
    after = r.totals_after
    assert (after.serious_threshold_used, after.serious_paid, after.account_paid, after.account_paid_year) == (
        2_000_000, 850_000, 100_000, 100_000,
    )  # fmt: skip
    assert {e.figure for e in r.trace} >= {"large_amount_fen", "fund_pays_fen", "account_pays_fen"}


def test_the_threshold_already_used_this_year_counts(world: World) -> None:
    # threshold used 1,500,000: applied min(3,000,000, 2,000,000 − 1,500,000) = 500,000;
    # round((3,000,000 − 500,000) × 85%) = 2,125,000
    m = big_sanya_visit(world, YearlyTotals(serious_threshold_used=1_500_000)).funds
    assert m is not None and (m.serious_threshold_applied, m.serious_pays) == (500_000, 2_125_000)


def test_the_serious_illness_cap_left_bounds_it(world: World) -> None:
    # paid 29,500,000 of the 30,000,000 cap: min(850,000, 500,000) = 500,000; limit 500,000
    m = big_sanya_visit(world, YearlyTotals(serious_paid=29_500_000)).funds
    assert m is not None and m.serious_pays == 500_000
    assert (m.payments[1].limit, m.payments[1].paid) == (500_000, 500_000)


def test_the_ratio_of_the_fund_is_the_policy_s(world: World) -> None:
    # the same visit with a 50% large-amount ratio: round(1,000,000 × 50%) = 500,000
    terms = FundTerms(serious_illness=SeriousIllnessTerms(2_000_000, 5000, 30_000_000))
    m = big_sanya_visit(world, funds=terms).funds
    assert m is not None and m.serious_pays == 500_000


def test_below_the_threshold_the_fund_pays_nothing_and_has_no_row(world: World) -> None:
    # 10 × 1,000,000 = 10,000,000: pooled 9,000,000; share 1,000,000 < threshold 2,000,000: all of it
    # meets the threshold, the fund pays round(0 × 85%) = 0 and setldetail has the pooled row alone
    lines = [FeeLine("1", "A-TARGET-001", 1_000_000, 10)]
    r = settle(world, BEIJING_ACCOUNT, "H46020000001", "M00503", date(2025, 3, 1), lines)
    m = r.funds
    assert m is not None
    assert (m.serious_threshold_applied, m.serious_pays, m.fund_pay_sum) == (1_000_000, 0, 9_000_000)
    assert [p.fund_type for p in m.payments] == ["310100"]


def test_the_account_pays_only_when_the_his_asks(world: World) -> None:
    # no acct_used_flag: acct 0, cash = patient part 2,150,000, balance stays 100,000
    m = big_sanya_visit(world, use_account=False).funds
    assert m is not None and (m.account_pays, m.cash_pays, m.account_balance) == (0, 2_150_000, 100_000)


def test_the_account_pays_at_most_the_balance_left_this_year(world: World) -> None:
    # paid 90,000 this year (any disease): balance 100,000 − 90,000 = 10,000 pays; 0 left
    m = big_sanya_visit(world, YearlyTotals(account_paid_year=90_000), use_account=True).funds
    assert m is not None and (m.account_pays, m.account_balance) == (10_000, 0)
    # a small visit: 1 × 50,000 -> pooled 45,000, share 5,000 (below the threshold), patient 5,000;
    # the account pays all 5,000 of it: balance 100,000 − 5,000 = 95,000, cash 0
    lines = [FeeLine("1", "A-TARGET-001", 50_000, 1)]
    r = settle(world, BEIJING_ACCOUNT, "H46020000001", "M00503", date(2025, 3, 1), lines, use_account=True)
    assert r.funds is not None and (r.funds.account_pays, r.funds.cash_pays, r.funds.account_balance) == (
        5_000, 0, 95_000,
    )  # fmt: skip


def test_no_account_for_a_year_without_an_opening_balance(world: World) -> None:
    # the person's account has openings for 2025 and 2026 only: in 2027 it pays nothing, balc absent
    lines = [FeeLine("1", "A-TARGET-001", 50_000, 1)]
    r = settle(world, BEIJING_ACCOUNT, "H46020000001", "M00503", date(2027, 3, 1), lines, use_account=True)
    assert r.funds is not None and (r.funds.account_pays, r.funds.account_balance) == (0, None)


def hypertension_visit(world: World, day: date, totals: YearlyTotals = CLEAN) -> SettlementResult:
    # 1 × 100,000 of A-CONSULT-001 at the Cancer Hospital CAMS (Beijing catalog): in scope 100,000
    lines = [FeeLine("1", "A-CONSULT-001", 100_000, 1)]
    return settle(world, QINGHAI_ASSISTED, "H11010500001", "M03900", day, lines, totals)


def test_medical_assistance_for_an_assisted_person(world: World) -> None:
    r = hypertension_visit(world, date(2025, 5, 1))
    m = r.funds
    assert m is not None
    # pooled: round(100,000 × 60%) = 60,000 ≤ cap 300,000; share 40,000
    # serious illness: threshold min(40,000, 1,000,000) = 40,000 -> pays 0
    # assistance: round((40,000 − 0) × 70%) = 28,000 ≤ cap 5,000,000
    assert (m.pooled, m.serious_pays, m.assistance_pays) == (60_000, 0, 28_000)
    # every fund 88,000; patient 12,000, all cash (a resident has no account: balc absent)
    assert (m.fund_pay_sum, m.patient_part, m.cash_pays, m.account_balance) == (88_000, 12_000, 12_000, None)
    assert [(p.fund_type, p.base, p.paid) for p in m.payments] == [
        ("390100", 100_000, 60_000),
        ("610100", 40_000, 28_000),
    ]


def test_no_assistance_before_the_person_is_assisted(world: World) -> None:
    # assisted from 2025-01-01: on 2024-05-01 maf 0, patient 40,000
    m = hypertension_visit(world, date(2024, 5, 1)).funds
    assert m is not None and (m.assistance_pays, m.patient_part) == (0, 40_000)


def test_the_assistance_cap_left_bounds_it(world: World) -> None:
    # paid 4,990,000 of the 5,000,000 cap: min(28,000, 10,000) = 10,000
    m = hypertension_visit(world, date(2025, 5, 1), YearlyTotals(assistance_paid=4_990_000)).funds
    assert m is not None and m.assistance_pays == 10_000


def test_the_reference_case_keeps_its_figures(world: World) -> None:
    # 2021 Qinghai case: 179.63 in scope; deductible 50.00; pooled 129.63; share 50.00 is below the
    # serious-illness threshold (10,000.00) and the patient is not assisted: fund 129.63, patient 50.00
    lines = [FeeLine("1", "A-CHEMO-001", 17_963, 1)]
    r = settle(world, QINGHAI_REFERENCE, "H11010500001", "M00503", date(2021, 12, 9), lines)
    m = r.funds
    assert m is not None
    assert (r.figures.total, r.figures.fund_pays, m.fund_pay_sum, r.figures.patient_pays) == (
        17_963,
        12_963,
        12_963,
        5_000,
    )
    assert (m.serious_pays, m.assistance_pays, m.account_pays, m.cash_pays) == (0, 0, 0, 5_000)
    assert [p.fund_type for p in m.payments] == ["390100"]


def test_the_fund_terms_in_force_on_the_visit_date_apply(world: World) -> None:
    """Beijing 310 with a second version from 2026-01-01 (threshold 1,000,000, 50%): the big Sanya
    visit on 2025-12-31 uses 2021's (850,000, derived above); on 2026-01-01 the new one:
    threshold min(3,000,000, 1,000,000) = 1,000,000; round(2,000,000 × 50%) = 1,000,000."""
    from settlesim.server.model import Dated, InsuranceType

    policy = world.policies["110000"]
    old = policy.funds[InsuranceType.EMPLOYEE].values[0]
    new = FundTerms(serious_illness=SeriousIllnessTerms(1_000_000, 5000, None))
    dated = Dated.of({date(2021, 1, 1): old, date(2026, 1, 1): new})
    beijing = replace(policy, funds={InsuranceType.EMPLOYEE: dated})
    changed = replace(world, policies={**world.policies, "110000": beijing})
    lines = [FeeLine("1", "A-TARGET-001", 1_000_000, 30)]
    before = settle(changed, BEIJING_ACCOUNT, "H46020000001", "M00503", date(2025, 12, 31), lines)
    after = settle(changed, BEIJING_ACCOUNT, "H46020000001", "M00503", date(2026, 1, 1), lines)
    assert before.funds is not None and after.funds is not None
    assert (before.funds.serious_pays, after.funds.serious_pays) == (850_000, 1_000_000)
    assert any(e.source == "policy 110000/310 funds since 2026-01-01" for e in after.trace)
