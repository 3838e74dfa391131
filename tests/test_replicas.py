"""Several `settlesim serve` replicas on one ledger are one platform, and the clients
spread over them with gRPC's own round_robin (clients/channels.py).

Real replicas on real ports (tests/replicas.py), on each ledger store: the
conformance suite through a round_robin client; the races of test_concurrency
spread over two replicas paying what one process pays; kill -9 of one replica
mid-load while the other serves on. Where calls went is read from each
replica's own /metrics, not assumed."""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from collections import Counter
from functools import partial

import grpc
import pytest
import yaml
from conftest import CANCER_HOSPITAL, ledger_check, settlesim
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import PlatformPki
from replicas import Replica, ledger_db_fixture, replicas_fixture, targets  # noqa: F401  (fixtures)
from settlesim.clients.hospital import Fee, Hospital, SettlementUncertain, TlsHandshakeRefused
from settlesim.clients.rejections import rejection_of
from settlesim.clients.secure import connect
from settlesim.clients.workload import institution_tokens
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb
from test_concurrency import (
    CAP,
    HOTAN,
    QINGHAI_REFERENCE,
    QINGHAI_RULES,
    RACE_FEN,
    RACERS,
    SETUP_FUND,
    TUMOUR,
    cap_race,
    race,
    reference_request,
)

pytestmark = pytest.mark.slow


def split_racers(one: Replica, two: Replica, n: int = RACERS) -> list[Hospital]:
    """n racers, every other one on each replica (its own channel, no retries)."""
    return [Hospital.connect((one, two)[i % 2].target, CANCER_HOSPITAL, retries=0) for i in range(n)]


def close(hospitals: list[Hospital]) -> None:
    for his in hospitals:
        his.close()


def assert_sound(db: str, replicas_: list[Replica], settled: int) -> None:
    """Stop the replicas; `settlesim ledger check` passes and counts `settled` in force."""
    for replica in replicas_:
        assert replica.stop() == 0
    check = ledger_check(db)  # type: ignore[arg-type]
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"OK; {settled} settled" in check.stdout, check.stdout


# --- a round_robin client reaches every replica -----------------------------------------------


def test_a_hospital_given_two_replicas_spreads_its_calls_over_both(replicas):
    one, two = replicas(2)
    his = Hospital.connect(targets(one, two), CANCER_HOSPITAL)
    try:
        for _ in range(20):
            assert his.verify(QINGHAI_REFERENCE, TUMOUR, "2021-12-09").eligible
    finally:
        his.close()
    # round_robin alternates over the ready connections: each replica answers about half.
    deadline = time.monotonic() + 10  # (the journal's writer counts a moment after the answer)
    while sum(counts := [r.calls("VerifyRegistration") for r in (one, two)]) < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(counts) == 20 and min(counts) >= 5, counts


def test_a_single_target_still_goes_to_one_server(replicas):
    """HOST:PORT alone is today's channel (pick_first): the other replica gets nothing."""
    one, two = replicas(2)
    his = Hospital.connect(one.target, CANCER_HOSPITAL)
    try:
        for _ in range(10):
            his.verify(QINGHAI_REFERENCE, TUMOUR, "2021-12-09")
    finally:
        his.close()
    assert one.calls_reach(10, "VerifyRegistration") == 10
    assert two.calls("VerifyRegistration") == 0


# --- TLS, mutual TLS and tokens over several addresses -------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PlatformPki:
    return PlatformPki(tmp_path_factory.mktemp("pki"))


def test_tls_and_tokens_reach_both_replicas_by_the_certificates_name(replicas, certs):
    """Replicas serving TLS with --auth token: a hospital given both addresses checks
    each replica's certificate (localhost, 127.0.0.1) against one name, the first
    host's or --server-name's, and sends its token to both. A name the certificate
    does not carry is refused on every replica."""
    one, two = replicas(
        2, "--auth", "token", "--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key),
        credentials=grpc.ssl_channel_credentials(certs.ca.cert.read_bytes()), console_token="console-pw",
    )  # fmt: skip
    token = institution_tokens(None)[CANCER_HOSPITAL]
    ports = (one.port, two.port)
    for target, name in [
        (f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", None),  # the IP SAN
        (f"localhost:{ports[0]},localhost:{ports[1]}", None),  # the DNS SAN
        (f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", "localhost"),
    ]:
        his = connect(target, CANCER_HOSPITAL, ca=certs.ca.cert, token=token, server_name=name)
        try:
            for _ in range(10):
                assert his.verify(QINGHAI_REFERENCE, TUMOUR, "2021-12-09").eligible
        finally:
            his.close()
    assert [r.calls_reach(8, "VerifyRegistration") >= 8 for r in (one, two)] == [True, True]
    wrong = connect(targets(one, two), CANCER_HOSPITAL, ca=certs.ca.cert, token=token, server_name="wrong.example")
    try:
        with pytest.raises(TlsHandshakeRefused):
            wrong.verify(QINGHAI_REFERENCE, TUMOUR, "2021-12-09")
    finally:
        wrong.close()


def test_conformance_over_mutual_tls_against_two_replicas(replicas, certs, tmp_path):
    """Two replicas demanding client certificates (--auth mtls --sessions); the suite
    with a certificate per institution over `localhost:A,localhost:B` passes, and both
    replicas settled."""
    cancer = certs.hospital(CANCER_HOSPITAL)
    one, two = replicas(
        2, "--auth", "mtls", "--sessions", "--log-level", "warning", "--tls-cert", str(certs.server.cert),
        "--tls-key", str(certs.server.key), "--client-ca", str(certs.ca.cert),
        credentials=grpc.ssl_channel_credentials(
            certs.ca.cert.read_bytes(), cancer.key.read_bytes(), cancer.cert.read_bytes()
        ),
        console_token="console-pw",
    )  # fmt: skip
    creds = tmp_path / "creds.yaml"
    issued = {code: certs.hospital(code) for code in load_world().institutions}
    creds.write_text(yaml.safe_dump({c: {"cert": str(i.cert), "key": str(i.key)} for c, i in issued.items()}))
    target = f"localhost:{one.port},localhost:{two.port}"
    done = settlesim("conformance", "--target", target, "--ca", str(certs.ca.cert), "--tokens", str(creds), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 failed, 0 errors" in done.stdout
    assert min(r.calls_reach(10) for r in (one, two)) >= 10


# --- the conformance suite against two replicas ----------------------------------------------------


def test_the_conformance_suite_passes_against_two_replicas_behind_round_robin(replicas, ledger_db, tmp_path):
    """Each case's steps (settle, then retry, reverse, void, reconcile ...) land on
    either replica: the suite passes only if the replicas are one platform."""
    one, two = replicas(2, "--log-level", "warning")
    report = tmp_path / "conformance.json"
    done = settlesim("conformance", "--target", targets(one, two), "--json", str(report), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
    settles = [r.calls_reach(10) for r in (one, two)]
    assert min(settles) >= 10, settles  # both replicas settled, each a good share of the suite's


# --- races for the same money, spread over two replicas --------------------------------------------


def test_the_cap_race_over_two_replicas_pays_exactly_the_cap(replicas, ledger_db):
    """test_concurrency's cap race (Hotan 2025: setup fund 9,900,000, cap 10,000,000 ->
    100,000 left; 16 racers of 200,000 fen at 75% = 150,000 each): one racer is paid
    the 100,000 left, the other 15 nothing, 8 racers on each replica."""
    one, two = replicas(2)
    setup = Hospital.connect(one.target, CANCER_HOSPITAL, retries=0)
    hospitals = split_racers(one, two)
    try:
        answers = cap_race(setup, hospitals)
        assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
        funds = sorted((a.settlement.totals.fund_pays_fen for a in answers), reverse=True)
        assert funds == [CAP - SETUP_FUND] + [0] * (RACERS - 1)
        for a in answers:
            t = a.settlement.totals
            assert t.cap_remaining_fen >= 0 and t.fund_pays_fen + t.patient_pays_fen == RACE_FEN
        # Both replicas now see the cap used up: a pre-settle of 1,000 fen pays no fund.
        for replica in (one, two):
            probe = Hospital.connect(replica.target, CANCER_HOSPITAL)
            quote = probe.pre_settle(HOTAN, TUMOUR, "2025-05-01", [Fee("A-TARGET-001", 1000)])
            probe.close()
            assert (quote.totals.fund_pays_fen, quote.totals.cap_remaining_fen) == (0, 0)
    finally:
        close([setup, *hospitals])
    assert one.calls_reach(9) >= 9 and two.calls_reach(8) >= 8  # setup + 8 racers, 8 racers
    assert_sound(ledger_db, [one, two], RACERS + 1)


def test_the_deductible_race_over_two_replicas_applies_it_once(replicas, ledger_db):
    """Qinghai 2024: deductible 5000, ratio 100%; 16 visits of 3000 fen class A, 8 on
    each replica: deductibles applied 3000 and 2000, then none; fund = 16 × 3000 − 5000
    = 43,000."""
    one, two = replicas(2)
    hospitals = split_racers(one, two)
    try:
        answers = race(
            [
                partial(
                    his.settle, QINGHAI_RULES, TUMOUR, "2024-05-01", [Fee("A-CONSULT-001", 3000)], msgid=f"DED{i}"
                )
                for i, his in enumerate(hospitals)
            ]
        )
    finally:
        close(hospitals)
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    deductibles = sorted((a.settlement.totals.deductible_applied_fen for a in answers), reverse=True)
    assert deductibles == [3000, 2000] + [0] * (RACERS - 2)
    assert sum(a.settlement.totals.fund_pays_fen for a in answers) == RACERS * 3000 - 5000 == 43_000
    assert one.calls_reach(8) == 8 and two.calls_reach(8) == 8
    assert_sound(ledger_db, [one, two], RACERS)


def test_one_msgid_sent_to_both_replicas_at_once_settles_once(replicas, ledger_db):
    """The 2021 reference visit (5000 + 12963 fen class A, deductible 5000, 100%:
    fund 12963, patient 5000) under one msgid, from 16 racers, 8 on each replica:
    one settlement, 15 replays of it."""
    one, two = replicas(2)
    hospitals = split_racers(one, two)
    try:
        request = reference_request(hospitals[0], "H11010500001202112090000009")
        answers = race([partial(his.settle_request, request) for his in hospitals])
    finally:
        close(hospitals)
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    assert Counter(a.replayed for a in answers) == {False: 1, True: RACERS - 1}
    assert len({a.settlement.settlement_id for a in answers}) == 1
    assert {(a.settlement.totals.fund_pays_fen, a.settlement.totals.patient_pays_fen) for a in answers} == {
        (12963, 5000)
    }
    assert one.calls_reach(8) == 8 and two.calls_reach(8) == 8  # a replay is answered OK too
    assert_sound(ledger_db, [one, two], 1)


# --- kill -9 of one replica mid-load -----------------------------------------------------------------

THREADS = 6
FEE_CODES = ("A-CONSULT-001", "A-CHEMO-001", "A-TARGET-001", "B-DRUG-001", "C-DRUG-001")
# (person, disease, day) the Cancer Hospital settles in the bundled world, as test_concurrency does.
VISITS = [(HOTAN, TUMOUR, f"{year}-06-15") for year in (2025, 2026, 2027)] + [(QINGHAI_RULES, TUMOUR, "2024-06-15")]


def test_kill_9_of_one_replica_mid_load_the_other_serves_on_and_nothing_is_lost(replicas, ledger_db):
    """6 clients settle through a round_robin channel over two replicas; one replica is
    killed with SIGKILL mid-load. A call it had not answered is retried with the same
    msgid (the mock hospital's retries), which the other replica replays or settles.
    Every acknowledged settlement is there once with the figures the client saw."""
    one, two = replicas(2, "--log-level", "warning")
    acknowledged: dict[str, pb.Settlement] = {}
    uncertain: dict[str, pb.SettlementRequest] = {}
    refused: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    start = threading.Barrier(THREADS)

    def client(n: int) -> None:
        rng = random.Random(n)
        his = Hospital.connect(targets(one, two), CANCER_HOSPITAL, retries=5, backoff=0.05, deadline=5.0)
        start.wait()
        try:
            i = 0
            while not stop.is_set():
                person, disease, day = rng.choice(VISITS)
                fees = [Fee(rng.choice(FEE_CODES), rng.randint(1, 40_000), 1) for _ in range(rng.randint(1, 3))]
                request = his.settlement_request(person, disease, day, fees, msgid=f"KILL{n}N{i:05d}")
                i += 1
                try:
                    answer = his.settle_request(request)
                except SettlementUncertain:
                    with lock:
                        uncertain[request.msgid] = request
                    continue
                except grpc.RpcError as error:
                    with lock:
                        refused[rejection_of(error).reason] += 1
                    continue
                with lock:
                    acknowledged[request.msgid] = answer.settlement
        finally:
            his.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert one.calls_reach(1), "the replica to be killed answered nothing before the kill"  # metrics lag the answer
    assert one.stop(9) == -9  # SIGKILL, while the clients are sending
    at_kill = len(acknowledged)
    while len(acknowledged) < at_kill + 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len(acknowledged) >= at_kill + 60, "the surviving replica did not serve on"

    survivor = Hospital.connect(two.target, CANCER_HOSPITAL)
    try:
        for msgid, request in uncertain.items():  # retried once more: replayed or settled, once
            acknowledged[msgid] = survivor.settle_request(request).settlement
        for msgid, seen in acknowledged.items():
            assert survivor.get(msgid=msgid) == seen, msgid
    finally:
        survivor.close()
    print(
        f"\nkill -9 of one of two replicas: {len(acknowledged)} acknowledged ({at_kill} before the kill), "
        f"{len(uncertain)} left uncertain and settled after; refused {dict(refused)}"
    )
    # Refusals with a reason (a cap used up) settle nothing: "N settled" counts the acknowledged only.
    assert_sound(ledger_db, [two], len(acknowledged))


# --- the Locust kit over two replicas ------------------------------------------------------------------


def test_the_locust_kit_spreads_its_validated_load_over_two_replicas(replicas, ledger_db, tmp_path):
    """`locust --host A,B`: every user's channel goes round_robin over both replicas;
    every answer validated (money adds up, settle = pre-settle, caps, retries, voids)."""
    from test_loadtests import LOCUST, TIMEOUT_S, _assert_validated_load, _env

    one, two = replicas(2, "--log-level", "warning")
    prefix = tmp_path / "replicas"
    done = subprocess.run(
        [*LOCUST, "--host", targets(one, two), "--headless", "-u", "6", "-r", "6", "-t", "3s",
         "--csv", str(prefix), "--only-summary"],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_validated_load(prefix)
    assert min(r.calls_reach(5) for r in (one, two)) >= 5


# --- settlesim bench --replicas ------------------------------------------------------------------------


def test_bench_runs_two_replicas_on_one_ledger_and_prints_its_table(ledger_db):
    """A short run of `settlesim bench --replicas 2 --db LEDGER`: the usual table, both
    replicas busy, the ledger sound afterwards; on PostgreSQL the database's own figures.
    (It measures; nothing here times it.)"""
    done = settlesim(
        "bench", "--persons", "100", "--seconds", "1", "--warmup", "0.3", "--replicas", "2", "--db", ledger_db,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "2 reference servers loaded 100 people" in out and "2 replica(s) of settlesim serve" in out
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines() if line.startswith(("noop", "settle"))}
    assert {"noop sync", "noop aio", "settle (100 people)"} <= set(rows), out
    assert rows["settle (100 people)"][-1] == "0"  # no errors
    shares = re.search(r"CPU seconds of each replica during the runs: ([\d.]+), ([\d.]+)", out)
    assert shares and min(float(shares[1]), float(shares[2])) > 0.2, out  # both replicas worked
    assert re.search(r"ledger .*: OK; \d+ settled", out), out
    if ledger_db.startswith("postgresql://"):
        assert re.search(r"postgresql: \d+ commits/s, \d+ rollbacks/s, \d+ rows/s", out), out


# --- a PostgreSQL restart under two replicas ---------------------------------------------------------


def health_of(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_a_postgresql_restart_under_two_replicas_is_refused_as_documented_then_both_settle_again(
    postgres_server, postgres_dsn, tmp_path, monkeypatch
):
    """Two replicas on one PostgreSQL, load through round_robin clients (and one client on each). PostgreSQL stops
    (fast shutdown), stays down 3 s and comes back on the same port. Meanwhile every refusal
    is UNAVAILABLE / LEDGER_UNAVAILABLE with a documented cause (docs/errors.md), and both
    replicas say NOT_SERVING; afterwards both, not restarted, settle again and say SERVING.
    Each refused msgid sent again settles once (or replays what had committed): the ledger
    then holds exactly the settlements the clients were answered, each once (Hotan 2026,
    1000 fen class A at 75 %: fund 750 each)."""
    from test_ledger_postgres import AWAY_CAUSES

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the replicas' journals: the test's own
    one, two = (Replica(postgres_dsn, "--log-level", "warning", "--console-port", "0").start() for _ in range(2))
    acknowledged: dict[str, pb.Settlement] = {}
    refused: dict[str, tuple[pb.SettlementRequest, object]] = {}
    statuses: list[tuple[float, str, str]] = []
    stop = threading.Event()
    began = time.monotonic()

    def load(n: int, target: str) -> None:
        his = Hospital.connect(target, CANCER_HOSPITAL, retries=0, deadline=10)
        try:
            i = 0
            while not stop.is_set():
                request = his.settlement_request(
                    HOTAN, TUMOUR, "2026-03-01", [Fee("A-TARGET-001", 1000)], msgid=f"PGR{n}N{i:05d}"
                )
                i += 1
                try:
                    acknowledged[request.msgid] = his.settle_request(request).settlement
                except grpc.RpcError as error:
                    cause = error.__cause__ if isinstance(error, SettlementUncertain) else error
                    refused[request.msgid] = (request, rejection_of(cause))  # type: ignore[arg-type]
                    time.sleep(0.05)
        finally:
            his.close()

    def watch() -> None:
        while not stop.is_set():
            for name, replica in (("one", one), ("two", two)):
                try:
                    statuses.append((time.monotonic() - began, name, health_of(replica.target)))
                except grpc.RpcError as error:
                    statuses.append((time.monotonic() - began, name, f"error {error.code()}"))
            time.sleep(0.1)

    # Two clients round_robin over both replicas, and one on each, so each replica is asked meanwhile.
    loads = [targets(one, two), targets(one, two), one.target, two.target]
    threads = [threading.Thread(target=load, args=(n, t)) for n, t in enumerate(loads)]
    threads.append(threading.Thread(target=watch))
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        before = {name: r.calls() for name, r in (("one", one), ("two", two))}
        down = time.monotonic() - began
        postgres_server.restart(down_seconds=3, mode="fast")
        up = time.monotonic() - began
        after_up = {name: r.calls() for name, r in (("one", one), ("two", two))}
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert min(before.values()) > 0, before  # both replicas settled before the restart
    rejections = [r for _, r in refused.values()]
    assert rejections, "no settle was refused while PostgreSQL was down"
    assert {(r.code, r.reason) for r in rejections} == {("UNAVAILABLE", "LEDGER_UNAVAILABLE")}, rejections
    assert {r.metadata.get("cause") for r in rejections} <= AWAY_CAUSES, rejections
    for name in ("one", "two"):
        seen = [s for t, n, s in statuses if n == name]
        assert "NOT_SERVING" in {s for t, n, s in statuses if n == name and down <= t <= up + 1}, seen
        assert seen[-1] == "SERVING", seen[-4:]
    assert one.calls_reach(after_up["one"] + 5) > after_up["one"] + 5, "replica one did not settle again"
    assert two.calls_reach(after_up["two"] + 5) > after_up["two"] + 5, "replica two did not settle again"
    assert one.proc.poll() is None and two.proc.poll() is None  # the same replicas throughout

    his = Hospital.connect(targets(one, two), CANCER_HOSPITAL, retries=2)
    try:
        for msgid, (request, _) in refused.items():
            acknowledged[msgid] = his.settle_request(request).settlement
        for msgid, seen in acknowledged.items():
            assert his.get(msgid=msgid) == seen, msgid
    finally:
        his.close()
    assert {s.totals.fund_pays_fen for s in acknowledged.values()} == {750}
    print(f"\nPostgreSQL restart under two replicas: {len(acknowledged)} settled, {len(refused)} refused meanwhile")
    try:
        assert_sound(postgres_dsn, [one, two], len(acknowledged))
    finally:
        for replica in (one, two):
            if replica.proc and replica.proc.poll() is None:
                replica.proc.kill()
