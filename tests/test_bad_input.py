"""Bad input the fuzzer (tests/test_fuzz.py) found mishandled, pinned as plain
examples against a real server."""

from __future__ import annotations

import grpc
import pytest
from conftest import CANCER_HOSPITAL
from settlesim.clients.rejections import rejection_of
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SettlementServiceStub(channel)


def settle_request(
    items: list[pb.FeeItem], visit_date: str = "2024-05-01", msgid: str = "BAD1"
) -> pb.SettleVisitRequest:
    return pb.SettleVisitRequest(
        request=pb.SettlementRequest(
            msgid=msgid,
            visit=pb.Visit(
                institution_code=CANCER_HOSPITAL,
                person=pb.PersonRef(person_no="63000000000000000009"),
                disease_code="M00503",
                visit_date=visit_date,
            ),
            items=items,
        )
    )


def test_a_refusal_listing_a_thousand_bad_fields_still_reaches_the_client(stub):
    """500 items (the limit), each with a 200-character unicode catalog code and
    the same sequence number: 999 violations. The refusal must arrive as
    INVALID_ARGUMENT with its reason, not be dropped by the client for trailers
    over gRPC's metadata size limit (it was: RESOURCE_EXHAUSTED 'received
    metadata size exceeds hard limit')."""
    items = [
        pb.FeeItem(sequence_no="1", catalog_code="码" * 200, unit_price_fen=1, quantity=1, amount_fen=1)
        for _ in range(500)
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.SettleVisit(settle_request(items), timeout=10)
    rejection = rejection_of(caught.value)
    assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", "FIELD_INVALID")
    assert rejection.violations[0][0] == "request.items[0].catalog_code"
    assert "more" in rejection.message  # the count of violations not listed


@pytest.mark.parametrize(
    "field",
    ["msgid", "visit.institution_code", "visit.disease_code", "items.catalog_code", "items.sequence_no"],
)
def test_a_code_with_a_trailing_newline_is_malformed(stub, field):
    """Codes are 1-64 of A-Z a-z 0-9 . _ : / - (docs/errors.md); "X\\n" is not one.
    It was accepted: Python's `$` also matches before a final newline, so msgid
    "0\\n" settled. The valid request settles (fund 12963: see test_server_settlement)."""
    request = settle_request(
        [
            pb.FeeItem(
                sequence_no="1", catalog_code="A-CONSULT-001", unit_price_fen=100, quantity=1, amount_fen=100
            )
        ],
        msgid="NEWLINE1",
    ).request
    *parents, name = field.split(".")
    target = request.items[0] if parents == ["items"] else request.visit if parents else request
    setattr(target, name, getattr(target, name) + "\n")
    with pytest.raises(grpc.RpcError) as caught:
        stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=10)
    rejection = rejection_of(caught.value)
    assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", "FIELD_INVALID")
    assert rejection.violations[0][0] == f"request.{field.replace('items.', 'items[0].')}"


@pytest.mark.parametrize("day", ["20240501  ", "2024-W18-3", "2024-05-01\n", "２０２４-０５-０１"])
def test_a_date_not_written_yyyy_mm_dd_is_malformed(stub, day):
    """Dates are "YYYY-MM-DD" (docs/errors.md). Python's date.fromisoformat also
    reads ISO week dates and basic format, so "2024-W18-3" and "20240501  " (ten
    characters, like YYYY-MM-DD) were accepted as 2024-05-01."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.Reconcile(
            pb.ReconcileRequest(institution_code=CANCER_HOSPITAL, start_date=day, end_date=day), timeout=10
        )
    assert rejection_of(caught.value).violations[0][:2] == ("start_date", "FIELD_INVALID")
    fee = pb.FeeItem(
        sequence_no="1", catalog_code="A-CONSULT-001", unit_price_fen=100, quantity=1, amount_fen=100
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.SettleVisit(settle_request([fee], visit_date=day, msgid="DATE1"), timeout=10)
    assert rejection_of(caught.value).violations[0][:2] == ("request.visit.visit_date", "FIELD_INVALID")


def test_a_refusal_quoting_long_duplicate_sequence_numbers_still_reaches_the_client(stub):
    """Ten items sharing a 2000-character unicode sequence number: the
    DUPLICATE_SEQUENCE_NO description quoted the whole number, so the refusal's
    trailers went past gRPC's 8 KiB metadata limit and the client got
    RESOURCE_EXHAUSTED instead of the refusal."""
    items = [
        pb.FeeItem(
            sequence_no="码" * 2000, catalog_code="A-CONSULT-001", unit_price_fen=1, quantity=1, amount_fen=1
        )
        for _ in range(10)
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.SettleVisit(settle_request(items), timeout=10)
    rejection = rejection_of(caught.value)
    assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", "FIELD_INVALID")
    assert ("request.items[1].sequence_no", "DUPLICATE_SEQUENCE_NO") in {v[:2] for v in rejection.violations}
