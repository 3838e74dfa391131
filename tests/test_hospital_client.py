"""The mock hospital: msgids in the national format, never repeated within a
process; which failures leave a settlement uncertain (retried, then voided) and
which are definite (a refusal with ErrorInfo, a failed TLS handshake, a request
over the size limit)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from pki import PlatformPki
from settlesim.clients.hospital import (
    Fee,
    Hospital,
    MessageTooLarge,
    MsgidFactory,
    SettlementUncertain,
    TlsHandshakeRefused,
    answer_lost,
    transport_refusal,
)
from settlesim.clients.rejections import rejection_of
from settlesim.clients.resilience import HospitalBook, settle_reliably
from settlesim.clients.secure import connect
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.status import to_status
from settlesim.v1 import settlement_service_pb2 as pb


def test_msgid_has_the_national_format():
    msgid = MsgidFactory("H11010500001", clock=lambda: datetime(2021, 12, 9, 10, 30, 5))()
    assert re.fullmatch(r"H11010500001202112091030050\d{3}", msgid)
    assert len(msgid) == 12 + 14 + 4


def test_two_factories_for_one_institution_never_repeat_a_msgid():
    """Two HIS objects for one institution created in the same second once handed out equal msgids."""
    first, second = MsgidFactory("H99000000001"), MsgidFactory("H99000000001")
    seen: list[str] = []
    lock = threading.Lock()

    def take(factory: MsgidFactory) -> None:
        for _ in range(3000):
            msgid = factory()
            with lock:
                seen.append(msgid)

    threads = [threading.Thread(target=take, args=(f,)) for f in (first, second, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 12000


# --- which failures are lost answers -------------------------------------------------------------


class FakeError(grpc.RpcError):
    """An RpcError as a stub raises it: a code, details, and trailers that may
    carry a google.rpc.Status with ErrorInfo."""

    def __init__(self, code: grpc.StatusCode, details: str = "", reason: str = "") -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, ()
        if reason:
            status = to_status(Refusal(Reason(reason), details), code.value[0])
            self._details, self._trailers = status.details, status.trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


LOST = [
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNKNOWN",
    "CANCELLED",
    "ABORTED",
]


@pytest.mark.parametrize("code", LOST)
def test_a_status_without_errorinfo_is_a_lost_answer_whatever_its_code(code):
    assert answer_lost(FakeError(grpc.StatusCode[code], "Socket closed"))
    # The platform's injected faults stand for lost answers too, whichever kind.
    assert answer_lost(FakeError(grpc.StatusCode[code], "injected", reason="INJECTED_FAULT"))


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("FAILED_PRECONDITION", "REGISTRATION_EXPIRED"),
        ("INVALID_ARGUMENT", "FIELD_MISSING"),
        ("UNAUTHENTICATED", "CALLER_UNAUTHENTICATED"),
        ("UNAVAILABLE", "MSGID_VOIDED"),  # a reason makes any code an answer
        ("UNIMPLEMENTED", ""),  # not a code a lost answer comes with
        ("PERMISSION_DENIED", ""),
    ],
)
def test_a_refusal_with_errorinfo_is_an_answer(code, reason):
    assert not answer_lost(FakeError(grpc.StatusCode[code], "refused", reason=reason))


class FakeStub:
    """SettleVisit / VoidByMessageId that fail with the errors given, in turn, then answer."""

    def __init__(self, *errors: grpc.RpcError) -> None:
        self.errors = list(errors)
        self.sent: list[tuple[str, object]] = []

    def _answer(self, name: str, response: object) -> Callable[..., object]:
        def call(request: object, **_: object) -> object:
            self.sent.append((name, request))
            if self.errors:
                raise self.errors.pop(0)
            return response

        return call

    def __getattr__(self, name: str) -> Callable[..., object]:
        responses = {
            "SettleVisit": pb.SettleVisitResponse(settlement=pb.Settlement(settlement_id="S1")),
            "VoidByMessageId": pb.VoidByMessageIdResponse(voided_settlement=False),
        }
        return self._answer(name, responses[name])


@pytest.fixture
def offline() -> Iterator[Callable[..., Hospital]]:
    """A Hospital whose stub is a FakeStub (its channel is never used)."""
    opened: list[Hospital] = []

    def make(*errors: grpc.RpcError, **kwargs: object) -> Hospital:
        his = Hospital.connect("127.0.0.1:1", "H11010500001", backoff=0, **kwargs)
        his.stub = FakeStub(*errors)  # type: ignore[assignment]
        opened.append(his)
        return his

    yield make
    for his in opened:
        his.close()


@pytest.mark.parametrize("code", ["INTERNAL", "UNKNOWN", "CANCELLED", "RESOURCE_EXHAUSTED"])
def test_a_lost_answer_is_retried_with_the_same_msgid(offline, code):
    his = offline(FakeError(grpc.StatusCode[code], "stream reset"), retries=2)
    request = his.settlement_request(
        "63000000000000000001", "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000)]
    )
    assert his.settle_request(request).settlement.settlement_id == "S1"
    assert [r.request.msgid for _, r in his.stub.sent] == [request.msgid] * 2  # type: ignore[attr-defined]


def test_retries_running_out_on_internal_void_the_msgid(offline):
    """INTERNAL without ErrorInfo after the settle was sent: uncertain, so
    settle_reliably voids the msgid, and the visit is certainly not settled."""
    his = offline(*[FakeError(grpc.StatusCode.INTERNAL, "RST_STREAM")] * 2, retries=1)
    book = HospitalBook()
    outcome = settle_reliably(
        his, book, "63000000000000000001", "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000)]
    )
    calls = [name for name, _ in his.stub.sent]  # type: ignore[attr-defined]
    assert calls == ["SettleVisit", "SettleVisit", "VoidByMessageId"]
    assert outcome.voided and outcome.entry is None and book.entries() == []
    assert his.stub.sent[2][1].original_msgid == outcome.msgid  # type: ignore[attr-defined]


def test_a_refusal_with_a_reason_is_neither_retried_nor_voided(offline):
    his = offline(FakeError(grpc.StatusCode.FAILED_PRECONDITION, "expired", reason="REGISTRATION_EXPIRED"))
    with pytest.raises(grpc.RpcError) as caught:
        settle_reliably(his, HospitalBook(), "63000000000000000001", "M00503", "2021-12-09", [Fee("X", 1)])
    assert not isinstance(caught.value, SettlementUncertain)
    assert [name for name, _ in his.stub.sent] == ["SettleVisit"]  # type: ignore[attr-defined]


# --- a request too large to send ------------------------------------------------------------------


def test_a_request_over_the_platforms_size_limit_is_not_retried_nor_voided(server, tmp_path):
    """The platform's transport refuses a message over 1 MiB before parsing it
    (RESOURCE_EXHAUSTED without ErrorInfo): nothing ran, a retry would be refused
    the same way, and there is nothing to void."""
    his = Hospital.connect(server.target, "H11010500001", retries=3, backoff=5)  # a retry would take 5 s
    try:
        huge = [Fee("A-CONSULT-001", 5000, name="x" * (1 << 20))]
        started = time.monotonic()
        with pytest.raises(MessageTooLarge) as caught:
            settle_reliably(his, HospitalBook(), "63000000000000000001", "M00503", "2021-12-09", huge)
        assert time.monotonic() - started < 4
        assert not caught.value.ran and caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(caught.value).startswith("request too large (") and "platform's limit is 1048576" in str(
            caught.value
        )
        assert rejection_of(caught.value).code == "RESOURCE_EXHAUSTED"  # still reads as an RpcError
        assert server.ledger.counts() == {}
        # This client's own send limit is reported the same way, before anything is sent.
        small = Hospital(
            grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 1000)]),
            "H11010500001",
        )
        with pytest.raises(MessageTooLarge, match="this client's limit is 1000 bytes"):
            small.settle(
                "63000000000000000001", "M00503", "2021-12-09", [Fee("A-CONSULT-001", 1, name="y" * 2000)]
            )
        small.close()
    finally:
        his.close()


def test_an_answer_over_the_clients_receive_limit_is_uncertain():
    """The call ran; only its answer was too large to take: a settle is then
    uncertain (not retried: the retry's answer would be as large)."""
    error = FakeError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Stream removed (CLIENT: Received message larger than max (109 vs. 10))",
    )
    refused = transport_refusal(error)
    assert isinstance(refused, MessageTooLarge) and refused.ran


# --- TLS handshakes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PlatformPki:
    return PlatformPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_platform(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(**settings: object) -> RunningServer:
        started.append(
            start(ServerConfig(port=0, db_path=tmp_path / f"l{len(started)}.db", max_workers=2, **settings))
        )
        return started[-1]

    yield make
    for running in started:
        running.stop(grace=0)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("forged", "TLS handshake refused by 127.0.0.1:"),
        ("none", "TLS handshake refused by 127.0.0.1:"),
        ("untrusted-server", "is not signed by a CA this client trusts (CERTIFICATE_VERIFY_FAILED)"),
        ("plain-server", "does not speak TLS on this port"),
    ],
)
def test_a_failed_tls_handshake_is_one_clear_line_and_never_retried(
    tls_platform, certs, monkeypatch, who, expected
):
    """Before: UNAVAILABLE "Socket closed", retried, then a pointless void. Now:
    TlsHandshakeRefused at the first attempt, saying what to check; nothing was
    sent, so nothing is voided."""
    if who == "untrusted-server":
        running = tls_platform(tls_cert=certs.rogue_server.cert, tls_key=certs.rogue_server.key)
    elif who == "plain-server":
        running = tls_platform()
    else:
        running = tls_platform(
            tls_cert=certs.server.cert, tls_key=certs.server.key, client_ca=certs.ca.cert, auth="mtls"
        )
    creds = {"cert": certs.forged.cert, "key": certs.forged.key} if who == "forged" else {}
    his = connect(running.target, "H11010500001", ca=certs.ca.cert, retries=3, deadline=5, **creds)
    sleeps: list[float] = []
    monkeypatch.setattr("settlesim.clients.hospital.time.sleep", sleeps.append)
    voids: list[str] = []
    monkeypatch.setattr(his, "void", lambda msgid, **_: voids.append(msgid))
    try:
        with pytest.raises(TlsHandshakeRefused) as caught:
            settle_reliably(
                his, HospitalBook(), "63000000000000000001", "M00503", "2021-12-09", [Fee("X", 1)]
            )
    finally:
        his.close()
    message = str(caught.value)
    assert expected in message and "\n" not in message
    if who in {"forged", "none"}:
        assert "client certificate" in message and "platform's CA" in message
    assert sleeps == [] and voids == []  # not retried, nothing to void
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # still an RpcError for older callers
    assert running.ledger.counts() == {}


def test_a_good_certificate_still_settles(tls_platform, certs):
    running = tls_platform(
        tls_cert=certs.server.cert, tls_key=certs.server.key, client_ca=certs.ca.cert, auth="mtls"
    )
    his = connect(
        running.target, "H11010500001", ca=certs.ca.cert, cert=certs.cancer.cert, key=certs.cancer.key
    )
    try:
        fees = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
        assert (
            his.settle("63000000000000000001", "M00503", "2021-12-09", fees).settlement.totals.fund_pays_fen
            == 12963
        )
    finally:
        his.close()
