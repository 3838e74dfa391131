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
from conftest import CANCER_HOSPITAL
from grpc_health.v1 import health_pb2, health_pb2_grpc
from settlesim.clients.hospital import Fee, Hospital, SettlementUncertain
from settlesim.clients.rejections import rejection_of
from settlesim.clients.resilience import BookEntry, HospitalBook, settle_reliably
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

    def make(plan: FaultPlan, **settings: object) -> RunningServer:
        config = ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=8, faults=plan, **settings)
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


def refused(call: Callable[[], object]):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return rejection_of(caught.value)


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
    book = HospitalBook()
    work = visits(1000)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda v: settle_reliably(his, book, v[0], TUMOUR, v[1], v[2]), work))
    elapsed = time.perf_counter() - started

    tally = Counter(
        "voided-after-commit" if o.undid else "voided-never-committed" if o.voided
        else "settled-on-a-retry" if o.replayed else "settled"
        for o in outcomes
    )  # fmt: skip
    print(f"\n1000 visits in {elapsed:.1f} s: {dict(sorted(tally.items()))}")
    assert sum(tally.values()) == 1000
    # The faults really happened: answers were lost after commits, and some
    # visits ran out of retries and had to be voided.
    assert tally["settled-on-a-retry"] > 0 and tally["voided-after-commit"] > 0

    settled = [o.entry for o in outcomes if o.entry is not None]
    assert len(settled) == tally["settled"] + tally["settled-on-a-retry"] == len(book.entries())
    answer = his.reconcile("2021-01-01", "2027-12-31", book.figures("2021-01-01", "2027-12-31"), True)
    assert answer.matched and list(answer.mismatched_fields) == []
    assert answer.platform.count == len(settled)
    assert sorted(map(BookEntry.of_reconcile, answer.entries), key=lambda e: e.settlement_id) == sorted(
        book.entries(), key=lambda e: e.settlement_id
    )
    assert running.ledger.check() == []


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
