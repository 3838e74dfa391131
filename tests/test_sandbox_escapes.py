"""Every way out of a sandbox (x-settlesim-session, docs/sessions.md) that issue 9 found, tried
through a real server on a real port, each refused or contained:

- paying one person's annual cap once per session: contained — each sandbox is its own copy of
  the platform, every answer from it says so, the real ledger's yearly totals and reconciliation
  never see its money, and `settlesim ledger check` reports the real ledger and the sandboxes apart;
- another institution naming a session it does not belong to: PERMISSION_DENIED /
  SESSION_NOT_YOURS, also after a restart (ownership is in the ledger), and under tokens;
- a repeated x-settlesim-session (or authorization) header: INVALID_ARGUMENT / DUPLICATE_HEADER
  with a BadRequest naming it, on every call, with or without --no-sessions, and the audit log
  records what the service did;
- sessions under --auth token / mtls: off unless the operator says --sessions.

Figures (server/worlds/default): 65320000000000000001 is insured in Hotan (653200, 390); its
M00503 policy (policies/653200.yaml) has deductible 0, ratio 75 %, annual cap 10,000,000 fen.
A-TARGET-001 is class A in Beijing (catalogs/110000.yaml), where the Cancer Hospital is.
A visit of 12 × 1,000,000 = 12,000,000 fen with the cap unused: fund round(12,000,000 × 75 %) =
9,000,000, patient 3,000,000, cap left 1,000,000. The same visit again: 9,000,000 > 1,000,000 left,
so fund 1,000,000 (the cap is reached), patient 11,000,000. Two visits: total 24,000,000, fund
10,000,000 (= the cap), patient 14,000,000 — per namespace.

The other visits are 14020000000000000001 (Datong, M03900 hypertension, registered city-level to
Beijing from 2025; policies/140200.yaml: deductible 10000, ratio 60 %) at the Cancer Hospital and
Fuwai, both in Beijing and both open for M03900: 30000 fen of A-CONSULT-001 (class A) apply the
whole deductible 10000 on the person's first visit of the year and 0 on the next."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import grpc
import pytest
from conftest import CANCER_HOSPITAL, FUWAI, ServerProcess, ledger_check, refused, settlesim
from pki import PlatformPki
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.secure import connect
from settlesim.server.ledger.sqlite import check_file
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc

HOTAN, TUMOUR, DAY = "65320000000000000001", "M00503", "2025-03-01"
DATONG, HYPERTENSION = "14020000000000000001", "M03900"
TWELVE_MILLION = [Fee("A-TARGET-001", 1_000_000, quantity=12)]
VISIT = [Fee("A-CONSULT-001", 30_000)]
YEAR = ("2025-01-01", "2025-12-31")
SESSION, MEMBERS = "x-settlesim-session", "x-settlesim-session-members"
TOKENS = {CANCER_HOSPITAL: "dev-token-H11010500001", FUWAI: "dev-token-H11010200002"}


def pay_the_cap(hospital: Hospital) -> list[pb.Settlement]:
    """Two Hotan visits: 9,000,000 then 1,000,000 from the fund, the cap reached (see the module)."""
    first = hospital.settle(HOTAN, TUMOUR, DAY, TWELVE_MILLION).settlement
    second = hospital.settle(HOTAN, TUMOUR, DAY, TWELVE_MILLION).settlement
    assert (first.totals.fund_pays_fen, first.totals.cap_remaining_fen) == (9_000_000, 1_000_000)
    assert (second.totals.fund_pays_fen, second.totals.patient_pays_fen) == (1_000_000, 11_000_000)
    assert second.totals.cap_remaining_fen == 0
    return [first, second]


# --- the annual cap, once per session: contained ----------------------------------------------


def test_an_annual_cap_paid_in_sandboxes_never_reaches_the_real_ledger(platform, client, tmp_path):
    running = platform()
    real = client(running.target)
    for settlement in pay_the_cap(real):
        assert settlement.sandbox == ""  # the real ledger's answers name no sandbox
    sandboxes = ["cap-1", "cap-2", "cap-3"]
    for name in sandboxes:
        sandboxed = client(running.target, session=name)
        for settlement in pay_the_cap(sandboxed):  # each sandbox is its own copy of the platform ...
            assert settlement.sandbox == name  # ... and every answer from it says so
        assert sandboxed.get(settlement.settlement_id).sandbox == name
        assert sandboxed.verify(HOTAN, TUMOUR, DAY).sandbox == name
        assert sandboxed.reconcile(*YEAR).sandbox == name
        assert sandboxed.void(sandboxed.next_msgid()).sandbox == name  # a void of nothing, too
        assert refused(lambda s=sandboxed: s.get("S-NOT-THERE")).metadata["sandbox"] == name
    # The real ledger paid the cap once: its reconciliation and its yearly totals hold only its own
    # two settlements (fund 9,000,000 + 1,000,000), not the sandboxes' 3 × 10,000,000.
    books = real.reconcile(*YEAR, include_entries=True)
    assert (books.platform.count, books.platform.fund_pays_fen, books.sandbox) == (2, 10_000_000, "")
    running.stop(grace=1)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        real_fund = db.execute(
            "SELECT fund_paid FROM yearly_totals WHERE session = '' AND person_no = ?", (HOTAN,)
        ).fetchall()
    assert real_fund == [(10_000_000,)]

    report = check_file(tmp_path / "ledger.db")
    assert report.problems == []
    real_figures, sandbox_figures = report.real, report.sandboxes
    assert (real_figures.sessions, real_figures.counts, real_figures.fund_pays) == (0, {"settled": 2}, 10_000_000)
    assert (real_figures.total, real_figures.patient_pays) == (24_000_000, 14_000_000)
    assert (sandbox_figures.sessions, sandbox_figures.counts) == (3, {"settled": 6})
    assert (sandbox_figures.total, sandbox_figures.fund_pays) == (3 * 24_000_000, 3 * 10_000_000)
    check = ledger_check(tmp_path / "ledger.db")
    assert check.returncode == 0, check.stdout
    lines = check.stdout.splitlines()
    assert lines[0] == "  real ledger: 2 settled; in force 2: total 24000000, fund 10000000, patient 14000000 fen"
    assert lines[1] == (
        "  sandboxes (3 sessions, apart from the real ledger): 6 settled; "
        "in force 6: total 72000000, fund 30000000, patient 42000000 fen"
    )
    listed = settlesim("ledger", "check", "--db", str(tmp_path / "ledger.db"), "--sessions")
    assert "  session cap-2 (H11010500001): 2 settled; in force 2: total 24000000," in listed.stdout


# --- joining another institution's session: refused -------------------------------------------


def test_another_institution_cannot_join_a_session(platform, client, tmp_path):
    running = platform()
    owner = client(running.target, CANCER_HOSPITAL, session="mine")
    # Before anything is written a session belongs to nobody: reading it shows nothing.
    intruder = client(running.target, FUWAI, session="mine")
    assert intruder.reconcile(*YEAR).platform.count == 0
    settled = owner.settle(DATONG, HYPERTENSION, DAY, VISIT).settlement  # opens it
    calls = {
        "verify": lambda: intruder.verify(DATONG, HYPERTENSION, DAY),
        "pre_settle": lambda: intruder.pre_settle(DATONG, HYPERTENSION, DAY, VISIT),
        "settle": lambda: intruder.settle(DATONG, HYPERTENSION, DAY, VISIT),
        "get": lambda: intruder.get(settled.settlement_id),
        "reverse": lambda: intruder.reverse(settled.settlement_id),
        "void": lambda: intruder.void(settled.msgid),
        "reconcile": lambda: intruder.reconcile(*YEAR),
    }
    answers = {name: refused(call) for name, call in calls.items()}
    assert {name: (r.code, r.reason) for name, r in answers.items()} == dict.fromkeys(
        calls, ("PERMISSION_DENIED", "SESSION_NOT_YOURS")
    )
    assert "session mine belongs to H11010500001" in answers["settle"].message
    # Naming itself a member does not let it in: the group is fixed when the session opens.
    self_invited = client(running.target, FUWAI, session="mine", session_members=(CANCER_HOSPITAL, FUWAI))
    assert refused(lambda: self_invited.reconcile(*YEAR)).reason == "SESSION_NOT_YOURS"
    # Nor can the owner widen it later.
    widened = client(running.target, CANCER_HOSPITAL, session="mine", session_members=(FUWAI,))
    assert refused(lambda: widened.reconcile(*YEAR)).reason == "SESSION_NOT_YOURS"
    # The owner still works in it, and the ownership is durable: after a restart the intruder is
    # still refused.
    assert owner.reconcile(*YEAR).platform.count == 1
    running.stop(grace=1)
    again = platform(db_path=tmp_path / "ledger.db")
    late = client(again.target, FUWAI, session="mine")
    assert refused(lambda: late.reconcile(*YEAR)).reason == "SESSION_NOT_YOURS"
    assert client(again.target, CANCER_HOSPITAL, session="mine").reconcile(*YEAR).platform.count == 1


def test_a_shared_session_holds_exactly_the_institutions_that_opened_it(platform, client):
    """A case that spans hospitals (a person's yearly totals across two of them, one hospital
    refused another's settlement) runs in one sandbox that every member names, with the same group."""
    running = platform()
    group = (CANCER_HOSPITAL, FUWAI)
    cancer = client(running.target, CANCER_HOSPITAL, session="pair", session_members=group)
    fuwai = client(running.target, FUWAI, session="pair", session_members=group)
    first = cancer.settle(DATONG, HYPERTENSION, DAY, VISIT).settlement
    # One person's yearly totals across both hospitals: the deductible (10000) used at the first, 0 at Fuwai.
    second = fuwai.settle(DATONG, HYPERTENSION, DAY, VISIT).settlement
    assert (first.totals.deductible_applied_fen, second.totals.deductible_applied_fen) == (10_000, 0)
    assert refused(lambda: fuwai.get(first.settlement_id)).reason == "INSTITUTION_NOT_CALLER"
    # Neither member alone, nor the pair with a third, is the group.
    alone = client(running.target, FUWAI, session="pair")
    assert refused(lambda: alone.reconcile(*YEAR)).reason == "SESSION_NOT_YOURS"
    third = client(running.target, "H11010200002", session="pair", session_members=(*group, "H46020000001"))
    assert refused(lambda: third.reconcile(*YEAR)).reason == "SESSION_NOT_YOURS"


def test_another_institution_cannot_join_a_session_under_tokens(platform, client):
    running = platform(auth="token", allow_sessions=True)
    owner = client(running.target, CANCER_HOSPITAL, token=TOKENS[CANCER_HOSPITAL], session="tok")
    owner.settle(DATONG, HYPERTENSION, DAY, VISIT)
    intruder = client(running.target, FUWAI, token=TOKENS[FUWAI], session="tok")
    assert refused(lambda: intruder.reconcile(*YEAR)).reason == "SESSION_NOT_YOURS"


# --- a repeated header: refused ---------------------------------------------------------------


def raw_calls(target: str, metadata: tuple[tuple[str, str], ...]) -> dict[str, Callable[[], object]]:
    """The 7 calls, each a valid request of the Cancer Hospital, with `metadata` as given."""
    stub = pb_grpc.SettlementServiceStub(grpc.insecure_channel(target))
    maker = Hospital(grpc.insecure_channel(target), CANCER_HOSPITAL)
    request = maker.settlement_request(DATONG, HYPERTENSION, DAY, VISIT)
    code = CANCER_HOSPITAL
    requests = {
        "VerifyRegistration": pb.VerifyRegistrationRequest(visit=request.visit),
        "PreSettleVisit": pb.PreSettleVisitRequest(request=request),
        "SettleVisit": pb.SettleVisitRequest(request=request),
        "ReverseSettlement": pb.ReverseSettlementRequest(
            msgid=maker.next_msgid(), institution_code=code, settlement_id="S1", operator="t"
        ),
        "VoidByMessageId": pb.VoidByMessageIdRequest(
            msgid=maker.next_msgid(), institution_code=code, original_msgid=request.msgid,
            original_infno="2207", operator="t",
        ),
        "GetSettlement": pb.GetSettlementRequest(institution_code=code, settlement_id="S1"),
        "Reconcile": pb.ReconcileRequest(institution_code=code, start_date=YEAR[0], end_date=YEAR[1]),
    }  # fmt: skip
    return {
        name: (lambda n=name, r=req: getattr(stub, n)(r, metadata=metadata, timeout=10))
        for name, req in requests.items()
    }


@pytest.mark.parametrize(
    "headers",
    [((SESSION, "sandbox-a"), (SESSION, "sandbox-b")), ((SESSION, "sandbox-a"), (SESSION, ""))],
    ids=["two-sessions", "session-then-empty"],
)
@pytest.mark.parametrize("sessions", [True, False], ids=["sessions", "no-sessions"])
def test_a_repeated_session_header_is_refused_on_every_call(platform, tmp_path, headers, sessions):
    audit = tmp_path / "audit.jsonl"
    running = platform(allow_sessions=sessions, audit_log=audit)
    for call in raw_calls(running.target, headers).values():
        rejection = refused(call)
        assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", "DUPLICATE_HEADER")
        assert [field for field, _, _ in rejection.violations] == [SESSION]
        assert "x-settlesim-session is sent 2 times" in rejection.message
    assert running.ledger.counts() == {}  # nothing was settled, in any namespace
    running.stop(grace=1)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(records) == 7
    # The audit log says what the service did: refused, in no sandbox.
    assert {(r["session"], r["code"], r["reason"]) for r in records} == {
        ("", "INVALID_ARGUMENT", "DUPLICATE_HEADER")
    }


def test_a_repeated_authorization_header_is_refused(platform):
    running = platform(auth="token")
    twice = (("authorization", f"Bearer {TOKENS[CANCER_HOSPITAL]}"), ("authorization", "Bearer x"))
    rejection = refused(raw_calls(running.target, twice)["Reconcile"])
    assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", "DUPLICATE_HEADER")
    assert [field for field, _, _ in rejection.violations] == ["authorization"]


# --- sessions under auth: off unless asked for ------------------------------------------------


def test_sessions_are_off_under_tokens_and_mtls_unless_enabled(platform, client, tmp_path):
    token = TOKENS[CANCER_HOSPITAL]
    by_token = platform(auth="token", db_path=tmp_path / "token.db")
    sandboxed = client(by_token.target, token=token, session="s")
    rejection = refused(lambda: sandboxed.reconcile(*YEAR))
    assert (rejection.code, rejection.reason) == ("PERMISSION_DENIED", "SESSIONS_DISABLED")
    assert "--sessions" in rejection.message
    assert client(by_token.target, token=token).reconcile(*YEAR).platform.count == 0  # no header: served

    pki = PlatformPki(tmp_path / "pki")
    tls = {"tls_cert": pki.server.cert, "tls_key": pki.server.key, "client_ca": pki.ca.cert}
    by_certificate = platform(auth="mtls", db_path=tmp_path / "mtls.db", **tls)
    creds = {"ca": pki.ca.cert, "cert": pki.cancer.cert, "key": pki.cancer.key}
    sandboxed = client(f"localhost:{by_certificate.port}", session="s", **creds)
    assert refused(lambda: sandboxed.reconcile(*YEAR)).reason == "SESSIONS_DISABLED"

    enabled = platform(auth="token", allow_sessions=True, db_path=tmp_path / "enabled.db")
    assert client(enabled.target, token=token, session="s").reconcile(*YEAR).sandbox == "s"


def test_serve_under_tokens_needs_sessions_to_accept_the_header(tmp_path):
    def sandbox_reconcile(process: ServerProcess) -> pb.ReconcileResponse:
        his = connect(process.target, CANCER_HOSPITAL, token=TOKENS[CANCER_HOSPITAL], session="s")
        try:
            return his.reconcile(*YEAR)
        finally:
            his.close()

    plain = ServerProcess(tmp_path / "a.db", "--auth", "token").start()
    try:
        assert refused(lambda: sandbox_reconcile(plain)).reason == "SESSIONS_DISABLED"
    finally:
        plain.stop()
    enabled = ServerProcess(tmp_path / "b.db", "--auth", "token", "--sessions").start()
    try:
        assert sandbox_reconcile(enabled).sandbox == "s"
    finally:
        enabled.stop()
    both = settlesim("serve", "--sessions", "--no-sessions", "--port", "0", "--db", str(tmp_path / "c.db"))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


# --- ledger check: sandboxes apart, and a session's ownership checked -------------------------


def test_ledger_check_fails_on_a_session_used_by_an_institution_outside_it(platform, client, tmp_path):
    running = platform()
    client(running.target, session="owned").settle(DATONG, HYPERTENSION, DAY, VISIT)
    running.stop(grace=1)
    db = tmp_path / "ledger.db"
    assert check_file(db).problems == []
    with sqlite3.connect(db) as raw:  # the session handed to another institution behind the server's back
        raw.execute("UPDATE sessions SET institutions = ? WHERE session = 'owned'", (FUWAI,))
    problems = check_file(db).problems
    assert problems and all("session owned" in p and CANCER_HOSPITAL in p for p in problems), problems
    with sqlite3.connect(db) as raw:  # or the sandbox's yearly totals booked to the real ledger
        raw.execute("UPDATE sessions SET institutions = ? WHERE session = 'owned'", (CANCER_HOSPITAL,))
        raw.execute("UPDATE yearly_totals SET session = '' WHERE session = 'owned'")
    assert sorted(check_file(db).problems) == [
        f"yearly totals ('', '{DATONG}', '{HYPERTENSION}', 2025): deductible/fund (10000, 12000) "
        "but settlements in force sum to (0, 0)",
        f"yearly totals ('owned', '{DATONG}', '{HYPERTENSION}', 2025): deductible/fund (0, 0) "
        "but settlements in force sum to (10000, 12000)",
    ]  # 30000 fen at 60 % after the 10000 deductible: fund 12000 (see the module)
    with sqlite3.connect(db) as raw:  # or its owners' row gone
        raw.execute("DELETE FROM sessions")
    assert any("session owned has no owner" in p for p in check_file(db).problems)
    check = ledger_check(db)
    assert check.returncode == 1 and "FAIL session owned has no owner" in check.stdout


@pytest.mark.parametrize(
    ("metadata", "reason", "field"),
    [
        (((MEMBERS, FUWAI),), "FIELD_INVALID", MEMBERS),  # members of no session
        (((SESSION, "s"), (MEMBERS, "H1,bad code")), "FIELD_INVALID", MEMBERS),
        (((SESSION, "s"), (MEMBERS, ",".join(f"H{n:011d}" for n in range(17)))), "FIELD_INVALID", MEMBERS),
        (((SESSION, "s"), (MEMBERS, FUWAI), (MEMBERS, FUWAI)), "DUPLICATE_HEADER", MEMBERS),
        (((SESSION, "has space"),), "FIELD_INVALID", SESSION),
        (((SESSION, ""),), "FIELD_INVALID", SESSION),
    ],
    ids=["no-session", "bad-code", "17-members", "repeated", "bad-name", "empty-name"],
)
def test_a_malformed_session_or_member_list_is_refused_naming_the_header(platform, metadata, reason, field):
    running = platform()
    rejection = refused(raw_calls(running.target, metadata)["SettleVisit"])
    assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", reason)
    assert [f for f, _, _ in rejection.violations] == [field]
    assert running.ledger.counts() == {}


def test_a_check_runs_session_is_its_institutions_sandbox(platform, client):
    """An open HIS check run takes its institution's calls into the run's session
    (docs/his-check.md): the answers say so, and no other institution can name it."""
    from settlesim.v1 import his_check_pb2 as hc
    from settlesim.v1 import his_check_pb2_grpc as hc_grpc

    running = platform()
    with grpc.insecure_channel(running.target) as channel:
        opened = hc_grpc.HisCheckServiceStub(channel).OpenRun(
            hc.OpenRunRequest(institution_code=CANCER_HOSPITAL, scenario="escape")
        )
    run_session = opened.run.session
    settled = client(running.target).settle(DATONG, HYPERTENSION, DAY, VISIT).settlement  # no header
    assert settled.sandbox == run_session and run_session
    assert settled.totals.deductible_applied_fen == 10_000  # a fresh year in the run's sandbox
    missing = refused(lambda: client(running.target).get("S-NOT-THERE"))  # a refusal in it says so too
    assert (missing.reason, missing.metadata["sandbox"]) == ("SETTLEMENT_NOT_FOUND", run_session)
    intruder = client(running.target, FUWAI, session=run_session)
    assert refused(lambda: intruder.reconcile(*YEAR)).reason == "SESSION_NOT_YOURS"
    assert client(running.target, FUWAI).reconcile(*YEAR).sandbox == ""  # Fuwai stays in the real ledger
