"""The trace's words, pinned: each settlement's "why this amount" says exactly this, whichever
way the rules make it (from words made once per catalog item version and policy term:
rules/settlement.py ItemWords, Catalog.words, RegionPolicy.sources), and what the rules
remember for it is bounded, keyed by the world's own codes, and not inherited by a changed copy.

Catalog facts used (server/worlds/default/catalogs/110000.yaml, ILLUSTRATIVE): A-CEIL-001 class A
with a 3000-fen ceiling; B-CEIL-001 class B 5 % with an 8000-fen ceiling; B-DRUG-001 class B 10 %;
C-DRUG-001 class C; B-TO-A-001 class B 20 % from 2021-01-01, class A from 2025-07-01; A-RETIRED-001
class A from 2021-01-01, gone from 2024-01-01; every version of them starts 2021-01-01 unless said.
Qinghai 630000, 390, M00503 in 2021: deductible 5000 fen, ratio 100 %, cap 5_000_000 fen.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from settlesim.server.model import (
    CatalogClass,
    CatalogItem,
    CatalogTerms,
    Dated,
    FeeLine,
    Period,
    VisitKey,
    World,
    YearlyTotals,
)
from settlesim.server.rules import settlement
from settlesim.server.rules.eligibility import check_registration
from settlesim.server.rules.funds import fund_input, terms_source
from settlesim.server.rules.settlement import compute_settlement, price_item
from settlesim.server.world_loader import load_world

DAY = date(2025, 6, 1)


@pytest.fixture
def world() -> World:
    return load_world()  # a fresh world per test: what it remembers starts empty


def _line(code: str, unit_price: int, quantity: int = 1, seq: str = "1") -> FeeLine:
    return FeeLine(seq, code, unit_price, quantity)


def _entry(world: World, code: str, unit_price: int, quantity: int = 1, day: date = DAY) -> tuple[str, ...]:
    catalog = world.catalog_for("110105")
    assert catalog is not None
    return tuple(price_item(_line(code, unit_price, quantity), catalog, day)[1])


def test_each_kind_of_item_says_its_arithmetic(world: World) -> None:
    listed = "catalog 110000 item {} since 2021-01-01"
    # 3500 × 2 = 7000; over the 3000 ceiling (3500 − 3000) × 2 = 1000; class A: in scope 6000
    assert _entry(world, "A-CEIL-001", 3500, 2) == (
        "items[1]", "price_item", listed.format("A-CEIL-001"),
        "class A since 2021-01-01; amount 70.00; over ceiling (35.00-30.00)×2=10.00; in scope 60.00",
    )  # fmt: skip
    # 9000 over the 8000 ceiling: 1000; 5 % of the 8000 left = 400 first self-paid; in scope 7600
    assert _entry(world, "B-CEIL-001", 9000) == (
        "items[1]", "price_item", listed.format("B-CEIL-001"),
        "class B since 2021-01-01; amount 90.00; over ceiling (90.00-80.00)×1=10.00; "
        "B share 5% of 80.00 = 4.00; in scope 76.00",
    )  # fmt: skip
    # 1234 × 5 = 6170; 10 % = 617 first self-paid; in scope 5553
    assert _entry(world, "B-DRUG-001", 1234, 5) == (
        "items[1]", "price_item", listed.format("B-DRUG-001"),
        "class B since 2021-01-01; amount 61.70; B share 10% of 61.70 = 6.17; in scope 55.53",
    )  # fmt: skip
    # class C: 800 × 2 = 1600 all self-paid; its source names no date
    assert _entry(world, "C-DRUG-001", 800, 2) == (
        "items[1]", "full_self_pay", "catalog 110000 item C-DRUG-001", "class C since 2021-01-01: full self-pay 16.00"
    )  # fmt: skip
    assert _entry(world, "NO-SUCH-ITEM", 300) == (
        "items[1]", "full_self_pay", "catalog 110000 item NO-SUCH-ITEM", "not listed on 2025-06-01: full self-pay 3.00"
    )  # fmt: skip


def test_the_version_in_force_on_the_visit_date_speaks(world: World) -> None:
    # B-TO-A-001 at 1000: class B 20 % until 2025-06-30 (200 first self-paid), class A from 2025-07-01
    assert _entry(world, "B-TO-A-001", 1000, day=date(2025, 6, 30))[2:] == (
        "catalog 110000 item B-TO-A-001 since 2021-01-01",
        "class B since 2021-01-01; amount 10.00; B share 20% of 10.00 = 2.00; in scope 8.00",
    )
    assert _entry(world, "B-TO-A-001", 1000, day=date(2025, 7, 1))[2:] == (
        "catalog 110000 item B-TO-A-001 since 2025-07-01",
        "class A since 2025-07-01; amount 10.00; in scope 10.00",
    )
    assert _entry(world, "A-RETIRED-001", 700, day=date(2023, 12, 31))[3].startswith("class A since 2021-01-01")
    gone, before = date(2024, 1, 1), date(2020, 12, 31)
    assert _entry(world, "A-RETIRED-001", 700, day=gone)[3] == "not listed on 2024-01-01: full self-pay 7.00"
    assert _entry(world, "A-RETIRED-001", 700, day=before)[3] == "not listed on 2020-12-31: full self-pay 7.00"


def test_the_pooled_fund_says_deductible_ratio_and_cap(world: World) -> None:
    """The Qinghai reference case: 5000 + 12963 = 17963 in scope; deductible min(17963, 5000 − 0)
    = 5000; round((17963 − 5000) × 100 %) = 12963; the cap 5_000_000 leaves 4_987_037."""
    policy = world.policies["630000"]
    dated = policy.terms[(world.people["63000000000000000001"].insurance_type, "M00503")]
    found = dated.on(date(2021, 12, 9))
    assert found is not None
    since, terms = found
    catalog = world.catalog_for("110105")
    assert catalog is not None
    source = terms_source(policy, world.people["63000000000000000001"].insurance_type, "M00503", since)
    assert source == "policy 630000/390/M00503 since 2021-01-01"
    fees = [_line("A-CONSULT-001", 5000, seq="1"), _line("A-CHEMO-001", 12963, seq="2")]
    result = compute_settlement(fees, catalog, terms, source, YearlyTotals(), date(2021, 12, 9))
    assert [tuple(e) for e in result.trace[2:]] == [
        ("deductible_applied_fen", "apply_deductible", source,
         "min(in scope 179.63, deductible 50.00 − used 0.00) = 50.00"),
        ("fund_pays_fen", "apply_ratio", source, "round((179.63 − 50.00) × 100%) = 129.63"),
        ("fund_pays_fen", "cap_fund_payment", source,
         "min(129.63, cap 50000.00 − paid 0.00) = 129.63; cap left 49870.37"),
    ]  # fmt: skip


def test_only_the_catalogs_own_item_codes_are_remembered(world: World) -> None:
    catalog = world.catalog_for("110105")
    assert catalog is not None and catalog.words == {}
    for code in ("A-CONSULT-001", "NO-SUCH-ITEM", "HIS-MADE-UP-7", "A-CONSULT-001"):
        price_item(_line(code, 100), catalog, DAY)
    assert set(catalog.words) == {"A-CONSULT-001"}


def test_remembered_items_stop_at_their_cap_and_price_on(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settlement, "REMEMBERED_ITEMS", 2)
    catalog = world.catalog_for("110105")
    assert catalog is not None
    for code in ("A-CONSULT-001", "A-CHEMO-001", "B-DRUG-001"):
        price_item(_line(code, 1000), catalog, DAY)
    assert set(catalog.words) == {"A-CONSULT-001", "A-CHEMO-001"}
    # past the cap: made each time, still right (10 % of 1000 = 100 first self-paid, 900 in scope)
    item, entry = price_item(_line("B-DRUG-001", 1000), catalog, DAY)
    assert (item.pre_self_pay, item.in_scope) == (100, 900)
    assert entry.detail == "class B since 2021-01-01; amount 10.00; B share 10% of 10.00 = 1.00; in scope 9.00"


def test_a_changed_catalog_inherits_no_words(world: World) -> None:
    catalog = world.catalog_for("110105")
    assert catalog is not None
    price_item(_line("B-DRUG-001", 1000), catalog, DAY)
    assert "B-DRUG-001" in catalog.words
    as_a = CatalogItem("B-DRUG-001", "now class A", Dated.of({date(2021, 1, 1): CatalogTerms(CatalogClass.A)}))
    changed = replace(catalog, items={**catalog.items, "B-DRUG-001": as_a})
    assert changed.words == {}
    item, entry = price_item(_line("B-DRUG-001", 1000), changed, DAY)
    assert (item.catalog_class, item.in_scope) == (CatalogClass.A, 1000)
    assert entry.detail == "class A since 2021-01-01; amount 10.00; in scope 10.00"
    # and the original still speaks its own version
    assert price_item(_line("B-DRUG-001", 1000), catalog, DAY)[1].detail.startswith("class B since 2021-01-01")


def test_a_changed_policy_inherits_no_sources(world: World) -> None:
    person = world.people["63000000000000000001"]
    policy = world.policies["630000"]
    assert fund_input(policy, person, DAY, False).source.startswith("policy 630000/390 funds")
    terms_source(policy, person.insurance_type, "M00503", date(2021, 1, 1))
    assert policy.sources  # remembered: one per term and version of the policy's own
    changed = replace(policy, region="639900")  # a copy under another region's code
    assert changed.sources == {}
    assert terms_source(changed, person.insurance_type, "M00503", date(2021, 1, 1)) == (
        "policy 639900/390/M00503 since 2021-01-01"
    )
    assert fund_input(changed, person, DAY, False).source.startswith("policy 639900/390 funds")


def test_the_registration_check_names_the_scheme_and_the_registration(world: World) -> None:
    qinghai = VisitKey("H11010500001", "M00503", date(2021, 12, 9), person_no="63000000000000000001")
    assert tuple(check_registration(world, qinghai).trace[0]) == (
        "eligibility", "check_registration", "policy 630000 scheme since 2021-01-01; registration QH-R-0001",
        "city scheme; registration QH-R-0001 valid 2021-11-01..2027-12-31 reaches H11010500001",
    )  # fmt: skip
    beijing = VisitKey("H46020000001", "M00503", date(2025, 6, 1), person_no="11000000000000000001")
    assert tuple(check_registration(world, beijing).trace[0])[2:] == (
        "policy 110000 scheme since 2021-01-01; registration BJ-R-0001",
        "institution scheme; registration BJ-R-0001 valid 2025-01-01..2027-12-31 reaches H46020000001",
    )
    # a registration without an end says so
    person = world.people["63000000000000000001"]
    open_ended = replace(person.registrations[0], valid=Period(date(2021, 11, 1)))
    changed = replace(world, people={**world.people, person.person_no: replace(person, registrations=(open_ended,))})
    assert check_registration(changed, qinghai).trace[0].detail == (
        "city scheme; registration QH-R-0001 valid 2021-11-01..open reaches H11010500001"
    )
