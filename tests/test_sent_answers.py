"""A new settle's answer is encoded once (server/sent_answers.py): the ledger stores the
`settlement` cut out of the response's bytes, and gRPC sends those same bytes. Each guarantee
is checked against the library's own encoding."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL
from settlesim.server import sent_answers, service
from settlesim.server.app import RunningServer
from settlesim.server.calls import Caller
from settlesim.server.ledger import open_ledger
from settlesim.server.sent_answers import EncodedResponses, settlement_bytes
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb

QINGHAI = "63000000000000000001"
TUMOUR = "M00503"


def _request(msgid: str) -> pb.SettleVisitRequest:
    visit = pb.Visit(
        institution_code=CANCER_HOSPITAL, person=pb.PersonRef(person_no=QINGHAI), disease_code=TUMOUR,
        visit_date="2021-12-09",
    )  # fmt: skip
    item = pb.FeeItem(sequence_no="0001", catalog_code="A-CONSULT-001", unit_price_fen=5000, quantity=1,
                      amount_fen=5000)  # fmt: skip
    return pb.SettleVisitRequest(request=pb.SettlementRequest(msgid=msgid, visit=visit, items=[item]))


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 128, 129, 16_381, 16_382, 16_383, 16_384, 2_097_152])
def test_the_settlement_is_cut_out_of_the_response_at_every_length_of_its_length(length: int) -> None:
    # A settlement's encoding is its msgid field: tag and length 2 bytes below 128, 3 from 128
    # (a 2-byte length), ...; the response adds its own tag and the settlement's length (1-4
    # bytes at these lengths). A cut after a fixed 2-byte header fails from 126 on.
    response = pb.SettleVisitResponse(settlement=pb.Settlement(msgid="x" * length))
    assert settlement_bytes(response.SerializeToString()) == response.settlement.SerializeToString()


def test_bytes_that_do_not_start_with_the_settlement_are_refused() -> None:
    with pytest.raises(ValueError):
        settlement_bytes(pb.SettleVisitResponse(replayed=True).SerializeToString())


def test_a_settle_stores_and_sends_one_encoding(tmp_path: Path) -> None:
    world = load_world()
    ledger = open_ledger(tmp_path / "ledger.db")
    servicer = service.SettlementService(world, ledger)
    serialize = service.method_handlers(servicer)["SettleVisit"].response_serializer
    try:
        response = asyncio.run(servicer.core.settle_visit(Caller("", ""), _request("H110105000012021120900000001")))
        kept = servicer.core.encoded._by_id[id(response)][1]
        sent = serialize(response)
        assert sent is kept  # the bytes the settle made, not a new encoding
        assert sent == response.SerializeToString()
        stored = ledger.get("", CANCER_HOSPITAL, response.settlement.settlement_id)
        assert stored.answer == response.settlement.SerializeToString() == settlement_bytes(sent)
        again = serialize(response)  # sent once: a second serialize encodes (nothing is kept for ever)
        assert again == sent and again is not sent
        assert servicer.core.encoded._by_id == {}
    finally:
        ledger.close()


def test_responses_never_sent_are_forgotten_past_the_cap_and_still_encode() -> None:
    encoded = EncodedResponses(kept=3)
    responses = [pb.SettleVisitResponse(settlement=pb.Settlement(msgid=f"M{n}")) for n in range(5)]
    for r in responses:
        encoded.keep(r, r.SerializeToString())
    assert len(encoded._by_id) == 3
    assert [encoded.serialize(r) for r in responses] == [r.SerializeToString() for r in responses]
    assert sent_answers.KEPT >= 32  # a batch's answers all wait together at most a step


def test_the_bytes_a_client_gets_are_the_stored_answer(server: RunningServer) -> None:
    """Over a real server with the journal: the raw bytes of SettleVisit's answer are the
    response around the ledger's stored answer."""
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(
            "/settlesim.v1.SettlementService/SettleVisit", request_serializer=pb.SettleVisitRequest.SerializeToString
        )
        raw = call(_request("H110105000012021120900000002"), timeout=10)
    answer = pb.SettleVisitResponse.FromString(raw).settlement
    stored = server.ledger.get("", CANCER_HOSPITAL, answer.settlement_id)
    assert raw == pb.SettleVisitResponse(settlement=pb.Settlement.FromString(stored.answer)).SerializeToString()
    assert settlement_bytes(raw) == stored.answer
