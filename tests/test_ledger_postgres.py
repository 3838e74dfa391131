"""The PostgreSQL ledger (`--db postgresql://...`) against a real PostgreSQL the tests start
(tests/pg_server.py), with real servers on real ports: the conformance suite, the guarantees
(the cap, deductible, msgid and undo races of tests/test_concurrency.py, same figures), storage
faults (a PostgreSQL restart mid-load), `ledger check` and `ledger copy`."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections import Counter
from datetime import date
from decimal import Decimal
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
from settlesim.server.ledger import open_ledger
from settlesim.server.ledger.copy import TABLES as COPIED
from settlesim.server.ledger.postgres import SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION
from settlesim.server.ledger.postgres import PostgresLedger
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
from test_national import NationalHis

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


# --- ledger check on PostgreSQL ------------------------------------------------------------------


def settle_some(target: str, first_fund: int = 12963) -> list[pb.Settlement]:
    """A few settlements in the real ledger (session ""): the Qinghai reference case twice
    (17963 fen, deductible 5000 at 100 %: fund 12963 the first time that year, 17963 once the
    deductible is met), a Hotan visit reversed, one voided."""
    his = Hospital.connect(target, CANCER_HOSPITAL)
    try:
        fees = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
        first = his.settle(QINGHAI_REFERENCE, TUMOUR, "2021-12-09", fees).settlement
        second = his.settle(QINGHAI_REFERENCE, TUMOUR, "2021-12-10", fees).settlement
        assert (first.totals.fund_pays_fen, second.totals.fund_pays_fen) == (first_fund, 17963)
        reversed_ = his.settle(HOTAN, TUMOUR, "2026-02-01", [Fee("A-TARGET-001", 10_000)]).settlement
        his.reverse(reversed_.settlement_id)
        voided = his.settle(HOTAN, TUMOUR, "2026-02-02", [Fee("A-TARGET-001", 20_000)]).settlement
        his.void(voided.msgid)
        return [first, second, reversed_, voided]
    finally:
        his.close()


def test_ledger_check_on_postgresql_finds_each_kind_of_damage(pg_server, postgres_dsn) -> None:
    """A sound PostgreSQL ledger passes; then four kinds of damage an operator's SQL could do
    (none of which the schema's constraints refuse) each fail their invariant, exit 1."""
    first, second, *_ = settle_some(pg_server.target)
    assert_sound(postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(
            "UPDATE yearly_totals SET fund_paid = fund_paid + 100 WHERE person_no = %s AND year = 2021",
            (QINGHAI_REFERENCE,),
        )
        db.execute(
            "DELETE FROM messages WHERE settlement_id = %s AND kind = 'settle'", (second.settlement_id,)
        )
        db.execute("UPDATE institution_totals SET total = total + 1 WHERE year = 2021")
        db.execute(
            "UPDATE settlements SET answer = '\\x0102'::bytea WHERE settlement_id = %s",
            (first.settlement_id,),
        )
    checked = ledger_check(postgres_dsn)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    fails = [line for line in checked.stdout.splitlines() if line.startswith("FAIL ")]
    # yearly totals: the fund paid is 12963 + 17963 = 30926; the row now says 31026.
    assert any("yearly totals" in f and "30926" in f and "31026" in f for f in fails), fails
    assert any(f"settlement {second.settlement_id} has no settle message" in f for f in fails), fails
    assert any("institution totals" in f for f in fails), fails
    assert any(f"settlement {first.settlement_id}: stored answer does not decode" in f for f in fails), fails
    assert "4 problem(s)" in checked.stdout.splitlines()[-1]
    assert "postgres@127.0.0.1" in checked.stdout.splitlines()[-1]


def test_ledger_check_refuses_a_database_that_is_no_ledger_in_one_line(postgres_server) -> None:
    empty = postgres_server.create_database()
    checked = ledger_check(empty)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "is not a settlesim ledger: it has no schema_version table" in checked.stderr
    assert len(checked.stderr.strip().splitlines()) == 1


# --- ledger copy: SQLite -> PostgreSQL -> SQLite ------------------------------------------------


def reconciliations(db: str | Path, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Each (namespace, institution)'s Reconcile over every year, through the store's contract:
    count, total, fund and patient fen, and the entries (id, figures) in their order."""
    ledger = open_ledger(db)
    try:
        sums = {}
        for session, institution in sorted(pairs):
            r = ledger.reconcile(session, institution, date(1990, 1, 1), date(2100, 12, 31), True)
            entries = [(e.settlement_id, e.total, e.fund_pays, e.patient_pays, e.answer) for e in r.entries]
            sums[(session, institution)] = (r.count, r.total, r.fund_pays, r.patient_pays, entries)
        return sums
    finally:
        ledger.close()


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as db:
        return {table: sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in COPIED}


@pytest.mark.slow
def test_ledger_copy_round_trips_sqlite_postgresql_sqlite_with_its_figures(
    tmp_path, postgres_server, journal_home
) -> None:
    """A SQLite ledger with the conformance suite's sandboxes, settlements of the real ledger
    (reversed and voided ones too) and a national visit is copied to PostgreSQL and back:
    `ledger check` passes at each end, every Reconcile answers the same sums and entries, and the
    file that comes back holds the same rows as the one that left."""
    source = tmp_path / "source.db"
    running = start(ServerConfig(port=0, db_path=source, max_workers=8, national_port=0))
    try:
        run = run_cases(load_cases([SUITE]), running.target, jobs=4)
        assert run.count("passed") == len(run.cases)
        national = NationalHis(running)  # the recorded Qinghai visit: fund 129.63, patient 50.00
        national.visit_up_to_2204()
        assert national.ok("2207")["setlinfo"]["fund_pay_sumamt"] == Decimal("129.63")
        national.http.close()
        settle_some(running.target, first_fund=17963)  # the year's deductible is met already
    finally:
        running.stop(grace=1)
    middle = postgres_server.create_database()
    back = tmp_path / "back.db"
    for frm, to in ((source, middle), (middle, back)):
        copied = settlesim("ledger", "copy", "--from", str(frm), "--to", str(to))
        assert copied.returncode == 0, copied.stdout + copied.stderr
        assert "identical at both ends; ledger check OK at both ends" in copied.stdout
    for end in (source, middle, back):
        assert ledger_check(end).returncode == 0, ledger_check(end).stdout
    with sqlite3.connect(source) as db:
        pairs = set(db.execute("SELECT DISTINCT session, institution_code FROM settlements").fetchall())
    assert len({s for s, _ in pairs if s}) >= 20  # the suite's sandboxes, besides the real ledger
    at_source = reconciliations(source, pairs)
    # The real ledger's three Qinghai visits in force (the Hotan ones were reversed and voided):
    # 3 × 17963 = 53889 fen; fund 12963 + 17963 + 17963 = 48889; patient 5000.
    assert at_source[("", CANCER_HOSPITAL)][:4] == (3, 53889, 48889, 5000)
    assert reconciliations(middle, pairs) == at_source
    assert reconciliations(back, pairs) == at_source
    assert sqlite_rows(back) == sqlite_rows(source)


def test_ledger_copy_refuses_a_damaged_source_and_a_destination_that_holds_a_ledger(
    pg_server, postgres_dsn, postgres_server, tmp_path
) -> None:
    settle_some(pg_server.target)
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"")
    into_file = settlesim("ledger", "copy", "--from", postgres_dsn, "--to", str(existing))
    assert into_file.returncode == 1 and "exists: copy into a new file" in into_file.stderr
    into_ledger = settlesim("ledger", "copy", "--from", postgres_dsn, "--to", postgres_dsn)
    assert into_ledger.returncode == 1 and "is not empty" in into_ledger.stderr, into_ledger.stderr
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute("UPDATE yearly_totals SET deductible_used = deductible_used + 1")
    damaged = settlesim("ledger", "copy", "--from", postgres_dsn, "--to", str(tmp_path / "new.db"))
    assert (
        damaged.returncode == 1 and "fails its check" in damaged.stderr and "nothing copied" in damaged.stderr
    )
    assert not (tmp_path / "new.db").exists()


# --- opening a PostgreSQL ledger: schema versions, what serve refuses --------------------------------


def test_replicas_creating_one_new_ledger_at_once_make_one_schema(postgres_dsn) -> None:
    """Eight stores open one empty database at the same moment (replicas starting together):
    the advisory lock lets one create the schema; the others find it made."""
    barrier = threading.Barrier(8)
    outcomes: list[Any] = []

    def open_one() -> None:
        barrier.wait()
        try:
            ledger = PostgresLedger(postgres_dsn, pool_size=1)
            outcomes.append(ledger.upgraded_from)
            ledger.close()
        except Exception as error:  # asserted below: there must be none
            outcomes.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes, key=repr) == [0] + [None] * 7, outcomes  # 0: created; None: found current
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(POSTGRES_SCHEMA_VERSION,)]


def test_a_newer_schema_and_a_foreign_database_are_refused_in_one_line(postgres_server, journal_home) -> None:
    newer = postgres_server.create_database()
    PostgresLedger(newer).close()
    with psycopg.connect(newer, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = %s", (POSTGRES_SCHEMA_VERSION + 1,))
    foreign = postgres_server.create_database()
    with psycopg.connect(foreign, autocommit=True) as db:
        db.execute("CREATE TABLE settlements (id int)")
    for dsn, says in (
        (newer, f"ledger schema version {POSTGRES_SCHEMA_VERSION + 1} is newer than this settlesim knows"),
        (foreign, "has a table settlements but no schema_version: not a settlesim ledger"),
    ):
        served = settlesim("serve", "--port", "0", "--db", dsn, "--no-console", timeout=60)
        assert served.returncode == 2, served.stdout + served.stderr
        assert says in served.stderr and len(served.stderr.strip().splitlines()) == 1, served.stderr


def test_serve_on_an_unreachable_database_is_one_line(journal_home) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = settlesim(
        "serve", "--port", "0", "--db", f"postgresql://nobody@127.0.0.1:{port}/x", "--no-console"
    )
    assert served.returncode == 2, served.stdout + served.stderr
    line = served.stderr.strip()
    assert "cannot connect to PostgreSQL" in line and len(line.splitlines()) == 1, line
    assert f"postgresql://nobody@127.0.0.1:{port}/x" in line


# --- two replicas on one database ---------------------------------------------------------------------


def test_one_msgid_sent_to_two_replicas_at_once_settles_once_with_one_answer(
    postgres_dsn, journal_home
) -> None:
    """Two servers (each its own store and pool) on one PostgreSQL database; the reference case
    (fund 12963, patient 5000) under one msgid, 8 connections to each, all at once: one settlement,
    every answer the same settlement, 15 of them replays. (The process-level replica tests, with a
    round_robin client and kill -9, are tests/test_replicas.py's.)"""
    one = start(ServerConfig(port=0, db_path=postgres_dsn, max_workers=8))
    two = start(ServerConfig(port=0, db_path=postgres_dsn, max_workers=8))
    hospitals = clients(one.target, RACERS // 2) + clients(two.target, RACERS // 2)
    try:
        request = reference_request(hospitals[0], "H11010500001202112090000009")
        answers = race([lambda his=his: his.settle_request(request) for his in hospitals])
    finally:
        for his in hospitals:
            his.close()
        one.stop(grace=1)
        two.stop(grace=1)
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    assert Counter(a.replayed for a in answers) == {False: 1, True: RACERS - 1}
    assert len({a.settlement.SerializeToString() for a in answers}) == 1  # the same answer, byte for byte
    assert yearly(postgres_dsn, QINGHAI_REFERENCE, TUMOUR, 2021) == (5000, 12963)
    assert_sound(postgres_dsn)


# --- the national door and the audit log on PostgreSQL ------------------------------------------------


def test_the_national_visit_flow_settles_reverses_and_reconciles_on_postgresql(
    postgres_dsn, journal_home
) -> None:
    """The recorded Qinghai visit through the national door (2201 ... 2207: fund 129.63, patient
    50.00), 3201 matches, 2208 refunds it, a retried 2201 msgid gets its first answer again."""
    running = start(ServerConfig(port=0, db_path=postgres_dsn, max_workers=8, national_port=0))
    his = NationalHis(running)
    try:
        his.visit_up_to_2204()
        again = his.ok("2201")["data"]["mdtrt_id"]  # the recorded msgid again: the same visit
        assert again == his.known["mdtrt_id"]
        settled = his.ok("2207")["setlinfo"]
        assert (settled["medfee_sumamt"], settled["fund_pay_sumamt"], settled["psn_cash_pay"]) == (
            Decimal("179.63"), Decimal("129.63"), Decimal("50.00"),
        )  # fmt: skip
        assert his.ok("3201")["data"]["stmt_rslt"] == "0"
        refund = dict(infno="2208", msgid="H110105000012021120911000021", setl_id=settled["setl_id"],
                      mdtrt_id=his.known["mdtrt_id"], psn_no=QINGHAI_REFERENCE)  # fmt: skip
        assert his.data_call(**refund)["infcode"] == 0
    finally:
        his.http.close()
        running.stop(grace=1)
    assert yearly(postgres_dsn, QINGHAI_REFERENCE, TUMOUR, 2021) == (0, 0)
    assert_sound(postgres_dsn)


def test_the_audit_log_is_anchored_in_a_postgresql_ledger(postgres_dsn, journal_home, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    running = start(ServerConfig(port=0, db_path=postgres_dsn, max_workers=4, audit_log=audit))
    try:
        settle_some(running.target)
    finally:
        running.stop(grace=1)
    records = len(audit.read_bytes().splitlines())
    verified = settlesim("audit", "verify", "--db", postgres_dsn, str(audit))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{records} records" in verified.stdout
    audit.write_bytes(b"".join(audit.read_bytes().splitlines(keepends=True)[:-1]))  # the last record gone
    truncated = settlesim("audit", "verify", "--db", postgres_dsn, str(audit))
    assert truncated.returncode == 1 and f"anchors {records}" in truncated.stdout, truncated.stdout


def test_the_contract_is_what_the_postgresql_store_implements(postgres_dsn) -> None:
    """Every method and attribute the contract lists exists on the PostgreSQL store and its
    national writes (a Protocol checks nothing at run time by itself)."""
    from settlesim.server.ledger.contract import LedgerStore, NationalWrites
    from settlesim.server.ledger.postgres.national import PostgresNationalWrites

    for contract, store in ((LedgerStore, PostgresLedger), (NationalWrites, PostgresNationalWrites)):
        methods = [n for n, v in vars(contract).items() if callable(v) and not n.startswith("_")]
        assert methods and [n for n in methods if not callable(getattr(store, n, None))] == []
    ledger = open_ledger(postgres_dsn)
    try:
        assert isinstance(ledger, PostgresLedger)
        assert [n for n in LedgerStore.__annotations__ if not hasattr(ledger, n)] == []
    finally:
        ledger.close()


def test_postgresql_failures_become_refusals_that_name_their_cause(postgres_server, postgres_dsn) -> None:
    """Real errors, not made-up ones: a server that is not there, a connection the server
    terminated (what a restart does to a pooled one), the pool giving up, a row the schema
    refuses. Each is UNAVAILABLE / LEDGER_UNAVAILABLE with its cause, never a bare exception."""
    from psycopg_pool import ConnectionPool, PoolTimeout
    from settlesim.server.ledger.postgres.errors import storage_refusal

    caught: dict[str, BaseException] = {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/x"
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(nowhere, connect_timeout=2)
    caught["connection_lost"] = refused.value
    with (
        psycopg.connect(postgres_dsn, autocommit=True) as victim,
        psycopg.connect(postgres_dsn, autocommit=True) as admin,
    ):
        admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as refused:
            victim.execute("SELECT 1")
    caught["admin_shutdown"] = refused.value
    with (
        ConnectionPool(nowhere, min_size=0, max_size=1, timeout=0.2, open=True) as pool,
        pytest.raises(PoolTimeout) as refused,
        pool.connection(),
    ):
        pass
    caught["unreachable"] = refused.value
    PostgresLedger(postgres_dsn).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as db, pytest.raises(psycopg.Error) as refused:
        db.execute("INSERT INTO yearly_totals VALUES ('', 'P', 'D', 2025, -1, 0)")  # no negative totals
    caught["constraint"] = refused.value
    for cause, error in caught.items():
        refusal = storage_refusal(error)
        assert (refusal.reason.name, refusal.metadata["cause"]) == ("LEDGER_UNAVAILABLE", cause), (
            cause,
            error,
        )
        assert "send it again later with the same msgid" in refusal.message


@pytest.mark.slow
def test_an_idle_replica_says_not_serving_while_postgresql_is_down(
    postgres_server, postgres_dsn, journal_home
) -> None:
    """No calls at all: the replica still notices the database going (health NOT_SERVING within
    a few seconds, what a load balancer reads) and coming back (SERVING), without a restart."""
    running = start(ServerConfig(port=0, db_path=postgres_dsn, max_workers=4))

    def becomes(status: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if health_of(running.target) == status:
                return True
            time.sleep(0.1)
        return False

    try:
        assert health_of(running.target) == "SERVING"
        postgres_server.stop()
        try:
            assert becomes("NOT_SERVING", 8)
        finally:
            postgres_server.start()
        assert becomes("SERVING", 8)
    finally:
        running.stop(grace=1)


def test_the_stores_connections_commit_synchronously_whatever_the_database_says(postgres_dsn) -> None:
    """A database set to synchronous_commit=off (an operator's tuning) would acknowledge commits
    not yet on disk; the store's connections set it on for themselves."""
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        name = db.info.dbname
        db.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SHOW synchronous_commit").fetchone() == ("off",)  # what others get
    ledger = PostgresLedger(postgres_dsn)
    try:
        seen = ledger._transaction(lambda db: db.execute("SHOW synchronous_commit").fetchone())
        assert seen == ("on",)
    finally:
        ledger.close()


def test_serve_processes_2_on_postgresql_passes_the_conformance_suite(
    server_process, postgres_dsn, journal_home
):
    """`settlesim serve --processes 2 --db postgresql://...`: the parent creates the schema and
    closes its pool before it forks; each child opens its own; `settlesim conformance` passes."""
    served = server_process(postgres_dsn, "--processes", "2")
    result = settlesim("conformance", "--target", served.target)
    cases = len(load_cases([SUITE]))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"{cases} cases: {cases} passed, 0 failed, 0 errors" in result.stdout
    assert served.stop() == 0
    assert_sound(postgres_dsn)


def test_a_version_6_postgresql_ledger_is_upgraded_to_7_in_place(pg_server, postgres_dsn) -> None:
    """A ledger made before the fund breakdown (its fund columns and counters dropped, version
    6) is upgraded by the next replica to open it: columns added (NULL: the pooled fund was every
    fund; counters 0), its settlements kept, `ledger check` OK, and it settles again."""
    settle_some(pg_server.target)
    pg_server.stop(grace=1)
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(
            "ALTER TABLE settlements DROP CONSTRAINT funds_add_up, DROP COLUMN pooled_pays, "
            "DROP COLUMN serious_threshold, DROP COLUMN serious_pays, DROP COLUMN assistance_pays, "
            "DROP COLUMN account_pays"
        )
        db.execute(
            "ALTER TABLE yearly_totals DROP COLUMN serious_threshold_used, DROP COLUMN serious_paid, "
            "DROP COLUMN assistance_paid, DROP COLUMN account_paid"
        )
        db.execute("UPDATE schema_version SET version = 6")
    ledger = PostgresLedger(postgres_dsn)
    try:
        assert ledger.upgraded_from == 6
        assert ledger.counts() == {"settled": 2, "reversed": 1, "voided": 1}
    finally:
        ledger.close()
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (POSTGRES_SCHEMA_VERSION,)
        assert db.execute("SELECT count(*) FROM settlements WHERE pooled_pays IS NULL").fetchone() == (4,)
    assert_sound(postgres_dsn)
    again = start(ServerConfig(port=0, db_path=postgres_dsn, max_workers=4))
    try:
        settle_some(again.target, first_fund=17963)  # Qinghai's 2021 deductible is met already
    finally:
        again.stop(grace=1)
    assert_sound(postgres_dsn)


def test_a_sandbox_belongs_to_the_institutions_that_opened_it_first(postgres_dsn) -> None:
    """The store's own sessions table: the first group to open a sandbox keeps it, a later group
    is told whose it is (it once split a frozenset here, and the first write of a sandbox was
    answered UNKNOWN)."""
    ledger = open_ledger(postgres_dsn)
    try:
        first = frozenset({"H1", "H2"})
        assert ledger.session_group("sandbox-a") is None
        assert ledger.open_session("sandbox-a", first) == first
        assert ledger.open_session("sandbox-a", frozenset({"H3"})) == first
        assert ledger.session_group("sandbox-a") == first
    finally:
        ledger.close()
