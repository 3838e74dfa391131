"""A msgid is a *sender's* message id: the platform keeps one namespace of msgids
per institution, so one institution can neither block nor take another's msgid.

Through a real server with `--auth token`: each hospital is who its token says.
Money figures: the Cancer Hospital's reference case (fees 50.00 + 129.63, 50-yuan
deductible, 100%) -> fund 12963, patient 5000; Fuwai settles Datong hypertension in
2025 (deductible 10,000, 60%): 30,000 fen class A -> fund 12000, patient 18000."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CANCER_HOSPITAL, FUWAI, refused
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.secure import connect
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.v1 import settlement_service_pb2 as pb

QINGHAI, TUMOUR = "63000000000000000001", "M00503"
REFERENCE_FEES = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
DATONG, HYPERTENSION = "14020000000000000001", "M03900"
TOKENS = {CANCER_HOSPITAL: "dev-token-H11010500001", FUWAI: "dev-token-H11010200002"}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=4, auth="token"))
    yield running
    running.stop(grace=1)


@pytest.fixture
def hospitals(platform: RunningServer) -> Iterator[tuple[Hospital, Hospital]]:
    """(Cancer Hospital, Fuwai), each authenticated by its own token, no retries."""
    opened = [
        connect(platform.target, code, token=TOKENS[code], retries=0) for code in (CANCER_HOSPITAL, FUWAI)
    ]
    yield opened[0], opened[1]
    for his in opened:
        his.close()



def money(answer: pb.SettleVisitResponse) -> tuple[int, int]:
    return answer.settlement.totals.fund_pays_fen, answer.settlement.totals.patient_pays_fen


def test_another_institution_cannot_block_a_msgid(platform, hospitals):
    """Fuwai voids (2601) a msgid the Cancer Hospital has not used yet: that blocks
    Fuwai's own msgid of that name, never the Cancer Hospital's."""
    cancer, fuwai = hospitals
    request = cancer.settlement_request(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES)
    early = fuwai.void(request.msgid)
    assert not early.voided_settlement
    settled = cancer.settle_request(request)  # was MSGID_VOIDED
    assert money(settled) == (12963, 5000) and not settled.replayed
    assert cancer.settle_request(request).replayed  # its retry is still a retry
    # What Fuwai blocked is its own message id: its own late settle with it is refused.
    rejection = refused(
        lambda: fuwai.settle(DATONG, HYPERTENSION, "2025-02-01", [Fee("A-CONSULT-001", 30000)], request.msgid)
    )
    assert (rejection.code, rejection.reason) == ("FAILED_PRECONDITION", "MSGID_VOIDED")
    assert platform.ledger.check() == []


def test_another_institution_cannot_take_a_msgid(platform, hospitals):
    """Fuwai settles first with the msgid the Cancer Hospital is about to send: both
    settle, each in its own namespace, and every lookup by msgid finds the caller's own."""
    cancer, fuwai = hospitals
    request = cancer.settlement_request(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES)
    msgid = request.msgid
    taken = fuwai.settle(DATONG, HYPERTENSION, "2025-02-01", [Fee("A-CONSULT-001", 30000)], msgid)
    assert money(taken) == (12000, 18000)
    settled = cancer.settle_request(request)  # was MSGID_REUSED
    assert money(settled) == (12963, 5000) and not settled.replayed
    assert settled.settlement.settlement_id != taken.settlement.settlement_id
    again = cancer.settle_request(request)
    assert again.replayed and again.settlement.settlement_id == settled.settlement.settlement_id

    assert cancer.get(msgid=msgid).settlement_id == settled.settlement.settlement_id
    assert fuwai.get(msgid=msgid).settlement_id == taken.settlement.settlement_id
    assert platform.ledger.find_message("", CANCER_HOSPITAL, msgid)[::2] == (
        "settle",
        settled.settlement.settlement_id,
    )
    assert platform.ledger.find_message("", FUWAI, msgid)[::2] == ("settle", taken.settlement.settlement_id)
    # Each void by msgid undoes the caller's own settlement only.
    voided = cancer.void(msgid)
    assert voided.voided_settlement and voided.settlement.settlement_id == settled.settlement.settlement_id
    assert fuwai.get(taken.settlement.settlement_id).status == pb.SETTLEMENT_STATUS_SETTLED
    assert fuwai.void(msgid).settlement.settlement_id == taken.settlement.settlement_id
    assert platform.ledger.check() == []


def test_reverse_and_void_msgids_are_per_institution(platform, hospitals):
    """A reversal's or void's own msgid lives in its sender's namespace too."""
    cancer, fuwai = hospitals
    mine = cancer.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES).settlement
    theirs = fuwai.settle(DATONG, HYPERTENSION, "2025-02-01", [Fee("A-CONSULT-001", 30000)]).settlement
    undo = "H00000000000202501010000009999"
    assert fuwai.reverse(theirs.settlement_id, msgid=undo).settlement.status == pb.SETTLEMENT_STATUS_REVERSED
    reversed_ = cancer.reverse(mine.settlement_id, msgid=undo)  # was MSGID_REUSED
    assert reversed_.settlement.status == pb.SETTLEMENT_STATUS_REVERSED and not reversed_.replayed
    assert cancer.reverse(mine.settlement_id, msgid=undo).replayed
    assert platform.ledger.check() == []


def test_find_message(tmp_path):
    """find_message answers a retry's question from committed data: (kind, request
    hash, settlement id) of the caller's own msgid, or None."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        assert ledger.find_message("", CANCER_HOSPITAL, "M1") is None
        ledger.void("", "V1", CANCER_HOSPITAL, "hash-v1", "M1")
        assert ledger.find_message("", CANCER_HOSPITAL, "M1") == ("blocked", "", "")
        assert ledger.find_message("", CANCER_HOSPITAL, "V1") == ("void", "hash-v1", "-")
        assert ledger.find_message("", FUWAI, "M1") is None
        assert ledger.find_message("other-session", CANCER_HOSPITAL, "M1") is None
    finally:
        ledger.close()
