"""Identity and access: TLS, mutual TLS, bearer tokens, one institution never
acting as or on behalf of another, and the append-only audit log.

Every certificate is generated for the test run (tests/pki.py) into a temporary
directory. Money figures are the reference case of test_server_settlement:
fees 50.00 + 129.63 = 179.63, 50-yuan deductible, ratio 100% -> fund 12963,
patient 5000."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CANCER_HOSPITAL, FUWAI, refused
from pki import Issued, PlatformPki
from settlesim.clients.hospital import Fee, TlsHandshakeRefused
from settlesim.server.audit import AuditLog, verify_chain
from settlesim.v1 import settlement_service_pb2 as pb

QINGHAI = "63000000000000000001"
TUMOUR = "M00503"
REFERENCE_FEES = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
TOKENS = {CANCER_HOSPITAL: "dev-token-H11010500001", FUWAI: "dev-token-H11010200002"}


class Pki(PlatformPki):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.fuwai_by_san: Issued = self.ca.issue("his-gateway-fuwai", dns=(FUWAI,))
        self.stranger: Issued = self.ca.issue("not-a-hospital")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def fund_and_patient(answer: pb.SettleVisitResponse) -> tuple[int, int]:
    return answer.settlement.totals.fund_pays_fen, answer.settlement.totals.patient_pays_fen


# --- TLS and mutual TLS ---------------------------------------------------------------------


def test_tls_connection_works_and_plaintext_is_refused(platform, client, pki):
    running = platform(tls_cert=pki.server.cert, tls_key=pki.server.key)
    his = client(running.target, CANCER_HOSPITAL, ca=pki.ca.cert)
    assert fund_and_patient(his.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES)) == (12963, 5000)
    plain = client(running.target, CANCER_HOSPITAL, retries=0, deadline=5)
    assert refused(lambda: plain.verify(QINGHAI, TUMOUR, "2021-12-09")).code == "UNAVAILABLE"


def test_client_refuses_a_server_it_does_not_trust(platform, client, pki):
    """The other wrong certificate: the hospital trusts only the national CA, the
    server shows one from elsewhere. The client's error says why."""
    rogue_server = pki.rogue.issue("localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    running = platform(tls_cert=rogue_server.cert, tls_key=rogue_server.key)
    his = client(running.target, CANCER_HOSPITAL, ca=pki.ca.cert, retries=0, deadline=5)
    rejection = refused(lambda: his.verify(QINGHAI, TUMOUR, "2021-12-09"))
    assert rejection.code == "UNAVAILABLE" and "CERTIFICATE_VERIFY_FAILED" in rejection.message


def test_mtls_identity_from_certificate_cn_settles(platform, client, pki):
    running = platform(tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.cert, auth="mtls")
    his = client(running.target, CANCER_HOSPITAL, ca=pki.ca.cert, cert=pki.cancer.cert, key=pki.cancer.key)
    answer = his.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES)
    assert fund_and_patient(answer) == (12963, 5000)
    assert his.get(answer.settlement.settlement_id).status == pb.SETTLEMENT_STATUS_SETTLED


def test_mtls_identity_from_subject_alternative_name(platform, client, pki):
    """CN names a gateway, the SAN names the institution (Fuwai): Fuwai may act,
    and only for itself."""
    running = platform(tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.cert, auth="mtls")
    creds = {"ca": pki.ca.cert, "cert": pki.fuwai_by_san.cert, "key": pki.fuwai_by_san.key}
    fuwai = client(running.target, FUWAI, **creds)
    assert fuwai.reconcile("2021-01-01", "2021-12-31").platform.count == 0
    posing = client(running.target, CANCER_HOSPITAL, **creds)
    rejection = refused(lambda: posing.reconcile("2021-01-01", "2021-12-31"))
    assert (rejection.code, rejection.reason) == ("PERMISSION_DENIED", "INSTITUTION_NOT_CALLER")


@pytest.mark.parametrize("who", ["forged", "none"])
def test_mtls_refuses_certificate_from_another_ca_or_none_at_handshake(platform, client, pki, who):
    """The TLS handshake fails before any RPC runs: the ledger is never touched.
    (The server's gRPC log names the cause: CERTIFICATE_VERIFY_FAILED or
    PEER_DID_NOT_RETURN_A_CERTIFICATE.)"""
    running = platform(tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.cert, auth="mtls")
    creds = {"cert": pki.forged.cert, "key": pki.forged.key} if who == "forged" else {}
    his = client(running.target, CANCER_HOSPITAL, ca=pki.ca.cert, retries=0, deadline=5, **creds)
    with pytest.raises(TlsHandshakeRefused, match=r"TLS handshake refused by .*signed by the platform's CA"):
        his.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES)  # not retried: nothing was sent
    assert running.ledger.counts() == {}


def test_mtls_certificate_naming_no_institution_is_unauthenticated(platform, client, pki):
    running = platform(tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.cert, auth="mtls")
    his = client(
        running.target, CANCER_HOSPITAL, ca=pki.ca.cert, cert=pki.stranger.cert, key=pki.stranger.key
    )
    rejection = refused(lambda: his.verify(QINGHAI, TUMOUR, "2021-12-09"))
    assert (rejection.code, rejection.reason) == ("UNAUTHENTICATED", "CALLER_UNAUTHENTICATED")
    assert "not-a-hospital" in rejection.message


def test_mtls_caller_naming_another_institution_is_refused(platform, client, pki):
    running = platform(tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.cert, auth="mtls")
    posing = client(running.target, FUWAI, ca=pki.ca.cert, cert=pki.cancer.cert, key=pki.cancer.key)
    rejection = refused(lambda: posing.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES))
    assert (rejection.code, rejection.reason) == ("PERMISSION_DENIED", "INSTITUTION_NOT_CALLER")
    assert "the caller is H11010500001" in rejection.message
    assert running.ledger.counts() == {}


# --- bearer tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [(None, "no authorization metadata"), ("dev-token-nobody", "belongs to no institution")],
)
def test_token_missing_or_wrong_is_unauthenticated(platform, client, token, expected):
    running = platform(auth="token")
    his = client(running.target, CANCER_HOSPITAL, token=token)
    rejection = refused(lambda: his.verify(QINGHAI, TUMOUR, "2021-12-09"))
    assert (rejection.code, rejection.reason) == ("UNAUTHENTICATED", "CALLER_UNAUTHENTICATED")
    assert expected in rejection.message


def test_token_right_works_and_foreign_code_is_refused(platform, client):
    running = platform(auth="token")
    his = client(running.target, CANCER_HOSPITAL, token=TOKENS[CANCER_HOSPITAL])
    assert fund_and_patient(his.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES)) == (12963, 5000)
    posing = client(running.target, CANCER_HOSPITAL, token=TOKENS[FUWAI])
    rejection = refused(lambda: posing.settle(QINGHAI, TUMOUR, "2021-12-10", REFERENCE_FEES))
    assert (rejection.code, rejection.reason) == ("PERMISSION_DENIED", "INSTITUTION_NOT_CALLER")


def test_token_over_tls(platform, client, pki):
    running = platform(auth="token", tls_cert=pki.server.cert, tls_key=pki.server.key)
    his = client(running.target, CANCER_HOSPITAL, ca=pki.ca.cert, token=TOKENS[CANCER_HOSPITAL])
    assert his.verify(QINGHAI, TUMOUR, "2021-12-09").eligible


def test_one_institution_cannot_touch_anothers_settlement(platform, client):
    """Fuwai, properly authenticated as itself, holds the Cancer Hospital's
    settlement id and msgid: it can neither read, reverse, void nor reconcile them.
    A settlement id is the platform's: naming another's is INSTITUTION_NOT_CALLER.
    A msgid is its sender's: Fuwai's msgid of that name is not the Cancer
    Hospital's, so a get finds nothing and a void voids nothing of it (it only
    blocks Fuwai's own, unused msgid); Fuwai cannot even learn whether the Cancer
    Hospital used it (its msgids are guessable: code + time + sequence)."""
    running = platform(auth="token")
    cancer = client(running.target, CANCER_HOSPITAL, token=TOKENS[CANCER_HOSPITAL])
    settled = cancer.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES).settlement
    fuwai = client(running.target, FUWAI, token=TOKENS[FUWAI])
    attempts = {
        "get": lambda: fuwai.get(settled.settlement_id),
        "reverse": lambda: fuwai.reverse(settled.settlement_id),
    }
    for name, attempt in attempts.items():
        rejection = refused(attempt)
        assert (rejection.code, rejection.reason) == ("PERMISSION_DENIED", "INSTITUTION_NOT_CALLER"), name
    rejection = refused(lambda: fuwai.get(msgid=settled.msgid))
    assert (rejection.code, rejection.reason) == ("NOT_FOUND", "SETTLEMENT_NOT_FOUND")
    assert not fuwai.void(settled.msgid).voided_settlement
    # Reconciling the other's books means naming the other institution: refused too.
    request = pb.ReconcileRequest(
        institution_code=CANCER_HOSPITAL, start_date="2021-01-01", end_date="2021-12-31"
    )
    rejection = refused(lambda: fuwai.stub.Reconcile(request, metadata=fuwai.metadata, timeout=10))
    assert (rejection.code, rejection.reason) == ("PERMISSION_DENIED", "INSTITUTION_NOT_CALLER")
    assert fuwai.reconcile("2021-01-01", "2021-12-31").platform.count == 0  # its own books are empty
    # The Cancer Hospital's settlement is untouched.
    assert cancer.get(settled.settlement_id).status == pb.SETTLEMENT_STATUS_SETTLED
    assert cancer.reconcile("2021-01-01", "2021-12-31").platform.fund_pays_fen == 12963


# --- audit log ------------------------------------------------------------------------------


def test_audit_log_records_every_call_and_is_append_only_across_restart(platform, client, tmp_path):
    audit = tmp_path / "audit.jsonl"
    running = platform(auth="token", audit_log=audit)
    his = client(running.target, CANCER_HOSPITAL, token=TOKENS[CANCER_HOSPITAL])
    settled = his.settle(QINGHAI, TUMOUR, "2021-12-09", REFERENCE_FEES).settlement
    posing = client(running.target, FUWAI, token=TOKENS[CANCER_HOSPITAL])
    refused(lambda: posing.verify(QINGHAI, TUMOUR, "2021-12-09"))
    anonymous = client(running.target, CANCER_HOSPITAL)
    refused(lambda: anonymous.get(settled.settlement_id))
    running.stop(grace=1)

    first = audit.read_text().splitlines()
    records = [json.loads(line) for line in first]
    assert [(r["rpc"], r["identity"], r["institution"], r["code"], r["reason"]) for r in records] == [
        ("SettleVisit", CANCER_HOSPITAL, CANCER_HOSPITAL, "OK", ""),
        ("VerifyRegistration", CANCER_HOSPITAL, FUWAI, "PERMISSION_DENIED", "INSTITUTION_NOT_CALLER"),
        ("GetSettlement", "", CANCER_HOSPITAL, "UNAUTHENTICATED", "CALLER_UNAUTHENTICATED"),
    ]
    assert records[0]["msgid"] == settled.msgid and records[0]["settlement_id"] == settled.settlement_id
    assert records[2]["settlement_id"] == settled.settlement_id
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") and r["time"] for r in records)

    again = platform(auth="token", audit_log=audit)
    msgids = his.next_msgid  # the same HIS, reconnected: its msgid sequence goes on
    his = client(again.target, CANCER_HOSPITAL, token=TOKENS[CANCER_HOSPITAL])
    his.next_msgid = msgids
    his.reverse(settled.settlement_id)
    again.stop(grace=1)
    lines = audit.read_text().splitlines()
    assert lines[:3] == first and len(lines) == 4
    assert json.loads(lines[3])["rpc"] == "ReverseSettlement"
    assert verify_chain(audit) == []

    # Editing a past line breaks the chain of digests.
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(audit.read_text().replace('"code":"PERMISSION_DENIED"', '"code":"OK"'))
    assert verify_chain(tampered) == ["line 3: prev does not match the line before"]
    ok = subprocess.run(
        [sys.executable, "-m", "settlesim", "audit", "verify", "--no-anchor", str(audit)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "4 records, chain OK" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "settlesim", "audit", "verify", "--no-anchor", str(tampered)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "FAIL line 3" in bad.stdout


# --- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--auth", "mtls"], "--auth mtls needs --client-ca"),
        (["--auth", "token", "--host", "0.0.0.0"], "clear text"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--audit-log", "a.jsonl", "--processes", "2"], "--audit-log needs a single server process"),
    ],
)
def test_serve_refuses_unsafe_combinations_in_one_line(tmp_path, args, expected):
    result = subprocess.run(
        [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(tmp_path / "l.db"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert expected in result.stderr and result.stderr.strip().count("\n") == 0


class Serve:
    """`settlesim serve` as a subprocess whose start-up lines the test reads."""

    def __init__(self, db: Path, *args: str) -> None:
        command = [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(db), "--plain-logs"]
        self.proc = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "settlesim serving on 127.0.0.1:PORT (db ...)"
        assert "serving on" in line, line
        self.target = line.split()[3]

    def stop(self) -> str:
        """SIGTERM, and the log it wrote."""
        self.proc.terminate()
        _, log = self.proc.communicate(timeout=30)
        return log


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def make(*args: str) -> Serve:
        started.append(Serve(tmp_path / "serve.db", *args))
        return started[-1]

    yield make
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.communicate()


def test_serve_says_insecure_by_default(serve):
    log = serve().stop()
    assert "INSECURE local development mode" in log and "institution code in each request is trusted" in log


def test_serve_with_mtls_flags(serve, client, pki):
    process = serve(
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--client-ca", str(pki.ca.cert),
    )  # fmt: skip
    his = client(process.target, CANCER_HOSPITAL, ca=pki.ca.cert, cert=pki.cancer.cert, key=pki.cancer.key)
    assert his.verify(QINGHAI, TUMOUR, "2021-12-09").eligible
    posing = client(process.target, FUWAI, ca=pki.ca.cert, cert=pki.cancer.cert, key=pki.cancer.key)
    assert refused(lambda: posing.verify(QINGHAI, TUMOUR, "2021-12-09")).reason == "INSTITUTION_NOT_CALLER"
    forged = client(process.target, CANCER_HOSPITAL, ca=pki.ca.cert, cert=pki.forged.cert, key=pki.forged.key)
    assert refused(lambda: forged.verify(QINGHAI, TUMOUR, "2021-12-09")).code == "UNAVAILABLE"
    log = process.stop()
    assert "auth mtls, TLS mutual" in log and "INSECURE" not in log
    # The operator's log names why the forged certificate was turned away.
    assert "Handshake failed" in log and "CERTIFICATE_VERIFY_FAILED" in log


def test_audit_record_torn_by_a_crash_is_reported_and_the_chain_goes_on(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record({"rpc": "SettleVisit"})
    log.close()
    with path.open("a") as f:
        f.write('{"rpc":"ReverseSett')  # the process died mid-write
    log = AuditLog(path)
    log.record({"rpc": "GetSettlement"})
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["rpc"] == "GetSettlement"
    assert verify_chain(path) == ["line 2: not JSON", "line 2: prev does not match the line before"]
