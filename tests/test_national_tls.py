"""The national door's transport: mutual TLS (the institution from the client certificate,
as on the gRPC door) and bearer tokens beside x-tif-* signatures under --auth token. Real
servers on free ports, certificates from tests/pki.py, posted to with httpx."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from settlesim.clients import national
from settlesim.clients.hospital import Fee, Hospital, MsgidFactory, fee_items
from settlesim.clients.secure import channel_credentials
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.v1 import settlement_service_pb2 as pb

from tests.pki import Issued, PlatformPki

CANCER, FUWAI, QINGHAI = "H11010500001", "H11010200002", "63000000000000000001"


def sign_in(institution: str, n: int = 1) -> dict[str, Any]:
    return {"infno": "9001", "msgid": f"{institution}2021120909{n:06d}", "fixmedins_code": institution,
            "input": {"signIn": {}}}  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path) -> PlatformPki:
    return PlatformPki(tmp_path / "pki")


@pytest.fixture
def mtls(tmp_path: Path, pki: PlatformPki) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", national_port=0, auth="mtls",
                                 tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.cert))  # fmt: skip
    yield running
    running.stop(grace=1)


def client(pki: PlatformPki, running: RunningServer, issued: Issued | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if issued is not None:
        context.load_cert_chain(str(issued.cert), str(issued.key))
    return httpx.Client(base_url=f"https://127.0.0.1:{running.national_port}", verify=context, timeout=30)


def post(http: httpx.Client, envelope: dict[str, Any]) -> dict[str, Any]:
    response = http.post(national.PATH, content=national.encode(envelope), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return national.decode(response.content)


def test_with_mutual_tls_the_client_certificate_names_the_institution_on_both_doors(mtls, pki):
    """The Cancer Hospital's certificate (CN H11010500001) settles the 2021 Qinghai visit
    through the national door: 179.63 = fund 129.63 + patient 50.00 (deductible 50 at 100 %,
    docs/domain.md); the gRPC door, with the same certificate, reads the same settlement."""
    with client(pki, mtls, pki.cancer) as http:
        assert post(http, sign_in(CANCER))["infcode"] == 0
        request = pb.SettlementRequest(
            msgid=f"{CANCER}20211209093000000001",
            visit=pb.Visit(institution_code=CANCER, person=pb.PersonRef(person_no=QINGHAI), disease_code="M00503",
                           visit_date="2021-12-09"),
            items=fee_items([Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]),
        )  # fmt: skip
        played = national.play_visit(lambda e: post(http, e), request, MsgidFactory(CANCER))
        s = played.setlinfo
        assert (s["medfee_sumamt"], s["fund_pay_sumamt"], s["psn_part_amt"]) == (
            Decimal("179.63"), Decimal("129.63"), Decimal("50.00"))  # fmt: skip
        # Acting for another institution with this certificate is refused, as on gRPC.
        posing = post(http, sign_in(FUWAI, 2))
        assert (posing["infcode"], posing["err_reason"]) == (-1, "INSTITUTION_NOT_CALLER")
    creds = channel_credentials(pki.ca.cert.read_bytes(), pki.cancer.cert.read_bytes(), pki.cancer.key.read_bytes())
    with grpc.secure_channel(mtls.target, creds) as channel:
        his = Hospital(channel, CANCER, tls=True)
        assert his.get(s["setl_id"]).totals.fund_pays_fen == 12963


def test_with_mutual_tls_a_san_names_the_institution_and_a_name_of_none_is_unauthenticated(mtls, pki):
    gateway = pki.ca.issue("gateway-01", dns=(FUWAI,))  # CN a gateway, the SAN the institution
    with client(pki, mtls, gateway) as http:
        assert post(http, sign_in(FUWAI))["infcode"] == 0
    nobody = pki.ca.issue("not-an-institution")
    with client(pki, mtls, nobody) as http:
        answer = post(http, sign_in(CANCER))
        assert (answer["infcode"], answer["err_reason"]) == (-1, "CALLER_UNAUTHENTICATED")
        assert "not-an-institution" in answer["err_detail"]


@pytest.mark.parametrize("who", ["forged", "none"])
def test_with_mutual_tls_a_certificate_of_another_ca_or_none_fails_the_handshake(mtls, pki, who):
    """A certificate the right name but from a rogue CA, or none: no envelope is answered
    (the TLS handshake fails) and the ledger is not touched."""
    with client(pki, mtls, pki.forged if who == "forged" else None) as http, pytest.raises(httpx.TransportError):
        post(http, sign_in(CANCER))
    assert mtls.ledger.counts() == {}


def test_with_auth_token_a_bearer_token_is_an_identity_as_on_grpc(tmp_path, pki):
    """Beside x-tif-* signatures, `authorization: Bearer <token>` (institutions.yaml's
    dev-token-H11010500001, the gRPC door's token), over HTTPS."""
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", national_port=0, auth="token",
                                 tls_cert=pki.server.cert, tls_key=pki.server.key))  # fmt: skip
    try:
        with client(pki, running, None) as http:

            def answer(token: str, institution: str, n: int) -> dict[str, Any]:
                headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
                body = national.encode(sign_in(institution, n))
                return national.decode(http.post(national.PATH, content=body, headers=headers).content)

            assert answer("dev-token-H11010500001", CANCER, 1)["infcode"] == 0
            assert answer("not-a-token", CANCER, 2)["err_reason"] == "CALLER_UNAUTHENTICATED"
            assert answer("dev-token-H11010200002", CANCER, 3)["err_reason"] == "INSTITUTION_NOT_CALLER"
            unsigned = post(http, sign_in(CANCER, 4))
            assert unsigned["err_reason"] == "CALLER_UNAUTHENTICATED" and "Bearer" in unsigned["err_detail"]
    finally:
        running.stop(grace=1)



QINGHAI_SEED = Path(__file__).parents[1] / "clients/conformance/cases/seeds/qinghai-breast-cancer-beijing.yaml"


def test_replay_through_the_national_door_with_a_client_certificate_and_with_tokens(tmp_path, pki):
    """`replay --door national` with --ca/--cert/--key against mutual TLS (sandboxes asked
    for with --sessions), and with --tokens against --auth token over HTTPS: the Qinghai
    seed passes both ways; a token the door does not know stops the run in one line."""
    from tests.conftest import settlesim

    running = start(ServerConfig(port=0, db_path=tmp_path / "m.db", national_port=0, auth="mtls", allow_sessions=True,
                                 tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.cert))  # fmt: skip
    try:
        result = settlesim(
            "replay", str(QINGHAI_SEED), "--door", "national", "--target", f"127.0.0.1:{running.national_port}",
            "--ca", str(pki.ca.cert), "--cert", str(pki.cancer.cert), "--key", str(pki.cancer.key),
        )  # fmt: skip
        assert result.returncode == 0 and "1 case: 1 passed" in result.stdout, result.stdout + result.stderr
    finally:
        running.stop(grace=1)
    running = start(ServerConfig(port=0, db_path=tmp_path / "t.db", national_port=0, auth="token", allow_sessions=True,
                                 tls_cert=pki.server.cert, tls_key=pki.server.key))  # fmt: skip
    try:
        target = f"127.0.0.1:{running.national_port}"
        for token, expected in (("dev-token-H11010500001", 0), ("not-a-token", 2)):
            tokens = tmp_path / f"{token}.yaml"
            tokens.write_text(f"{CANCER}: {token}\n", encoding="utf-8")
            result = settlesim("replay", str(QINGHAI_SEED), "--door", "national", "--target", target,
                               "--ca", str(pki.ca.cert), "--tokens", str(tokens))  # fmt: skip
            assert result.returncode == expected, result.stdout + result.stderr
        assert f"refused the token for {CANCER} in {tokens}" in result.stderr
        assert "the bearer token belongs to no institution" in result.stderr
    finally:
        running.stop(grace=1)
