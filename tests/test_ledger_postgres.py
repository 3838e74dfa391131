"""The PostgreSQL ledger (`--db postgresql://...`) against a real PostgreSQL the tests start
(tests/pg_server.py), with real servers on real ports: the conformance suite, the guarantees
(the cap, deductible, msgid and undo races of tests/test_concurrency.py, same figures), storage
faults (a PostgreSQL restart mid-load), `ledger check` and `ledger copy`."""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from conftest import CANCER_HOSPITAL, settlesim
from grpc_health.v1 import health_pb2, health_pb2_grpc
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.rejections import Rejection, rejection_of
from settlesim.clients.replay import reports
from settlesim.clients.replay.cases import load_cases
from settlesim.clients.replay.command import conformance_cases_dir
from settlesim.clients.replay.runner import run_cases
from settlesim.server.app import ServerConfig, start
from settlesim.v1 import settlement_service_pb2 as pb
from test_concurrency import (
    CAP,
    HOTAN,
    QINGHAI_REFERENCE,
    QINGHAI_RULES,
    RACERS,
    SETUP_FUND,
    TUMOUR,
    cap_race,
    clients,
    race,
    reference_request,
)

SUITE = conformance_cases_dir()


@pytest.fixture
def journal_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PostgreSQL ledger's call journal lives in the user data dir: here, the test's own."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def pg_server(postgres_dsn: str, journal_home: Path):
    running = start(ServerConfig(port=0, db_path=postgres_dsn, max_workers=8))
    yield running
    running.stop(grace=1)


@pytest.fixture
def pg_racers(pg_server):
    opened: list[Hospital] = []

    def make(n: int = RACERS) -> list[Hospital]:
        made = clients(pg_server.target, n)
        opened.extend(made)
        return made

    yield make
    for his in opened:
        his.close()


def yearly(dsn: str, person: str, disease: str, year: int) -> tuple[int, int]:
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT deductible_used, fund_paid FROM yearly_totals "
            "WHERE session = '' AND person_no = %s AND disease_code = %s AND year = %s",
            (person, disease, year),
        ).fetchone()
    return row or (0, 0)


def ledger_check(db: str | Path) -> Any:
    return settlesim("ledger", "check", "--db", str(db), timeout=120)


def assert_sound(dsn: str) -> None:
    checked = ledger_check(dsn)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ": OK;" in checked.stdout


# --- the conformance suite ------------------------------------------------------------------------


def test_the_conformance_suite_passes_against_a_replica_on_postgresql(pg_server, postgres_dsn) -> None:
    cases = load_cases([SUITE])
    run = run_cases(cases, pg_server.target, jobs=4)
    failing = {c.case.name: reports._failure_text(c) for c in run.cases if c.status != "passed"}
    assert not failing, failing
    assert len(run.cases) == len(cases)
    assert_sound(postgres_dsn)


# --- the races of tests/test_concurrency.py, on PostgreSQL ----------------------------------------


def test_racing_for_the_last_of_the_cap_never_pays_past_it(pg_racers, postgres_dsn) -> None:
    """Hotan: 75 %, cap 10,000,000 fen. The setup visit leaves 100,000; 16 racers of 200,000 fen
    (75 % = 150,000 each): one is paid the 100,000 left, every other 0 (test_concurrency.py)."""
    setup, *hospitals = pg_racers(RACERS + 1)
    answers = cap_race(setup, hospitals)
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    funds = sorted((a.settlement.totals.fund_pays_fen for a in answers), reverse=True)
    assert funds == [CAP - SETUP_FUND] + [0] * (len(answers) - 1)
    assert yearly(postgres_dsn, HOTAN, TUMOUR, 2025) == (0, CAP)
    assert_sound(postgres_dsn)


def test_racing_for_the_deductible_applies_it_once(pg_racers, postgres_dsn) -> None:
    """Qinghai 2024: deductible 5000, 100 %; 16 visits of 3000 fen: 3000 + 2000 of deductible,
    then none; fund = 16 × 3000 − 5000 = 43,000."""
    hospitals = pg_racers()
    answers = race(
        [
            partial(
                his.settle, QINGHAI_RULES, TUMOUR, "2024-05-01", [Fee("A-CONSULT-001", 3000)], msgid=f"DED{i}"
            )
            for i, his in enumerate(hospitals)
        ]
    )
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    deductibles = sorted((a.settlement.totals.deductible_applied_fen for a in answers), reverse=True)
    assert deductibles == [3000, 2000] + [0] * (RACERS - 2)
    fund = sum(a.settlement.totals.fund_pays_fen for a in answers)
    assert fund == RACERS * 3000 - 5000
    assert yearly(postgres_dsn, QINGHAI_RULES, TUMOUR, 2024) == (5000, fund)
    assert_sound(postgres_dsn)


def test_one_msgid_sent_sixteen_times_at_once_settles_once(pg_racers, postgres_dsn) -> None:
    """The reference case (5000 + 12963 fen, deductible 5000, 100 %: fund 12963, patient 5000)
    under one msgid from 16 connections at once: one settlement, 15 replays of it."""
    hospitals = pg_racers()
    request = reference_request(hospitals[0], "H11010500001202112090000001")
    answers = race([lambda his=his: his.settle_request(request) for his in hospitals])
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    assert Counter(a.replayed for a in answers) == {False: 1, True: RACERS - 1}
    assert len({a.settlement.settlement_id for a in answers}) == 1
    assert {a.settlement.totals.fund_pays_fen for a in answers} == {12963}
    assert yearly(postgres_dsn, QINGHAI_REFERENCE, TUMOUR, 2021) == (5000, 12963)
    assert_sound(postgres_dsn)


def test_one_msgid_with_different_requests_settles_one_of_them(pg_racers, postgres_dsn) -> None:
    """Racer i asks for chemo at 12963 + i fen under one msgid: one settles (fund 12963 + i),
    every other is MSGID_REUSED."""
    hospitals = pg_racers()
    requests = [
        reference_request(his, "H11010500001202112090000002", 12963 + i) for i, his in enumerate(hospitals)
    ]
    answers = race(
        [lambda his=his, r=r: his.settle_request(r) for his, r in zip(hospitals, requests, strict=True)]
    )
    won = [i for i, a in enumerate(answers) if isinstance(a, pb.SettleVisitResponse)]
    assert len(won) == 1
    assert {(a.code, a.reason) for a in answers if isinstance(a, Rejection)} == {
        ("ALREADY_EXISTS", "MSGID_REUSED")
    }
    assert yearly(postgres_dsn, QINGHAI_REFERENCE, TUMOUR, 2021) == (5000, 12963 + won[0])
    assert_sound(postgres_dsn)


def test_reversals_racing_voids_of_one_settlement_apply_once(pg_racers, postgres_dsn) -> None:
    """Hotan 2026, 10,000 fen at 75 % -> fund 7500; 4 reversals and 4 voids race: one wins, the
    others are ALREADY_REVERSED / ALREADY_VOIDED, the totals go back once (to 0, never below)."""
    hospitals = pg_racers(8)
    his = hospitals[0]
    for round_no in range(5):
        settled = his.settle(HOTAN, TUMOUR, "2026-02-01", [Fee("A-TARGET-001", 10_000)]).settlement
        assert yearly(postgres_dsn, HOTAN, TUMOUR, 2026) == (0, 7500)
        calls = [
            partial(h.reverse, settled.settlement_id, msgid=f"REV{round_no}N{i}")
            for i, h in enumerate(hospitals[:4])
        ]
        calls += [
            partial(h.void, settled.msgid, msgid=f"VOID{round_no}N{i}") for i, h in enumerate(hospitals[4:])
        ]
        answers = race(calls)
        assert len([a for a in answers if not isinstance(a, Rejection)]) == 1, answers
        assert {(a.code, a.reason) for a in answers if isinstance(a, Rejection)} <= {
            ("FAILED_PRECONDITION", "ALREADY_REVERSED"),
            ("FAILED_PRECONDITION", "ALREADY_VOIDED"),
        }
        assert yearly(postgres_dsn, HOTAN, TUMOUR, 2026) == (0, 0)
    assert_sound(postgres_dsn)


def test_a_void_racing_its_settle_leaves_nothing_in_force(pg_racers, postgres_dsn) -> None:
    """Settle msgid M and void M at once: the void voids it, or blocks M first and the settle
    is MSGID_VOIDED (Hotan 2027, 10,000 fen at 75 % -> fund 7500 while in force)."""
    settler, voider = pg_racers(2)
    for round_no in range(8):
        request = settler.settlement_request(
            HOTAN, TUMOUR, "2027-02-01", [Fee("A-TARGET-001", 10_000)], msgid=f"SETTLE{round_no}"
        )
        settled, voided = race(
            [
                partial(settler.settle_request, request),
                partial(voider.void, request.msgid, msgid=f"VOID{round_no}"),
            ]
        )
        assert isinstance(voided, pb.VoidByMessageIdResponse), voided
        if isinstance(settled, Rejection):
            assert (settled.code, settled.reason) == ("FAILED_PRECONDITION", "MSGID_VOIDED")
        else:
            assert (
                voided.voided_settlement
                and voided.settlement.settlement_id == settled.settlement.settlement_id
            )
        assert yearly(postgres_dsn, HOTAN, TUMOUR, 2027) == (0, 0)
    assert_sound(postgres_dsn)


# --- storage faults: a PostgreSQL restart mid-load --------------------------------------------------

# What a settle may be refused while the database is away (docs/errors.md "Storage faults").
AWAY_CAUSES = {"admin_shutdown", "connection_lost", "unreachable", "starting_up", "crash_shutdown"}


def health_of(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_postgresql_restart_mid_load_is_refused_as_documented_then_settles_again(
    postgres_server, postgres_dsn, journal_home, server_process, mode
) -> None:
    """A replica (`settlesim serve --db postgresql://...`, its own process) settles in a loop;
    PostgreSQL stops (`fast`: pg_ctl's default, transactions rolled back and clients told;
    `immediate`: no checkpoint, crash recovery at the next start), stays down 3 s, and comes back
    on the same port. Meanwhile every refusal is UNAVAILABLE / LEDGER_UNAVAILABLE with a
    documented cause (never UNKNOWN or INTERNAL) and health says NOT_SERVING; afterwards the same
    replica, not restarted, settles again and says SERVING. Every acknowledged settlement is in
    the ledger once, and `ledger check` passes. (Hotan, 1000 fen class A at 75 %: fund 750 each.)"""
    replica = server_process(postgres_dsn)
    his = Hospital.connect(replica.target, CANCER_HOSPITAL, retries=0, deadline=10)
    outcomes: list[tuple[float, str, Any]] = []
    statuses: list[tuple[float, str]] = []
    stop = threading.Event()
    began = time.monotonic()

    def load() -> None:
        while not stop.is_set():
            try:
                answer = his.settle(HOTAN, TUMOUR, "2026-03-01", [Fee("A-TARGET-001", 1000)])
                outcomes.append((time.monotonic() - began, "settled", answer.settlement))
            except grpc.RpcError as error:
                outcomes.append((time.monotonic() - began, "refused", rejection_of(error)))
                time.sleep(0.05)

    def watch() -> None:
        while not stop.is_set():
            try:
                statuses.append((time.monotonic() - began, health_of(replica.target)))
            except grpc.RpcError as error:
                statuses.append((time.monotonic() - began, f"error {error.code()}"))
            time.sleep(0.1)

    threads = [threading.Thread(target=load), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        down = time.monotonic() - began
        postgres_server.restart(down_seconds=3, mode=mode)
        up = time.monotonic() - began
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        his.close()
    refused = [r for _, kind, r in outcomes if kind == "refused"]
    assert refused, "no settle was refused while PostgreSQL was down"
    assert {(r.code, r.reason) for r in refused} == {("UNAVAILABLE", "LEDGER_UNAVAILABLE")}, refused
    assert {r.metadata.get("cause") for r in refused} <= AWAY_CAUSES, refused
    assert any(kind == "settled" and t < down for t, kind, _ in outcomes)
    assert any(kind == "settled" and t > up + 0.5 for t, kind, _ in outcomes), "no settle after the restart"
    assert "NOT_SERVING" in {s for t, s in statuses if down <= t <= up + 1}, statuses
    assert statuses[-1][1] == "SERVING", statuses[-4:]
    acknowledged = [s.settlement_id for _, kind, s in outcomes if kind == "settled"]
    assert all(s.totals.fund_pays_fen == 750 for _, kind, s in outcomes if kind == "settled")
    with psycopg.connect(postgres_dsn) as db:
        stored = {
            sid for (sid,) in db.execute("SELECT settlement_id FROM settlements WHERE status = 'settled'")
        }
    assert set(acknowledged) <= stored and len(acknowledged) == len(set(acknowledged))
    assert replica.proc.poll() is None  # the same replica throughout
    causes = Counter(r.metadata.get("cause") for r in refused)
    print(
        f"\n{mode} restart: {len(acknowledged)} settled, refused {dict(causes)}, down {down:.1f}-{up:.1f} s"
    )
    assert_sound(postgres_dsn)
