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
