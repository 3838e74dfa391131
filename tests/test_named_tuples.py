"""The settle path makes its named tuples with `model.new_tuple(Cls, (field, ...))` (in C, without
the class's generated __new__), which checks neither how many fields it is given nor their
names: every one a settle makes must still have exactly its class's fields."""

from __future__ import annotations

import random
from typing import Any

from settlesim.clients.workload import Workload
from settlesim.server import service
from settlesim.server.calls import Caller
from settlesim.server.model import YearlyTotals
from settlesim.server.world_loader import load_world


def _named_tuples(value: Any, found: list[tuple[Any, ...]]) -> None:
    if isinstance(value, tuple):
        if hasattr(type(value), "_fields"):
            found.append(value)
        for part in value:
            _named_tuples(part, found)


def test_every_named_tuple_of_a_settle_has_its_fields() -> None:
    world = load_world()
    workload = Workload.load(None)
    rng = random.Random(7)
    core = service.SettlementCore(world, None)  # type: ignore[arg-type]  # the plan alone: no ledger
    found: list[tuple[Any, ...]] = []
    for n in range(300):  # every visit kind of the bundled world: funds, accounts, assistance, caps
        plan = core._plan(Caller("", ""), workload.settlement_request(rng, f"NT{n:08d}"))
        paid_before = YearlyTotals(fund_paid=rng.choice((0, 10**7)), account_paid_year=rng.choice((0, 10**5)))
        result = plan.compute(paid_before)
        stored = plan.stored(result, "S1", b"", "")
        for value in (plan.given, plan.eligibility, result, stored.items):
            _named_tuples(value, found)
    kinds = {type(t).__name__ for t in found}
    assert kinds >= {"SettlementInput", "VisitKey", "FeeLine", "Eligibility", "TraceEntry", "ItemResult", "Figures",
                     "SettlementResult", "FundFigures", "FundPayment", "StoredItem"}  # fmt: skip
    wrong = [t for t in found if len(t) != len(type(t)._fields)]
    assert wrong == []


def test_the_stored_row_made_by_position_is_the_row_made_by_keywords() -> None:
    """SettlementPlan.stored passes StoredSettlement's 25 fields by position (keywords cost more):
    each must land in its own field. Every figure is made distinct, so that two swapped fail."""
    from settlesim.server.ledger import StoredSettlement
    from settlesim.server.rules.settlement import Figures
    from settlesim.server.service import _stored_items

    world = load_world()
    workload = Workload.load(None)
    core = service.SettlementCore(world, None)  # type: ignore[arg-type]
    plan = core._plan(Caller("", ""), workload.settlement_request(random.Random(11), "SR00000001"))
    real = plan.compute(YearlyTotals())
    assert real.funds is not None
    funds = real.funds._replace(pooled=201, serious_threshold_applied=202, serious_pays=203, assistance_pays=204,
                                account_pays=205)  # fmt: skip
    for result in (real._replace(figures=Figures(*range(101, 112)), funds=funds), real._replace(funds=None)):
        f, m, visit = result.figures, result.funds, plan.visit
        expected = StoredSettlement(
            settlement_id="S1", session="sandbox-1", msgid=plan.msgid, institution_code=visit.institution_code,
            person_no=plan.person_no, disease_code=visit.disease_code, visit_date=visit.visit_date, total=f.total,
            fund_pays=f.fund_pays, patient_pays=f.patient_pays, deductible_applied=f.deductible_applied,
            answer=b"answer", full_self_pay=f.full_self_pay, over_ceiling=f.over_ceiling,
            pre_self_pay=f.pre_self_pay, in_scope=f.in_scope, ratio_bp=f.ratio_bp,
            items=_stored_items(plan.given.lines, result.items),
            pooled_pays=None if m is None else m.pooled,
            serious_threshold=None if m is None else m.serious_threshold_applied,
            serious_pays=None if m is None else m.serious_pays,
            assistance_pays=None if m is None else m.assistance_pays,
            account_pays=None if m is None else m.account_pays,
        )  # fmt: skip
        assert plan.stored(result, "S1", b"answer", "sandbox-1") == expected
