"""What the settle path remembers to spare work (issue 10 item 4) is bounded, never remembers a
wrong verdict, and keeps what clients make up out of it:

- validation's well-formed codes (`validation.is_recurring_code`): the world's institutions and
  diseases and catalog item codes; never a malformed code, never a msgid, sequence number or
  hospital item code (each request makes new ones: they would only fill it);
- `fen`'s formatted amounts;
- a world's policy and catalog per region, which a changed copy of the world does not inherit.
"""

from __future__ import annotations

import pytest
from conftest import CANCER_HOSPITAL
from settlesim.server import validation
from settlesim.server.model import World
from settlesim.server.rules import settlement, words
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb

QINGHAI = "63000000000000000001"
TUMOUR = "M00503"


@pytest.fixture(scope="module")
def world() -> World:
    return load_world()


@pytest.fixture
def empty_codes(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    codes: set[str] = set()
    monkeypatch.setattr(validation, "_RECURRING_CODES", codes)
    return codes


def test_a_malformed_code_is_never_remembered_as_well_formed(empty_codes: set[str]) -> None:
    for _ in range(2):  # the second time would answer from memory if the first had stored it
        assert not validation.is_recurring_code("H1101 0500001")
        assert not validation.is_recurring_code("x" * (validation.MAX_CODE_LENGTH + 1))
    assert empty_codes == set()
    assert validation.is_recurring_code("H11010500001")
    assert empty_codes == {"H11010500001"}


def test_remembered_codes_stop_at_their_cap(empty_codes: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "_RECURRING_KEPT", 10)
    assert all(validation.is_recurring_code(f"C{n:05d}") for n in range(25))
    assert len(empty_codes) == 10
    assert not validation.is_recurring_code("C 00030")  # past the cap, still matched: refused


def _request(
    msgid: str, sequence_no: str, hospital_code: str, institution: str = CANCER_HOSPITAL
) -> pb.SettlementRequest:
    visit = pb.Visit(
        institution_code=institution,
        person=pb.PersonRef(person_no=QINGHAI),
        disease_code=TUMOUR,
        visit_date="2021-12-09",
    )
    item = pb.FeeItem(
        sequence_no=sequence_no,
        catalog_code="A-CONSULT-001",
        hospital_item_code=hospital_code,
        unit_price_fen=5000,
        quantity=1,
        amount_fen=5000,
    )
    return pb.SettlementRequest(msgid=msgid, visit=visit, items=[item])


def test_what_a_client_makes_up_is_not_remembered(world: World, empty_codes: set[str]) -> None:
    given = validation.settlement_input(_request("H110105000012021120900000001", "SEQ-0001", "HIS-77-0001"), world)
    assert given.lines[0].sequence_no == "SEQ-0001"
    assert empty_codes == {CANCER_HOSPITAL, TUMOUR, "A-CONSULT-001"}
    with pytest.raises(validation.Refusal):  # an institution of no world: refused, and not remembered
        unknown = _request("H999999999992021120900000001", "SEQ-0002", "HIS-2", "H99999999999")
        validation.settlement_input(unknown, world)
    assert empty_codes == {CANCER_HOSPITAL, TUMOUR, "A-CONSULT-001"}


def test_fen_stops_remembering_at_its_cap_and_formats_on() -> None:
    assert settlement.fen == words.FEN_TEXTS.__getitem__  # what the rules call: the kept texts
    texts = words.Remembered(words.yuan, 3)
    fen = texts.__getitem__
    # 17963 fen = 179 yuan 63 fen; -5 fen = minus 0 yuan 05 fen; 0 = 0.00; 100 = 1.00; 12963 = 129.63
    assert [fen(a) for a in (17963, -5, 0, 100, 12963)] == ["179.63", "-0.05", "0.00", "1.00", "129.63"]
    assert texts == {17963: "179.63", -5: "-0.05", 0: "0.00"}
    assert fen(12963) == "129.63"  # past the cap: formatted again, still right
    assert len(texts) == 3


def test_a_changed_copy_of_the_world_does_not_inherit_remembered_policies(world: World) -> None:
    from dataclasses import replace

    assert world.policy_for("630000") is world.policies["630000"]  # now remembered
    assert world.catalog_for("110000") is not None
    bare = replace(world, policies={}, catalogs={})
    assert bare.policy_for("630000") is None
    assert bare.catalog_for("110000") is None
    assert world.policy_for("630000") is world.policies["630000"]


def test_remembered_regions_stop_at_their_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from settlesim.server import model

    fresh = load_world()
    fresh._policy_of.clear()  # loading asked for the world's own regions already
    fresh._catalog_of.clear()
    monkeypatch.setattr(model, "REMEMBERED_REGIONS", 2)
    for region in ("630000", "630100", "630102", "110000", "110105"):
        assert fresh.policy_for(region) is not None or region.startswith("11")
        fresh.catalog_for(region)
    assert len(fresh._policy_of) == 2
    assert len(fresh._catalog_of) == 2
    # a region past the cap is still looked up along its lineage: Xining's district -> Qinghai's policy
    assert fresh.policy_for("630104") is fresh.policies["630000"]


def test_the_answer_takes_trace_and_fund_rows_field_by_field_in_the_contract_order() -> None:
    """answers.add_trace and add_funds unpack each named tuple into the message's fields in
    order (the cheap way): a field added or two swapped in either must fail here, not
    silently put one figure in another's field."""
    from settlesim.server.rules.funds import FundPayment
    from settlesim.server.rules.settlement import TraceEntry

    assert TraceEntry._fields == tuple(f.name for f in pb.TraceEntry.DESCRIPTOR.fields)
    # the contract says which fields hold fen; the rules' names leave the unit out
    assert tuple(f.name.removesuffix("_fen") for f in pb.FundPayment.DESCRIPTOR.fields) == FundPayment._fields


def test_what_the_answer_and_the_item_rows_unpack_is_in_the_order_they_read_it() -> None:
    """answers.add_items and service._stored_items unpack ItemResult and FeeLine by position (no
    attribute read per part): a field added or two swapped must fail here, not silently put one
    part of an item in another's column."""
    from settlesim.server.model import FeeLine
    from settlesim.server.rules.settlement import ItemResult

    assert ItemResult._fields == ("sequence_no", "catalog_code", "catalog_class", "b_share_bp", "price_ceiling",
                                  "amount", "full_self_pay", "over_ceiling", "pre_self_pay", "in_scope")  # fmt: skip
    assert FeeLine._fields == ("sequence_no", "catalog_code", "unit_price", "quantity", "hospital_item_code")


@pytest.mark.parametrize(
    "amounts",
    [range(-20_000, 20_000), (10**12 + 5, -(10**12) - 99, 2**63, -(2**63))],
)
def test_yuan_writes_every_amount_as_whole_yuan_a_point_and_two_digits_of_fen(amounts: range | tuple[int, ...]) -> None:
    # the reference: the sign, the whole yuan (|fen| // 100), then the fen (|fen| % 100) in two digits;
    # e.g. -5 fen -> "-0.05", 100 -> "1.00", -12963 -> "-129.63"
    for amount in amounts:
        sign, whole, cents = "-" if amount < 0 else "", abs(amount) // 100, abs(amount) % 100
        assert words.yuan(amount) == f"{sign}{whole}.{cents:02d}", amount


@pytest.mark.parametrize("code", ["A-CONSULT 001", "x" * (validation.MAX_CODE_LENGTH + 1), ""])
def test_the_valid_path_refuses_a_malformed_catalog_code_though_well_formed_ones_are_remembered(
    world: World, empty_codes: set[str], code: str
) -> None:
    """The valid path asks the remembered codes first (validation._plain_line): a code it never
    remembered is still matched, and refused."""
    validation.settlement_input(_request("H110105000012021120900000001", "0001", ""), world)
    assert "A-CONSULT-001" in empty_codes
    request = _request("H110105000012021120900000002", "0001", "")
    request.items[0].catalog_code = code
    with pytest.raises(validation.Refusal) as refused:
        validation.settlement_input(request, world)
    assert refused.value.violations[0].field == "request.items[0].catalog_code"
    assert code not in empty_codes
