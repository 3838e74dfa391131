"""Validation's valid path (no checker, no field names: validation._valid_input) says yes only
where the careful path (every check by field, each problem named: _checked_input) says yes too,
and gives the same plain data; is_code's shortcut for letters and digits agrees with the
documented code format. Requests are a valid one with fields mutated the ways clients get them
wrong (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settlesim.server import validation
from settlesim.server.model import World
from settlesim.server.rules.reasons import Refusal
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb

DOCUMENTED_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")  # docs/errors.md "Limits"
CHECKS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def world() -> World:
    return load_world()


def _request() -> pb.SettlementRequest:
    """The 2021 Qinghai reference visit (docs/domain.md): valid as it stands."""
    visit = pb.Visit(institution_code="H11010500001", person=pb.PersonRef(person_no="63000000000000000001"),
                     disease_code="M00503", visit_date="2021-12-09")  # fmt: skip
    items = [
        pb.FeeItem(sequence_no="0001", catalog_code="A-CONSULT-001", hospital_item_code="HIS-1",
                   unit_price_fen=5000, quantity=1, amount_fen=5000),
        pb.FeeItem(sequence_no="0002", catalog_code="A-CHEMO-001", unit_price_fen=12963, quantity=1,
                   amount_fen=12963),
    ]  # fmt: skip
    return pb.SettlementRequest(msgid="H110105000012021120900000001", operator="op", visit=visit, items=items)


CODES = st.one_of(
    st.text(max_size=70),
    st.text(alphabet="Aa0-._:/ \n１é", max_size=70),
    st.sampled_from(["", "0001", "0001", "A" * 64, "A" * 65, "x\n", "-1", "１２", "HIS-SYN-EXAM-00061"]),
)
NUMBERS = st.one_of(
    st.integers(-(2**40), 2**40), st.sampled_from([0, 1, -1, 100_000, 100_001, 10**8, 10**8 + 1])
)


@st.composite
def mutated(draw: st.DrawFn) -> pb.SettlementRequest:
    request = _request()
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["msgid", "operator", "visit", "item", "items"]))
        if where == "msgid":
            request.msgid = draw(CODES)
        elif where == "operator":
            request.operator = draw(st.text(max_size=70))
        elif where == "visit":
            field = draw(st.sampled_from(["institution_code", "disease_code", "visit_date"]))
            value = draw(
                st.one_of(CODES, st.sampled_from(["2021-02-30", "1989-12-31", "2021-12-9", "H11010200002"]))
            )
            setattr(request.visit, field, value)
        elif where == "item" and request.items:
            item = request.items[draw(st.integers(0, len(request.items) - 1))]
            field = draw(st.sampled_from(["sequence_no", "catalog_code", "hospital_item_code", "unit_price_fen",
                                          "quantity", "amount_fen"]))  # fmt: skip
            setattr(item, field, draw(CODES if field.endswith(("_no", "_code")) else NUMBERS))
        elif where == "items":
            extra = draw(st.integers(0, 3))
            for _ in range(extra):
                request.items.add().CopyFrom(request.items[0])  # duplicate sequence numbers
            if draw(st.booleans()):
                del request.items[:]
    return request


@CHECKS
@given(request=mutated())
def test_the_valid_path_accepts_only_what_the_careful_path_accepts(
    world: World, request: pb.SettlementRequest
) -> None:
    fast = validation._valid_input(request, world)
    try:
        careful = validation._checked_input(request, world)
    except Refusal:
        assert fast is None  # refused with every problem named, never let through by the shortcut
        return
    if fast is not None:
        assert fast == careful
    assert validation.settlement_input(request, world) == careful


def test_the_valid_path_takes_the_reference_visit(world: World) -> None:
    assert validation._valid_input(_request(), world) == validation._checked_input(_request(), world)


@settings(max_examples=2000, deadline=None)
@given(value=CODES)
def test_is_code_is_the_documented_format(value: str) -> None:
    assert validation.is_code(value) == (DOCUMENTED_CODE.fullmatch(value) is not None)
