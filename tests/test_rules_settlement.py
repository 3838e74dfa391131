"""Unit tests of the pure settlement computation (docs/domain.md "Settlement rules")
over the bundled world. Every expected money figure is derived by hand in the
comment or docstring next to it; none is copied from program output.

Catalog facts used (server/worlds/default/catalogs, all ILLUSTRATIVE):
Beijing 110000: A-CONSULT-001, A-CHEMO-001 class A; A-CEIL-001 class A with a
ceiling of 3000 fen; B-DRUG-001 class B 10%; B-CEIL-001 class B 5% with a
ceiling of 8000 fen; C-DRUG-001 class C; B-TO-A-001 class B 20% until
2025-06-30, class A from 2025-07-01; A-RETIRED-001 not listed from 2024-01-01.
Hainan 460000: B-DRUG-001 class B 20%. Shanxi 140000: B-DRUG-001 class B 15%.

Policy facts used (server/worlds/default/policies):
Qinghai 630000, 390, M00503: deductible 5000, ratio 100%, cap 5_000_000 (95% from 2026-01-01).
Hotan 653200, 390, M00503: deductible 0, ratio 75%, cap 10_000_000.
Datong 140200, 390, M03900: deductible 10_000, ratio 60%, cap 400_000.
Beijing 110000, 310, M00503: deductible 0, ratio 90%, no cap.
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from settlesim.server.model import (
    BASIS_POINTS,
    Catalog,
    CatalogClass,
    CatalogItem,
    CatalogTerms,
    Coverage,
    Dated,
    DiseaseTerms,
    FeeLine,
    VisitKey,
    World,
    YearlyTotals,
)
from settlesim.server.rules.eligibility import check_registration
from settlesim.server.rules.settlement import (
    SettlementResult,
    apply_b_share,
    apply_deductible,
    apply_ratio,
    cap_fund_payment,
    compute_settlement,
    fen,
    price_item,
    round_half_up,
    share_of,
    split_over_ceiling,
)
from settlesim.server.world_loader import load_world

QINGHAI_REFERENCE = "63000000000000000001"
QINGHAI_RULES = "63000000000000000009"
BEIJING_SANYA = "11000000000000000001"
DATONG = "14020000000000000001"
HOTAN_CAP = "65320000000000000001"
HOTAN_ROUNDING = "65320000000000000002"

CANCER_HOSPITAL = "H11010500001"  # Beijing 110105
FUWAI = "H11010200002"  # Beijing 110102
SANYA_NAMED = "H46020000001"  # Sanya 460200
DATONG_HOME = "H14020000001"  # Datong 140200

TUMOUR = "M00503"
HYPERTENSION = "M03900"


@pytest.fixture(scope="module")
def world() -> World:
    return load_world()


def line(code: str, unit_price: int, quantity: int = 1, seq: str = "1") -> FeeLine:
    return FeeLine(sequence_no=seq, catalog_code=code, unit_price=unit_price, quantity=quantity)


def lines(*specs: tuple[str, int, int]) -> list[FeeLine]:
    return [line(code, price, qty, seq=str(i)) for i, (code, price, qty) in enumerate(specs, 1)]


def settle(
    world: World,
    person: str,
    institution: str,
    disease: str,
    day: date,
    fee_lines: list[FeeLine],
    totals: YearlyTotals | None = None,
) -> SettlementResult:
    """What SettleVisit does without the ledger: the registration check gives
    the insured region's terms, the institution's region gives the catalog."""
    eligibility = check_registration(world, VisitKey(institution, disease, day, person_no=person))
    assert eligibility.eligible, eligibility.message
    assert eligibility.terms is not None
    catalog = world.catalog_for(world.institutions[institution].region)
    assert catalog is not None
    return compute_settlement(fee_lines, catalog, eligibility.terms, "test", totals or YearlyTotals(), day)


def beijing(world: World) -> Catalog:
    catalog = world.catalog_for("110105")
    assert catalog is not None and catalog.region == "110000"
    return catalog


# --- the reference case -----------------------------------------------------------------------


def test_qinghai_reference_case(world: World) -> None:
    """Seed 002: Qinghai breast-cancer patient at the Cancer Hospital CAMS on
    2021-12-09: fees 179.63 yuan, fund 129.63, patient 50.00 — under the
    world's stated assumption (deductible 50 yuan unused, ratio 100%, class A)."""
    # 5000 + 12963 = 17963 fen, both class A in the Beijing catalog
    result = settle(
        world,
        QINGHAI_REFERENCE,
        CANCER_HOSPITAL,
        TUMOUR,
        date(2021, 12, 9),
        lines(("A-CONSULT-001", 5000, 1), ("A-CHEMO-001", 12963, 1)),
    )
    f = result.figures
    assert f.total == 17963  # 5000 + 12963
    assert (f.full_self_pay, f.over_ceiling, f.pre_self_pay) == (0, 0, 0)  # all class A, no ceiling
    assert f.in_scope == 17963  # everything in scope
    assert f.deductible_applied == 5000  # min(17963, 5000 - 0) = 5000
    assert f.ratio_bp == 10_000  # 100%
    assert f.fund_pays == 12963  # round((17963 - 5000) × 100%) = 12963 ≤ cap left 5_000_000 - 0
    assert f.patient_pays == 5000  # 17963 - 12963
    assert f.cap_remaining == 4_987_037  # 5_000_000 - 12963
    assert f.deductible_remaining == 0  # 5000 - (0 + 5000)
    assert result.totals_after == YearlyTotals(deductible_used=5000, fund_paid=12963)  # 0+5000, 0+12963
    assert (fen(f.total), fen(f.fund_pays), fen(f.patient_pays)) == ("179.63", "129.63", "50.00")


# --- per item: classes, ceilings, shares --------------------------------------------------------


def test_class_a_item_is_fully_in_scope(world: World) -> None:
    item, _ = price_item(line("A-CONSULT-001", 2000, 3), beijing(world), date(2025, 6, 1))
    assert item.catalog_class is CatalogClass.A
    assert item.amount == 6000  # 2000 × 3
    assert (item.full_self_pay, item.over_ceiling, item.pre_self_pay) == (0, 0, 0)
    assert item.in_scope == 6000  # 6000 - 0 - 0 - 0


def test_class_a_visit_hotan(world: World) -> None:
    # class A 2000 × 3 = 6000 in scope; Hotan deductible 0: min(6000, 0 - 0) = 0;
    # fund round(6000 × 75%) = 4500; patient 6000 - 4500 = 1500
    result = settle(
        world,
        HOTAN_ROUNDING,
        CANCER_HOSPITAL,
        TUMOUR,
        date(2025, 6, 1),
        lines(("A-CONSULT-001", 2000, 3)),
    )
    f = result.figures
    assert (f.total, f.in_scope, f.deductible_applied) == (6000, 6000, 0)
    assert f.fund_pays == 4500
    assert f.patient_pays == 1500
    assert f.cap_remaining == 9_995_500  # 10_000_000 - 0 - 4500


def test_class_b_share_beijing(world: World) -> None:
    item, _ = price_item(line("B-DRUG-001", 1234, 5), beijing(world), date(2025, 6, 1))
    assert item.catalog_class is CatalogClass.B
    assert item.b_share_bp == 1000  # 10%
    assert item.amount == 6170  # 1234 × 5
    assert item.over_ceiling == 0  # no ceiling
    assert item.pre_self_pay == 617  # round(6170 × 10%) = 617
    assert item.in_scope == 5553  # 6170 - 617


def test_class_b_visit(world: World) -> None:
    """Qinghai rules exerciser in Beijing, B-DRUG-001 1234 × 5 = 6170."""
    result = settle(
        world, QINGHAI_RULES, CANCER_HOSPITAL, TUMOUR, date(2025, 3, 1), lines(("B-DRUG-001", 1234, 5))
    )
    f = result.figures
    assert f.pre_self_pay == 617  # round(6170 × 10%)
    assert f.in_scope == 5553  # 6170 - 617
    assert f.deductible_applied == 5000  # min(5553, 5000 - 0)
    assert f.fund_pays == 553  # round((5553 - 5000) × 100%)
    assert f.patient_pays == 5617  # 6170 - 553 = 617 pre-self-pay + 5000 deductible


def test_class_c_and_not_listed_are_full_self_pay(world: World) -> None:
    catalog, day = beijing(world), date(2025, 6, 1)
    c_item, _ = price_item(line("C-DRUG-001", 800, 2), catalog, day)
    assert c_item.catalog_class is CatalogClass.C
    assert c_item.full_self_pay == 1600  # 800 × 2, all of it
    assert (c_item.over_ceiling, c_item.pre_self_pay, c_item.in_scope) == (0, 0, 0)

    unlisted, _ = price_item(line("NO-SUCH-ITEM", 300, 1), catalog, day)
    assert unlisted.catalog_class is CatalogClass.NOT_LISTED
    assert unlisted.full_self_pay == 300  # 300 × 1, all of it
    assert unlisted.in_scope == 0


def test_class_c_and_not_listed_visit(world: World) -> None:
    # total 800×2 + 300×1 = 1900, all full self-pay; in scope 0; deductible min(0, 5000) = 0;
    # fund round(0 × 100%) = 0; patient 1900 - 0 = 1900; the deductible stays unused
    result = settle(
        world,
        QINGHAI_RULES,
        CANCER_HOSPITAL,
        TUMOUR,
        date(2025, 3, 1),
        lines(("C-DRUG-001", 800, 2), ("NO-SUCH-ITEM", 300, 1)),
    )
    f = result.figures
    assert (f.total, f.full_self_pay, f.in_scope) == (1900, 1900, 0)
    assert (f.deductible_applied, f.fund_pays, f.patient_pays) == (0, 0, 1900)
    assert f.deductible_remaining == 5000  # 5000 - (0 + 0)
    assert result.totals_after == YearlyTotals(0, 0)


def test_price_ceiling_class_a(world: World) -> None:
    catalog, day = beijing(world), date(2025, 6, 1)
    over, _ = price_item(line("A-CEIL-001", 3500, 2), catalog, day)
    assert over.amount == 7000  # 3500 × 2
    assert over.over_ceiling == 1000  # (3500 - 3000) × 2
    assert over.in_scope == 6000  # 7000 - 1000
    at, _ = price_item(line("A-CEIL-001", 3000, 2), catalog, day)
    assert at.over_ceiling == 0  # 3000 is not above the 3000 ceiling
    assert at.in_scope == 6000  # 3000 × 2


def test_price_ceiling_then_b_share(world: World) -> None:
    """B-CEIL-001: the over-ceiling part comes off first, the 5% B share is
    taken of what remains."""
    item, _ = price_item(line("B-CEIL-001", 9000, 3), beijing(world), date(2025, 6, 1))
    assert item.amount == 27000  # 9000 × 3
    assert item.over_ceiling == 3000  # (9000 - 8000) × 3
    assert item.pre_self_pay == 1200  # round((27000 - 3000) × 5%) = round(1200) — not 5% of 27000 = 1350
    assert item.in_scope == 22800  # 27000 - 3000 - 1200
    assert item.full_self_pay + item.over_ceiling + item.pre_self_pay + item.in_scope == item.amount


def test_small_rule_functions() -> None:
    assert split_over_ceiling(line("X", 9000, 3), 8000) == 3000  # (9000 - 8000) × 3
    assert split_over_ceiling(line("X", 8000, 3), 8000) == 0  # at the ceiling
    assert split_over_ceiling(line("X", 9000, 3), None) == 0  # no ceiling
    assert apply_b_share(24000, CatalogTerms(CatalogClass.B, b_share_bp=500)) == 1200  # 24000 × 5%
    assert apply_deductible(17963, 5000, 0) == 5000  # min(17963, 5000 - 0)
    assert apply_deductible(3000, 5000, 0) == 3000  # min(3000, 5000 - 0)
    assert apply_deductible(10000, 5000, 3000) == 2000  # min(10000, 5000 - 3000)
    assert apply_deductible(10000, 5000, 5000) == 0  # min(10000, 0)
    assert apply_deductible(10000, 5000, 6000) == 0  # max(0, min(10000, -1000))
    assert apply_ratio(15000, 6000) == 9000  # 15000 × 60%
    assert cap_fund_payment(15000, None, 123) == (15000, None)  # no cap
    assert cap_fund_payment(15000, 10_000_000, 9_990_000) == (10000, 0)  # left 10000; min(15000, 10000)
    assert cap_fund_payment(15000, 10_000_000, 9_000_000) == (15000, 985_000)  # left 1_000_000 - 15000
    assert cap_fund_payment(15000, 10_000_000, 10_500_000) == (0, 0)  # left max(0, -500_000) = 0


# --- rounding ----------------------------------------------------------------------------------


def test_round_half_up_not_bankers() -> None:
    assert round_half_up(15, 10) == 2  # 1.5 -> 2
    assert round_half_up(25, 10) == 3  # 2.5 -> 3 (banker's: 2)
    assert round_half_up(45, 10) == 5  # 4.5 -> 5 (banker's: 4)
    assert round_half_up(44, 10) == 4  # 4.4 -> 4
    assert round_half_up(0, 10) == 0
    assert share_of(15, 1000) == 2  # 15 × 10% = 1.5 -> 2
    assert share_of(6, 7500) == 5  # 6 × 75% = 4.5 -> 5


def test_b_share_rounds_half_up_per_item(world: World) -> None:
    catalog, day = beijing(world), date(2025, 6, 1)
    item, _ = price_item(line("B-DRUG-001", 15, 1), catalog, day)
    assert item.pre_self_pay == 2  # 15 × 10% = 1.5 -> 2 (half up)
    assert item.in_scope == 13  # 15 - 2
    even, _ = price_item(line("B-DRUG-001", 25, 1), catalog, day)
    assert even.pre_self_pay == 3  # 25 × 10% = 2.5 -> 3 (banker's rounding would give 2)
    ceil, _ = price_item(line("B-CEIL-001", 10, 1), catalog, day)
    assert ceil.pre_self_pay == 1  # 10 × 5% = 0.5 -> 1


def test_b_share_is_rounded_per_item_not_per_visit(world: World) -> None:
    # two lines of 15 fen: per item round(1.5) + round(1.5) = 2 + 2 = 4
    # (rounding the visit's 30 × 10% = 3 once would give 3)
    result = settle(
        world,
        HOTAN_ROUNDING,
        CANCER_HOSPITAL,
        TUMOUR,
        date(2025, 6, 1),
        lines(("B-DRUG-001", 15, 1), ("B-DRUG-001", 15, 1)),
    )
    assert [i.pre_self_pay for i in result.items] == [2, 2]
    assert result.figures.pre_self_pay == 4  # 2 + 2
    assert result.figures.in_scope == 26  # 30 - 4
    assert result.figures.fund_pays == 20  # round(26 × 75%) = round(19.5) = 20
    assert result.figures.patient_pays == 10  # 30 - 20


def test_ratio_rounds_half_up_once_per_visit(world: World) -> None:
    # class A 6 fen: Hotan deductible 0; fund round(6 × 75%) = round(4.5) = 5 (banker's: 4); patient 1
    one = settle(
        world, HOTAN_ROUNDING, CANCER_HOSPITAL, TUMOUR, date(2025, 6, 1), lines(("A-CONSULT-001", 6, 1))
    )
    assert one.figures.fund_pays == 5
    assert one.figures.patient_pays == 1  # 6 - 5
    # two class A lines of 3 fen: the ratio applies once to the visit's 6 fen -> 5,
    # not per item (round(2.25) + round(2.25) = 2 + 2 = 4)
    two = settle(
        world,
        HOTAN_ROUNDING,
        CANCER_HOSPITAL,
        TUMOUR,
        date(2025, 6, 1),
        lines(("A-CONSULT-001", 3, 1), ("A-CHEMO-001", 3, 1)),
    )
    assert two.figures.fund_pays == 5
    assert two.figures.patient_pays == 1  # 6 - 5


# --- deductible, ratio, cap across the year ---------------------------------------------------------


def test_deductible_partly_used_then_used_up(world: World) -> None:
    """Qinghai deductible 5000, ratio 100%, fresh totals at the start of 2025."""
    day1, day2, day3 = date(2025, 3, 1), date(2025, 4, 1), date(2025, 5, 1)
    first = settle(world, QINGHAI_RULES, CANCER_HOSPITAL, TUMOUR, day1, lines(("A-CONSULT-001", 3000, 1)))
    assert first.figures.deductible_applied == 3000  # min(3000, 5000 - 0)
    assert first.figures.fund_pays == 0  # round((3000 - 3000) × 100%)
    assert first.figures.patient_pays == 3000  # 3000 - 0
    assert first.figures.deductible_remaining == 2000  # 5000 - 3000
    assert first.totals_after == YearlyTotals(deductible_used=3000, fund_paid=0)

    second = settle(
        world,
        QINGHAI_RULES,
        CANCER_HOSPITAL,
        TUMOUR,
        day2,
        lines(("A-CHEMO-001", 10000, 1)),
        first.totals_after,
    )
    assert second.figures.deductible_applied == 2000  # min(10000, 5000 - 3000)
    assert second.figures.fund_pays == 8000  # round((10000 - 2000) × 100%)
    assert second.figures.patient_pays == 2000  # 10000 - 8000
    assert second.figures.deductible_remaining == 0  # 5000 - (3000 + 2000)
    assert second.totals_after == YearlyTotals(deductible_used=5000, fund_paid=8000)  # 3000+2000, 0+8000

    third = settle(
        world,
        QINGHAI_RULES,
        CANCER_HOSPITAL,
        TUMOUR,
        day3,
        lines(("A-CONSULT-001", 1000, 1)),
        second.totals_after,
    )
    assert third.figures.deductible_applied == 0  # min(1000, 5000 - 5000)
    assert third.figures.fund_pays == 1000  # round(1000 × 100%)
    assert third.figures.patient_pays == 0  # 1000 - 1000
    assert third.figures.cap_remaining == 4_991_000  # 5_000_000 - (8000 + 1000)
    assert third.totals_after == YearlyTotals(deductible_used=5000, fund_paid=9000)


def test_ratio_datong_abroad_and_at_home(world: World) -> None:
    """Datong hypertension: deductible 10_000, ratio 60%, cap 400_000."""
    abroad = settle(world, DATONG, FUWAI, HYPERTENSION, date(2025, 6, 1), lines(("A-CONSULT-001", 25000, 1)))
    f = abroad.figures
    assert f.deductible_applied == 10000  # min(25000, 10000 - 0)
    assert f.ratio_bp == 6000
    assert f.fund_pays == 9000  # round((25000 - 10000) × 60%)
    assert f.patient_pays == 16000  # 25000 - 9000
    assert f.cap_remaining == 391_000  # 400_000 - 9000

    # at home in Datong the Shanxi catalog applies: B-DRUG-001 is 15% there
    home = settle(
        world,
        DATONG,
        DATONG_HOME,
        HYPERTENSION,
        date(2025, 7, 1),
        lines(("B-DRUG-001", 2000, 1)),
        abroad.totals_after,
    )
    h = home.figures
    assert h.pre_self_pay == 300  # round(2000 × 15%)
    assert h.in_scope == 1700  # 2000 - 300
    assert h.deductible_applied == 0  # min(1700, 10000 - 10000)
    assert h.fund_pays == 1020  # round(1700 × 60%)
    assert h.patient_pays == 980  # 2000 - 1020
    assert home.totals_after == YearlyTotals(deductible_used=10000, fund_paid=10020)  # 9000 + 1020


@pytest.mark.parametrize(
    ("fund_paid", "fund", "cap_left_after"),
    [
        # before cap: 20000 in scope, deductible 0, round(20000 × 75%) = 15000
        (0, 15000, 9_985_000),  # cap left 10_000_000; min(15000, 10_000_000); 10_000_000 - 15000
        (9_000_000, 15000, 985_000),  # cap left 1_000_000; min(15000, 1_000_000); 1_000_000 - 15000
        (9_990_000, 10000, 0),  # cap left 10_000; min(15000, 10_000) = 10_000; 10_000 - 10_000
        (10_000_000, 0, 0),  # cap left 0: the fund pays nothing
    ],
)
def test_annual_cap_hotan(world: World, fund_paid: int, fund: int, cap_left_after: int) -> None:
    result = settle(
        world,
        HOTAN_CAP,
        CANCER_HOSPITAL,
        TUMOUR,
        date(2025, 9, 1),
        lines(("A-CHEMO-001", 20000, 1)),
        YearlyTotals(deductible_used=0, fund_paid=fund_paid),
    )
    f = result.figures
    assert f.total == 20000
    assert f.deductible_applied == 0  # Hotan deductible 0
    assert f.fund_pays == fund
    assert f.patient_pays == 20000 - fund  # total - fund, written out per row above
    assert f.cap_remaining == cap_left_after
    assert result.totals_after.fund_paid == fund_paid + fund


def test_annual_cap_partly_used_patient_pays_rest(world: World) -> None:
    # cap left 10_000_000 - 9_990_000 = 10_000; fund min(round(20000 × 75%) = 15000, 10_000) = 10_000;
    # patient 20000 - 10_000 = 10_000
    result = settle(
        world,
        HOTAN_CAP,
        CANCER_HOSPITAL,
        TUMOUR,
        date(2025, 9, 1),
        lines(("A-CHEMO-001", 20000, 1)),
        YearlyTotals(fund_paid=9_990_000),
    )
    assert result.figures.fund_pays == 10_000
    assert result.figures.patient_pays == 10_000
    assert result.totals_after.fund_paid == 10_000_000  # 9_990_000 + 10_000: the cap is reached


# --- effective dates ---------------------------------------------------------------------------


def test_catalog_item_moves_from_b_to_a(world: World) -> None:
    catalog = beijing(world)
    before, _ = price_item(line("B-TO-A-001", 1000, 1), catalog, date(2025, 6, 30))
    assert before.catalog_class is CatalogClass.B
    assert before.pre_self_pay == 200  # round(1000 × 20%)
    assert before.in_scope == 800  # 1000 - 200
    after, _ = price_item(line("B-TO-A-001", 1000, 1), catalog, date(2025, 7, 1))
    assert after.catalog_class is CatalogClass.A
    assert after.pre_self_pay == 0
    assert after.in_scope == 1000


def test_catalog_item_retired(world: World) -> None:
    catalog = beijing(world)
    listed, _ = price_item(line("A-RETIRED-001", 700, 2), catalog, date(2023, 12, 31))
    assert listed.catalog_class is CatalogClass.A
    assert listed.in_scope == 1400  # 700 × 2
    gone, _ = price_item(line("A-RETIRED-001", 700, 2), catalog, date(2024, 1, 1))
    assert gone.catalog_class is CatalogClass.NOT_LISTED
    assert gone.full_self_pay == 1400  # 700 × 2, all self-paid
    assert gone.in_scope == 0


def test_policy_ratio_changes_on_2026_01_01(world: World) -> None:
    """Qinghai M00503: 100% until 2025-12-31, 95% from 2026-01-01; fresh yearly
    totals on both days (each is the first visit of its year)."""
    fee = lines(("A-CHEMO-001", 10000, 1))
    old = settle(world, QINGHAI_RULES, CANCER_HOSPITAL, TUMOUR, date(2025, 12, 31), fee)
    assert old.figures.ratio_bp == 10_000
    assert old.figures.deductible_applied == 5000  # min(10000, 5000 - 0)
    assert old.figures.fund_pays == 5000  # round((10000 - 5000) × 100%)
    assert old.figures.patient_pays == 5000  # 10000 - 5000
    new = settle(world, QINGHAI_RULES, CANCER_HOSPITAL, TUMOUR, date(2026, 1, 1), fee)
    assert new.figures.ratio_bp == 9_500
    assert new.figures.deductible_applied == 5000  # min(10000, 5000 - 0)
    assert new.figures.fund_pays == 4750  # round((10000 - 5000) × 95%)
    assert new.figures.patient_pays == 5250  # 10000 - 4750


def test_treatment_region_catalog_decides(world: World) -> None:
    """The same code B-DRUG-001 is 10% in Beijing, 20% in Hainan, 15% in Shanxi."""
    fee, day = line("B-DRUG-001", 1000, 1), date(2025, 6, 1)
    shares = {}
    for region in ("110105", "460200", "140200"):
        catalog = world.catalog_for(region)
        assert catalog is not None
        item, _ = price_item(fee, catalog, day)
        shares[catalog.region] = (item.pre_self_pay, item.in_scope)
    assert shares == {
        "110000": (100, 900),  # round(1000 × 10%) = 100; 1000 - 100
        "460000": (200, 800),  # round(1000 × 20%) = 200; 1000 - 200
        "140000": (150, 850),  # round(1000 × 15%) = 150; 1000 - 150
    }

    # the Beijing patient in Sanya: Hainan's 20% share, Beijing's (insured region's) 90% ratio
    result = settle(world, BEIJING_SANYA, SANYA_NAMED, TUMOUR, day, [fee])
    f = result.figures
    assert f.pre_self_pay == 200  # round(1000 × 20%), Hainan catalog
    assert f.in_scope == 800  # 1000 - 200
    assert f.deductible_applied == 0  # Beijing 310 M00503 deductible 0
    assert f.fund_pays == 720  # round(800 × 90%)
    assert f.patient_pays == 280  # 1000 - 720
    assert f.cap_remaining is None  # Beijing: no annual cap


def test_trace_names_sources(world: World) -> None:
    result = settle(
        world, QINGHAI_REFERENCE, CANCER_HOSPITAL, TUMOUR, date(2021, 12, 9), lines(("A-CHEMO-001", 17963, 1))
    )
    rules = [t.rule for t in result.trace]
    assert rules == ["price_item", "apply_deductible", "apply_ratio", "cap_fund_payment"]
    assert "catalog 110000" in result.trace[0].source


# --- properties ---------------------------------------------------------------------------------

DAY = date(2025, 6, 1)


@st.composite
def catalog_terms(draw: st.DrawFn) -> CatalogTerms | None:
    klass = draw(st.sampled_from([CatalogClass.A, CatalogClass.B, CatalogClass.C, None]))
    if klass is None:
        return None  # not listed
    ceiling = draw(st.none() | st.integers(0, 50_000))
    share = draw(st.integers(0, BASIS_POINTS)) if klass is CatalogClass.B else 0
    return CatalogTerms(klass, b_share_bp=share, price_ceiling=ceiling)


@given(
    items=st.lists(
        st.tuples(catalog_terms(), st.integers(0, 100_000), st.integers(1, 50)), min_size=1, max_size=8
    ),
    deductible=st.integers(0, 200_000),
    ratio_bp=st.integers(0, BASIS_POINTS),
    cap=st.none() | st.integers(0, 20_000_000),
    deductible_used=st.integers(0, 250_000),
    fund_paid=st.integers(0, 25_000_000),
)
@settings(max_examples=300, deadline=None)
def test_settlement_invariants(
    items: list[tuple[CatalogTerms | None, int, int]],
    deductible: int,
    ratio_bp: int,
    cap: int | None,
    deductible_used: int,
    fund_paid: int,
) -> None:
    catalog_items = {}
    fee_lines = []
    for n, (terms, price, quantity) in enumerate(items):
        code = f"ITEM-{n}"
        if terms is not None:
            catalog_items[code] = CatalogItem(code, "", Dated.of({date(2021, 1, 1): terms}))
        fee_lines.append(FeeLine(str(n), code, price, quantity))
    catalog = Catalog("990000", catalog_items)
    policy = DiseaseTerms(Coverage.CHRONIC_SPECIAL, deductible, ratio_bp, cap)
    totals = YearlyTotals(deductible_used, fund_paid)

    result = compute_settlement(fee_lines, catalog, policy, "property", totals, DAY)
    f = result.figures

    for item, fee in zip(result.items, fee_lines, strict=True):
        assert item.amount == fee.unit_price * fee.quantity
        assert item.full_self_pay + item.over_ceiling + item.pre_self_pay + item.in_scope == item.amount
        assert min(item.full_self_pay, item.over_ceiling, item.pre_self_pay, item.in_scope) >= 0
    assert f.total == sum(fee.amount for fee in fee_lines)
    assert f.full_self_pay + f.over_ceiling + f.pre_self_pay + f.in_scope == f.total
    assert f.fund_pays + f.patient_pays == f.total
    assert 0 <= f.fund_pays <= f.in_scope - f.deductible_applied
    if cap is not None:
        assert f.fund_pays <= max(0, cap - fund_paid)
        assert f.cap_remaining == max(0, cap - fund_paid) - f.fund_pays
    else:
        assert f.cap_remaining is None
    assert 0 <= f.deductible_applied <= max(0, deductible - deductible_used)
    assert f.deductible_applied <= f.in_scope
    assert result.totals_after == YearlyTotals(
        deductible_used + f.deductible_applied, fund_paid + f.fund_pays
    )


def test_deductible_remaining_is_never_negative(world: World) -> None:
    """A deductible used beyond this year's terms (the terms lowered it mid-year, or the year's
    totals came from larger terms) leaves nothing to pay and nothing remaining, not a negative
    remainder. Qinghai 390/M00503 2021: deductible 5000, ratio 100%; 6000 already used:
    deductible applied max(0, min(17963, 5000 - 6000)) = 0; fund round(17963 × 100%) = 17963;
    deductible remaining max(0, 5000 - 6000) = 0."""
    result = settle(
        world, QINGHAI_REFERENCE, CANCER_HOSPITAL, TUMOUR, date(2021, 12, 9),
        lines(("A-CONSULT-001", 17963, 1)), YearlyTotals(deductible_used=6000),
    )  # fmt: skip
    assert result.figures.deductible_applied == 0 and result.figures.fund_pays == 17963
    assert result.figures.deductible_remaining == 0


def test_a_class_c_item_reports_its_price_ceiling() -> None:
    """Class C is full self-pay whatever the ceiling, but the item's answer still carries the
    catalog's ceiling (限价), as it does for A and B: 2 × 9000 = 18000 all self-pay, ceiling 8000."""
    terms = Dated.of({date(2021, 1, 1): CatalogTerms(CatalogClass.C, price_ceiling=8000)})
    catalog = Catalog("110000", {"C-CEILING": CatalogItem("C-CEILING", "class C with a ceiling", terms)})
    item, _ = price_item(line("C-CEILING", 9000, 2), catalog, date(2025, 1, 1))
    assert (item.catalog_class, item.price_ceiling) == (CatalogClass.C, 8000)
    assert (item.full_self_pay, item.over_ceiling, item.in_scope) == (18000, 0, 0)
