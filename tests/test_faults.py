"""Fault injection: the platform misbehaves on purpose and the bundled mock
hospital still ends with books that match the platform's to the fen."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL, refused
from grpc_health.v1 import health_pb2, health_pb2_grpc
from settlesim.clients.hospital import Fee, Hospital, SettlementUncertain
from settlesim.clients.rejections import rejection_of
from settlesim.clients.resilience import BookEntry, HospitalBook, VisitOutcome, settle_reliably
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.faults import (
    FaultPlan,
    FaultPlanError,
    RpcFaults,
    load_plan,
    parse_plan,
    plan_from_flags,
)
from settlesim.v1 import settlement_service_pb2 as pb

TUMOUR = "M00503"
REFERENCE_FEES = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]  # fund 12963, patient 5000
# Eligible at the Cancer Hospital CAMS for M00503 (people/cast.yaml): registration
# and qualification both cover each window.
WINDOWS = {
    "63000000000000000001": (date(2021, 11, 1), date(2027, 12, 31)),
    "63000000000000000009": (date(2021, 1, 1), date(2027, 12, 31)),
    "65320000000000000002": (date(2025, 1, 1), date(2027, 12, 31)),
}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(plan: FaultPlan, max_workers: int = 8, **settings: object) -> RunningServer:
        config = ServerConfig(
            port=0, db_path=tmp_path / "ledger.db", max_workers=max_workers, faults=plan, **settings
        )
        started.append(start(config))
        return started[-1]

    yield make
    for running in started:
        running.stop(grace=1)


@pytest.fixture
def connect() -> Iterator[Callable[..., Hospital]]:
    opened: list[Hospital] = []

    def make(running: RunningServer, **kwargs: object) -> Hospital:
        opened.append(Hospital.connect(running.target, CANCER_HOSPITAL, **kwargs))
        return opened[-1]

    yield make
    for his in opened:
        his.close()



def visits(n: int) -> list[tuple[str, str, list[Fee]]]:
    """n visits spread over three patients and the years 2021-2027 (so yearly
    caps are not the point), with fees that differ from visit to visit."""
    people = list(WINDOWS)
    out = []
    for i in range(n):
        person = people[i % len(people)]
        first, last = WINDOWS[person]
        day = first + timedelta(days=(i * 37) % ((last - first).days + 1))
        out.append(
            (
                person,
                day.isoformat(),
                [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 1000 + (i * 7919) % 40000)],
            )
        )
    return out


# --- the must-show: 1,000 visits through commit-then-drop at 20 % ----------------------------


@pytest.mark.slow
def test_thousand_visits_with_commit_then_drop_reconcile_exactly(platform, connect):
    plan = FaultPlan(
        {
            "*": RpcFaults(errors={"UNAVAILABLE": 0.05}),
            "SettleVisit": RpcFaults(commit_then_drop=0.2),
            "VoidByMessageId": RpcFaults(commit_then_drop=0.2),
        },
        seed=20211209,
    )
    running = platform(plan)
    # One retry per call, so that retries often run out and the void path is exercised too.
    his = connect(running, retries=1, backoff=0.001)
    started = time.perf_counter()
    book, outcomes, tally = settle_all(his, 1000)
    elapsed = time.perf_counter() - started
    print(f"\n1000 visits in {elapsed:.1f} s: {dict(sorted(tally.items()))}")
    assert sum(tally.values()) == 1000
    # The faults really happened: answers were lost after commits, and some
    # visits ran out of retries and had to be voided.
    assert tally["settled-on-a-retry"] > 0 and tally["voided-after-commit"] > 0
    assert len(book.entries()) == tally["settled"] + tally["settled-on-a-retry"]
    assert_books_match(his, running, book, outcomes)


def settle_all(
    his: Hospital, n: int, threads: int = 4
) -> tuple[HospitalBook, list[VisitOutcome], Counter[str]]:
    """Settle n visits with settle_reliably from `threads` threads; the hospital's
    book, each visit's outcome and a tally of the outcomes."""
    book = HospitalBook()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(lambda v: settle_reliably(his, book, v[0], TUMOUR, v[1], v[2]), visits(n)))
    tally = Counter(
        "voided-after-commit" if o.undid else "voided-never-committed" if o.voided
        else "settled-on-a-retry" if o.replayed else "settled"
        for o in outcomes
    )  # fmt: skip
    return book, outcomes, tally


def assert_books_match(
    his: Hospital, running: RunningServer, book: HospitalBook, outcomes: list[VisitOutcome]
):
    """The platform holds exactly the settlements the hospital believes in force,
    entry for entry, and the ledger's invariants hold."""
    settled = [o.entry for o in outcomes if o.entry is not None]
    assert len(settled) == len(book.entries())
    answer = his.reconcile("2021-01-01", "2027-12-31", book.figures("2021-01-01", "2027-12-31"), True)
    assert answer.matched and list(answer.mismatched_fields) == []
    assert answer.platform.count == len(settled)
    assert sorted(map(BookEntry.of_reconcile, answer.entries), key=lambda e: e.settlement_id) == sorted(
        book.entries(), key=lambda e: e.settlement_id
    )
    assert running.ledger.check() == []


def audit_records(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- latency beyond the deadline: the server commits after the client gave up ----------------


@pytest.mark.slow
def test_late_commits_after_the_client_gave_up_reconcile_exactly(platform, connect, tmp_path):
    """Settles sleep 0-500 ms (jitter) against a 200 ms client deadline: 60 % of
    attempts end DEADLINE_EXCEEDED on the client while the server is still
    asleep, and then run anyway. A retry that finds the late commit replays it;
    when both attempts time out the hospital voids at once, and either the void
    runs first (it blocks the msgid: the late settles are refused MSGID_VOIDED)
    or after a late commit (it undoes it). Whatever the order, the books match."""
    audit = tmp_path / "audit.jsonl"
    plan = FaultPlan({"SettleVisit": RpcFaults(jitter_ms=500)}, seed=20211209)
    running = platform(plan, max_workers=48, audit_log=audit)
    his = connect(running, deadline=0.2, retries=1, backoff=0.001)
    started = time.perf_counter()
    book, outcomes, tally = settle_all(his, 240, threads=16)
    print(f"\n240 visits in {time.perf_counter() - started:.1f} s: {dict(sorted(tally.items()))}")
    time.sleep(0.6)  # the abandoned settles still asleep in the server wake and run
    his.deadline = 10  # reconcile without the deadline race
    assert_books_match(his, running, book, outcomes)
    running.stop(grace=1)
    settles = Counter((r["code"], r["reason"]) for r in audit_records(audit) if r["rpc"] == "SettleVisit")
    print(f"settle calls as the server answered them: {dict(settles)}")
    # All three endings happened: a retry replayed a late commit, a void undid
    # one, and a void overtook the late settles, which were then refused.
    assert tally["settled-on-a-retry"] > 0 and tally["voided-after-commit"] > 0
    assert tally["voided-never-committed"] > 0 and settles[("FAILED_PRECONDITION", "MSGID_VOIDED")] > 0
    checked = subprocess.run(
        [sys.executable, "-m", "settlesim", "ledger", "check", "--db", str(tmp_path / "ledger.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0 and ": OK;" in checked.stdout, checked.stdout + checked.stderr


def test_a_void_that_overtakes_a_late_settle_wins(platform, connect, tmp_path):
    """Deterministic: the settle sleeps 600 ms, the client gives up at 100 ms and
    voids at once. The void blocks the msgid; the settle, when it wakes, is
    refused MSGID_VOIDED and nothing is ever committed."""
    audit = tmp_path / "audit.jsonl"
    running = platform(FaultPlan({"SettleVisit": RpcFaults(latency_ms=600)}, seed=1), audit_log=audit)
    his = connect(running, deadline=0.1, retries=0)
    book = HospitalBook()
    outcome = settle_reliably(his, book, "63000000000000000001", TUMOUR, "2021-12-09", REFERENCE_FEES)
    assert outcome.voided and not outcome.undid and outcome.entry is None
    time.sleep(0.8)  # the settle wakes and runs
    assert running.ledger.counts() == {}
    his.deadline = 10
    assert_books_match(his, running, book, [outcome])
    running.stop(grace=1)
    settles = [(r["code"], r["reason"]) for r in audit_records(audit) if r["rpc"] == "SettleVisit"]
    assert settles == [("FAILED_PRECONDITION", "MSGID_VOIDED")]


# --- every injected code, with commit-then-drop --------------------------------------------------


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"])
def test_each_injected_code_with_commit_then_drop_reconciles_exactly(platform, connect, tmp_path, code):
    """Each code the platform can inject, at 10 % on every RPC, with 20 % of
    settles and voids committed and their answers dropped: the mock hospital
    treats them all as lost answers (retry, then void) and the books match."""
    audit = tmp_path / "audit.jsonl"
    plan = FaultPlan(
        {
            "*": RpcFaults(errors={code: 0.1}),
            "SettleVisit": RpcFaults(commit_then_drop=0.2),
            "VoidByMessageId": RpcFaults(commit_then_drop=0.2),
        },
        seed=7,
    )
    running = platform(plan, audit_log=audit)
    his = connect(running, retries=1, backoff=0.001)
    book, outcomes, tally = settle_all(his, 300)
    print(f"\n{code}: {dict(sorted(tally.items()))}")
    assert sum(tally.values()) == 300
    assert tally["settled-on-a-retry"] > 0 and tally["voided-after-commit"] > 0
    assert_books_match(his, running, book, outcomes)
    running.stop(grace=1)
    injected = Counter((r["code"], r["fault"]) for r in audit_records(audit) if r.get("fault"))
    assert injected[(code, "error")] > 0 and injected[("UNAVAILABLE", "commit_then_drop")] > 0


# --- each fault on its own -------------------------------------------------------------------


def test_commit_then_drop_commits_and_a_void_undoes_it(platform, connect):
    running = platform(FaultPlan({"SettleVisit": RpcFaults(commit_then_drop=1.0)}, seed=1))
    his = connect(running, retries=0)
    request = his.settlement_request("63000000000000000001", TUMOUR, "2021-12-09", REFERENCE_FEES)
    with pytest.raises(SettlementUncertain) as caught:
        his.settle_request(request)
    lost = rejection_of(caught.value.last_error)
    assert (lost.code, lost.reason, lost.metadata) == (
        "UNAVAILABLE",
        "INJECTED_FAULT",
        {"fault": "commit_then_drop"},
    )
    # The platform did commit: the reference case, fund 12963.
    committed = his.get(msgid=request.msgid)
    assert committed.status == pb.SETTLEMENT_STATUS_SETTLED and committed.totals.fund_pays_fen == 12963
    voided = his.void(request.msgid)
    assert voided.voided_settlement and voided.settlement.settlement_id == committed.settlement_id
    assert his.reconcile("2021-01-01", "2021-12-31").platform.count == 0
    assert running.ledger.check() == []


def test_audit_log_shows_the_dropped_answer(platform, connect, tmp_path):
    """The operator can tell a dropped answer from a real failure: the audit line
    says the settle was answered UNAVAILABLE by an injected commit_then_drop."""
    audit = tmp_path / "audit.jsonl"
    running = platform(FaultPlan({"SettleVisit": RpcFaults(commit_then_drop=1.0)}, seed=1), audit_log=audit)
    his = connect(running, retries=1, backoff=0.001)
    request = his.settlement_request("63000000000000000001", TUMOUR, "2021-12-09", REFERENCE_FEES)
    with pytest.raises(SettlementUncertain):
        his.settle_request(request)
    running.stop(grace=1)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["rpc"], r["msgid"], r["code"], r["reason"], r["fault"]) for r in records] == [
        ("SettleVisit", request.msgid, "UNAVAILABLE", "INJECTED_FAULT", "commit_then_drop")
    ] * 2


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"])
def test_injected_error_refuses_before_anything_runs(platform, connect, code):
    running = platform(FaultPlan({"SettleVisit": RpcFaults(errors={code: 1.0})}, seed=1))
    his = connect(running, retries=0)
    request = his.settlement_request("63000000000000000001", TUMOUR, "2021-12-09", REFERENCE_FEES)
    rejection = refused(lambda: his.stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=10))
    assert (rejection.code, rejection.reason, rejection.metadata) == (
        code,
        "INJECTED_FAULT",
        {"fault": "error"},
    )
    assert running.ledger.counts() == {}  # nothing was committed
    # Other RPCs and other services are left alone.
    assert his.verify("63000000000000000001", TUMOUR, "2021-12-09").eligible
    with grpc.insecure_channel(running.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_latency_beyond_the_deadline_is_deadline_exceeded(platform, connect):
    running = platform(FaultPlan({"VerifyRegistration": RpcFaults(latency_ms=500)}, seed=1))
    impatient = connect(running, deadline=0.1, retries=0)
    assert (
        refused(lambda: impatient.verify("63000000000000000001", TUMOUR, "2021-12-09")).code
        == "DEADLINE_EXCEEDED"
    )
    patient = connect(running, deadline=10, retries=0)
    assert patient.verify("63000000000000000001", TUMOUR, "2021-12-09").eligible


def test_same_seed_same_faults(platform, connect, tmp_path):
    """A sequential client sees the same faults for the same seed."""

    def pattern(seed: int) -> list[str]:
        running = platform(FaultPlan({"*": RpcFaults(errors={"UNAVAILABLE": 0.5})}, seed=seed))
        his = connect(running, retries=0)
        seen = []
        for _ in range(30):
            try:
                his.verify("63000000000000000001", TUMOUR, "2021-12-09")
                seen.append("ok")
            except grpc.RpcError as e:
                seen.append(e.code().name)
        running.stop(grace=1)
        return seen

    first = pattern(7)
    assert first == pattern(7) and "ok" in first and "UNAVAILABLE" in first
    assert first != pattern(8)


# --- the plan file and flags -----------------------------------------------------------------


def test_plan_file_named_rpc_overrides_default(tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text(
        "seed: 7\n"
        "rpcs:\n"
        "  '*': {latency_ms: 5, errors: {UNAVAILABLE: 0.02}}\n"
        "  SettleVisit: {errors: {RESOURCE_EXHAUSTED: 0.01}, commit_then_drop: 0.2}\n"
    )
    plan = load_plan(path)
    assert plan.for_rpc("SettleVisit") == RpcFaults(5, None, {"RESOURCE_EXHAUSTED": 0.01}, 0.2)
    assert plan.for_rpc("GetSettlement") == RpcFaults(5, None, {"UNAVAILABLE": 0.02}, None)
    assert plan.seed == 7 and plan.active

    # Command-line flags are laid over the file: their fields win, the rest stay.
    flags = plan_from_flags(latency_ms=0, errors={"DEADLINE_EXCEEDED": 0.1}, commit_then_drop=0.5, seed=9)
    both = plan.merged(flags)
    assert both.for_rpc("SettleVisit") == RpcFaults(0, None, {"RESOURCE_EXHAUSTED": 0.01}, 0.5)
    assert both.for_rpc("GetSettlement") == RpcFaults(0, None, {"DEADLINE_EXCEEDED": 0.1}, None)
    assert both.seed == 9


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"rpcs": {"Settle": {"latency_ms": 1}}}, "unknown RPC 'Settle'"),
        ({"rpcs": {"*": {"errors": {"INTERNAL": 0.1}}}}, "cannot inject 'INTERNAL'"),
        ({"rpcs": {"*": {"errors": {"UNAVAILABLE": 1.5}}}}, "between 0 and 1"),
        ({"rpcs": {"GetSettlement": {"commit_then_drop": 0.1}}}, "commit_then_drop applies only to"),
        ({"rpcs": {"*": {"errors": {"UNAVAILABLE": 0.6, "RESOURCE_EXHAUSTED": 0.6}}}}, "more than 1"),
        ({"rpcs": {"*": {"latency": 5}}}, "may only have"),
    ],
)
def test_impossible_plans_are_refused(data, expected):
    with pytest.raises(FaultPlanError, match=expected):
        parse_plan(data)


def test_serve_refuses_a_bad_fault_flag_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(tmp_path / "l.db"),
         "--fault-error", "INTERNAL=0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "cannot inject 'INTERNAL'" in result.stderr


def test_serve_with_fault_flags(server_process):
    """The flags reach the server: every settle's answer is dropped after commit."""
    process = server_process(None, "--fault-drop-after-commit", "1", "--fault-seed", "3")
    his = Hospital.connect(process.target, CANCER_HOSPITAL, retries=0)
    try:
        request = his.settlement_request("63000000000000000001", TUMOUR, "2021-12-09", REFERENCE_FEES)
        with pytest.raises(SettlementUncertain):
            his.settle_request(request)
        assert his.get(msgid=request.msgid).totals.fund_pays_fen == 12963
    finally:
        his.close()
