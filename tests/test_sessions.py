"""Sessions (docs/sessions.md), tested directly: a call carrying x-settlesim-session reads and
writes only that session's ledger namespace, so a settlement made in session A is invisible to
session B and to the default namespace (no header), which can neither get, reverse, void nor
reconcile it; and a server run with allow_sessions=False (`settlesim serve --no-sessions`)
refuses the header with PERMISSION_DENIED / SESSIONS_DISABLED.

Figures (server/worlds/default): 63000000000000000009 is insured in Qinghai (390); its M00503
policy in 2025 (policies/630000.yaml) has deductible 5000 fen and ratio 100%. A-CONSULT-001 is
class A in Beijing (catalogs/110000.yaml). An 8000-fen visit with the year's deductible unused:
deductible applied 5000, fund round((8000 - 5000) × 100%) = 3000, patient 5000; a second one with
the deductible used up: deductible applied 0, fund 8000, patient 0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL, ServerProcess
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.rejections import rejection_of
from settlesim.server.app import ServerConfig, start
from settlesim.v1 import settlement_service_pb2 as pb

PERSON, DISEASE, DAY = "63000000000000000009", "M00503", "2025-03-01"
FEES = [Fee("A-CONSULT-001", 8000)]
YEAR = ("2025-01-01", "2025-12-31")


def refusal(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    rejection = rejection_of(caught.value)
    return rejection.code, rejection.reason


def test_a_settlement_is_invisible_outside_its_session(hospital):
    a = hospital(CANCER_HOSPITAL, session="sessions-test-a")
    b = hospital(CANCER_HOSPITAL, session="sessions-test-b")
    default = hospital(CANCER_HOSPITAL)
    first = a.settle(PERSON, DISEASE, DAY, FEES).settlement
    assert (first.totals.deductible_applied_fen, first.totals.fund_pays_fen) == (5000, 3000)
    sid, msgid = first.settlement_id, first.msgid
    assert a.get(sid).msgid == msgid and a.get(msgid=msgid).settlement_id == sid  # seen where made

    for other in (b, default):
        not_found = ("NOT_FOUND", "SETTLEMENT_NOT_FOUND")
        assert refusal(lambda o=other: o.get(sid)) == not_found
        assert refusal(lambda o=other: o.get(msgid=msgid)) == not_found
        assert refusal(lambda o=other: o.reverse(sid)) == not_found
        unseen = other.void(msgid)  # a void of a msgid this namespace never saw: nothing to void
        assert not unseen.voided_settlement and not unseen.HasField("settlement")
        reconciled = other.reconcile(*YEAR, include_entries=True)
        assert reconciled.platform == pb.ReconcileFigures() and not reconciled.entries

    # Nothing done in B or the default namespace touched A's settlement, its reconciliation or
    # its yearly totals: A's next visit finds the deductible used up ...
    assert a.get(sid).status == pb.SETTLEMENT_STATUS_SETTLED
    second = a.settle(PERSON, DISEASE, DAY, FEES).settlement
    assert (second.totals.deductible_applied_fen, second.totals.fund_pays_fen) == (0, 8000)
    reconciled = a.reconcile(*YEAR, include_entries=True)
    assert (reconciled.platform.count, reconciled.platform.fund_pays_fen) == (2, 3000 + 8000)
    assert {e.settlement_id for e in reconciled.entries} == {sid, second.settlement_id}
    # ... while B's first visit of the same person still pays B's own deductible.
    in_b = b.settle(PERSON, DISEASE, DAY, FEES).settlement
    assert (in_b.totals.deductible_applied_fen, in_b.totals.fund_pays_fen) == (5000, 3000)
    assert [e.settlement_id for e in b.reconcile(*YEAR, include_entries=True).entries] == [in_b.settlement_id]
    assert default.reconcile(*YEAR).platform.count == 0


@pytest.fixture
def no_sessions_server(tmp_path: Path):
    running = start(ServerConfig(port=0, db_path=tmp_path / "plain.db", allow_sessions=False, max_workers=4))
    yield running
    running.stop(grace=1)


def test_a_server_without_sessions_refuses_the_header_on_every_call(no_sessions_server):
    sandboxed = Hospital.connect(no_sessions_server.target, CANCER_HOSPITAL, session="sessions-test-a")
    plain = Hospital.connect(no_sessions_server.target, CANCER_HOSPITAL)
    try:
        settled = plain.settle(PERSON, DISEASE, DAY, FEES).settlement  # no header: served as usual
        calls = {
            "verify": lambda: sandboxed.verify(PERSON, DISEASE, DAY),
            "pre_settle": lambda: sandboxed.pre_settle(PERSON, DISEASE, DAY, FEES),
            "settle": lambda: sandboxed.settle(PERSON, DISEASE, DAY, FEES),
            "get": lambda: sandboxed.get(settled.settlement_id),
            "reverse": lambda: sandboxed.reverse(settled.settlement_id),
            "void": lambda: sandboxed.void(settled.msgid),
            "reconcile": lambda: sandboxed.reconcile(*YEAR),
        }
        refused = {name: refusal(call) for name, call in calls.items()}
        assert refused == dict.fromkeys(calls, ("PERMISSION_DENIED", "SESSIONS_DISABLED"))
        # The refused calls changed nothing: the one settlement is still there, still settled.
        assert plain.get(settled.settlement_id).status == pb.SETTLEMENT_STATUS_SETTLED
        assert plain.reconcile(*YEAR).platform.count == 1
    finally:
        sandboxed.close()
        plain.close()


def test_serve_no_sessions_flag_refuses_the_header(server_process: Callable[..., ServerProcess], tmp_path):
    process = server_process(tmp_path / "plain.db", "--no-sessions")
    sandboxed = Hospital.connect(process.target, CANCER_HOSPITAL, session="sessions-test-a")
    plain = Hospital.connect(process.target, CANCER_HOSPITAL)
    try:
        assert refusal(lambda: sandboxed.verify(PERSON, DISEASE, DAY)) == (
            "PERMISSION_DENIED",
            "SESSIONS_DISABLED",
        )
        assert plain.verify(PERSON, DISEASE, DAY).eligible
    finally:
        sandboxed.close()
        plain.close()
