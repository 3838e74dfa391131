"""Crash safety: settles from several client threads against `settlesim serve`,
SIGKILL mid-load, restart on the same database, and check that no money was
lost or doubled — every settlement a client saw acknowledged is there once
with the figures the client saw, an unacknowledged one is there at most once
(and a retry with its msgid replays it), and the yearly totals equal the sum
of the ledger. Also: `settlesim ledger check` fails on a corrupted copy."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL, ledger_check
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.rejections import rejection_of
from settlesim.server.world_loader import load_world
from settlesim.v1 import settlement_service_pb2 as pb

THREADS = 6
CRASHES = 3  # kill -9 / restart cycles on one database
ACKS_BEFORE_KILL = 60  # per cycle: kill once this many settles were acknowledged...
LOAD_SECONDS = 20.0  # ...or after this long, whichever comes first
MAX_CALLS_PER_THREAD = 2_000
# Fee lines from the Beijing catalog (the Cancer Hospital's treatment region),
# one per class, so visits mix deductibles, B shares and self-pay.
FEE_CODES = ("A-CONSULT-001", "A-CHEMO-001", "A-TARGET-001", "B-DRUG-001", "C-DRUG-001")



def eligible_visits(target: str) -> list[tuple[str, str, str]]:
    """(person_no, disease_code, visit_date) the Cancer Hospital can settle:
    every person and qualified disease of the bundled world on a mid-year day
    of 2021..2027, filtered by the platform's own VerifyRegistration."""
    world = load_world()
    his = Hospital.connect(target, CANCER_HOSPITAL)
    found = []
    try:
        for person in world.people.values():
            for disease in sorted({q.disease for q in person.qualifications}):
                for year in range(2021, 2028):
                    day = f"{year}-06-15"
                    if his.verify(person.person_no, disease, day).eligible:
                        found.append((person.person_no, disease, day))
    finally:
        his.close()
    return found


@dataclass
class Load:
    """What the clients saw: answers by msgid, and requests left without one."""

    acknowledged: dict[str, pb.Settlement] = field(default_factory=dict)
    unanswered: dict[str, pb.SettlementRequest] = field(default_factory=dict)
    requests: dict[str, pb.SettlementRequest] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def drive(
    target: str, cycle: int, visits: list[tuple[str, str, str]], load: Load, stop: threading.Event
) -> list[threading.Thread]:
    """THREADS clients settling random visits until `stop` or the server dies."""
    start = threading.Barrier(THREADS)

    def client(n: int) -> None:
        rng = random.Random(f"{cycle}-{n}")
        his = Hospital.connect(target, CANCER_HOSPITAL, retries=0, deadline=5.0)
        start.wait()
        try:
            for i in range(MAX_CALLS_PER_THREAD):
                if stop.is_set():
                    return
                person, disease, day = rng.choice(visits)
                fees = [
                    Fee(rng.choice(FEE_CODES), rng.randint(1, 400_000), rng.randint(1, 5))
                    for _ in range(rng.randint(1, 4))
                ]
                request = his.settlement_request(
                    person, disease, day, fees, msgid=f"CRASH{cycle}T{n}N{i:05d}"
                )
                with load.lock:
                    load.requests[request.msgid] = request
                try:
                    answer = his.stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=5.0)
                except grpc.RpcError as error:
                    rejection = rejection_of(error)
                    with load.lock:
                        if rejection.reason:  # a refusal with a reason is an answer: nothing settled
                            load.refused[rejection.reason] += 1
                        else:  # no answer (the server died): the platform may or may not have it
                            load.unanswered[request.msgid] = request
                    if not rejection.reason:
                        return
                    continue
                with load.lock:
                    load.acknowledged[request.msgid] = answer.settlement
        finally:
            his.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    return threads


def kill_9(process) -> None:
    """SIGKILL the server and, for `serve --processes N`, its forked servers too
    (all at once, as a power cut would)."""
    children = [
        int(pid)
        for task in Path(f"/proc/{process.proc.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    assert process.stop(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(pid) for pid in children)


def alive(pid: int) -> bool:
    """Running (a killed, not yet reaped process is a zombie: 'Z')."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_mid_load_loses_and_doubles_nothing(server_process, tmp_path, processes):
    db = tmp_path / "crash.db"
    load = Load()
    serve = ("--processes", str(processes)) if processes > 1 else ()
    process = server_process(db, *serve)
    visits = eligible_visits(process.target)
    # 4 people x diseases x years of the bundled world, so many yearly totals rows
    assert len(visits) >= 10 and len({v[0] for v in visits}) >= 4
    for cycle in range(CRASHES):
        stop = threading.Event()
        acked_before = len(load.acknowledged)
        threads = drive(process.target, cycle, visits, load, stop)
        deadline = time.monotonic() + LOAD_SECONDS
        while len(load.acknowledged) - acked_before < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            time.sleep(0.005)
        kill_9(process)  # while the clients are still sending
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
        process = server_process(db, *serve)  # restart on the same database
    assert len(load.acknowledged) >= CRASHES * ACKS_BEFORE_KILL // 2

    his = Hospital.connect(process.target, CANCER_HOSPITAL, retries=0)
    try:
        # Every acknowledged settlement is there, with exactly the answer the client saw.
        for msgid, seen in load.acknowledged.items():
            assert his.get(msgid=msgid) == seen, msgid
        # An unanswered one is there or not. Half are retried with their msgid (which
        # replays or settles, once), half voided by msgid (2601: voids what committed,
        # else blocks the msgid so a late retry cannot settle).
        committed_unseen, voided = 0, {}
        for n, (msgid, request) in enumerate(sorted(load.unanswered.items())):
            try:
                before = his.get(msgid=msgid)
                committed_unseen += 1
            except grpc.RpcError as error:
                assert rejection_of(error).reason == "SETTLEMENT_NOT_FOUND"
                before = None
            if n % 2 == 0:
                again = his.stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=10)
                assert again.replayed == (before is not None), msgid
                assert before is None or again.settlement == before
                load.acknowledged[msgid] = again.settlement
                continue
            void = his.void(msgid, msgid=f"V{msgid}")
            assert void.voided_settlement == (before is not None), msgid
            try:
                late = his.stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=10)
            except grpc.RpcError as error:
                assert before is None and rejection_of(error).reason == "MSGID_VOIDED"
                continue
            assert before is not None and late.replayed
            assert late.settlement.status == pb.SETTLEMENT_STATUS_VOIDED
            voided[msgid] = late.settlement
    finally:
        his.close()
    print(
        f"\n{CRASHES} kill -9 cycles of {processes} server process(es), {len(visits)} eligible visits: "
        f"{len(load.requests)} settles sent, {len(load.requests) - len(load.unanswered)} answered, "
        f"{len(load.unanswered)} unanswered of which {committed_unseen} had committed; "
        f"{len(voided)} voided after restart; refused {dict(load.refused)}"
    )
    assert process.stop(15) == 0

    with sqlite3.connect(db) as con:
        per_msgid = Counter(dict(con.execute("SELECT msgid, COUNT(*) FROM settlements GROUP BY msgid")))
        totals = {
            (person, disease, year): fund
            for person, disease, year, fund in con.execute(
                "SELECT person_no, disease_code, year, fund_paid FROM yearly_totals WHERE session = ''"
            )
        }
    # Nothing doubled, nothing the clients do not know of.
    assert set(per_msgid) == set(load.acknowledged) | set(voided)
    assert set(per_msgid.values()) == {1}
    # The yearly totals are the sum of what the clients were told the pooled fund pays
    # (hifp_pay, what the yearly fund counts), for the settlements in force (the voided
    # ones gave theirs back).
    assert {s.status for s in load.acknowledged.values()} == {pb.SETTLEMENT_STATUS_SETTLED}
    expected: defaultdict[tuple[str, str, int], int] = defaultdict(int)
    for settlement in load.acknowledged.values():
        key = (settlement.person_no, settlement.disease_code, int(settlement.visit_date[:4]))
        expected[key] += settlement.totals.pooled_fund_fen
    # (a row whose settlements were all voided stays, at 0)
    assert {k: totals.get(k, 0) for k in totals | expected} == {k: expected[k] for k in totals | expected}
    assert len(totals) >= 4
    check = ledger_check(db)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(load.acknowledged)} settled" in check.stdout


# --- `settlesim ledger check` on a broken database --------------------------------------------


@pytest.fixture
def sound_ledger(hospital, server, tmp_path) -> Path:
    """A consistent copy of a ledger with three settlements, one of them reversed.
    Qinghai 63..09 in 2024 (630000/390/M00503: deductible 5000, 100%, cap 5,000,000):
    visit 1 = 30000 fen A-CONSULT-001: deductible 5000, fund 25000;
    visit 2 = 20000 fen: deductible 0 (met), fund 20000;
    visit 3 = 10000 fen, then reversed: totals back to deductible 5000, fund 45000."""
    his = hospital(CANCER_HOSPITAL)
    person = "63000000000000000009"
    first = his.settle(person, "M00503", "2024-03-01", [Fee("A-CONSULT-001", 30000)])
    second = his.settle(person, "M00503", "2024-04-01", [Fee("A-CONSULT-001", 20000)])
    third = his.settle(person, "M00503", "2024-05-01", [Fee("A-CONSULT-001", 10000)])
    his.reverse(third.settlement.settlement_id)
    assert [s.settlement.totals.fund_pays_fen for s in (first, second)] == [25000, 20000]
    copy = tmp_path / "sound.db"
    with sqlite3.connect(copy) as target:
        server.ledger._db.backup(target)  # SQLite's online backup: a consistent snapshot
    return copy


CORRUPTIONS = {
    "yearly fund total edited": "UPDATE yearly_totals SET fund_paid = fund_paid + 1",
    "yearly deductible edited": "UPDATE yearly_totals SET deductible_used = 0",
    "yearly totals row lost": "DELETE FROM yearly_totals",
    "settlement doubled": (
        "INSERT INTO settlements (settlement_id, session, msgid, institution_code, person_no, disease_code, "
        "visit_date, year, status, total, fund_pays, patient_pays, deductible_applied, undone_by_msgid, "
        "created_at, answer) SELECT 'SDOUBLE', session, msgid, institution_code, person_no, "
        "disease_code, visit_date, year, status, total, fund_pays, patient_pays, deductible_applied, "
        "undone_by_msgid, created_at, answer FROM settlements WHERE status = 'settled' LIMIT 1"
    ),
    "fund + patient != total": (
        "UPDATE settlements SET patient_pays = patient_pays - 1 WHERE visit_date = '2024-04-01'"
    ),
    "settlement without its settle message": "DELETE FROM messages WHERE kind = 'settle'",
    # An acknowledged settle whose settlement vanished: the totals still agree (it was reversed).
    "settle message without its settlement": "DELETE FROM settlements WHERE status = 'reversed'",
    "undone without a reversal or void": "UPDATE settlements SET status = 'voided' WHERE status = 'reversed'",
    "year not the visit date's": "UPDATE settlements SET year = 2023 WHERE status = 'reversed'",
    "negative deductible": ("UPDATE settlements SET deductible_applied = -1 WHERE status = 'reversed'"),
    # msgids are per institution: the Cancer Hospital's settles filed under Fuwai's msgids.
    "settle messages in another institution's namespace": (
        "UPDATE messages SET institution_code = 'H11010200002' WHERE kind = 'settle'"
    ),
    "reversal whose settlement is back in force": (
        "UPDATE settlements SET status = 'settled', undone_by_msgid = '' WHERE status = 'reversed'"
    ),
    "negative yearly total": "UPDATE yearly_totals SET deductible_used = -1",
    # Schema version 2: each settlement's figures are its fee items' parts added up.
    "item amount edited": "UPDATE settlement_items SET amount = amount + 1, in_scope = in_scope + 1",
    "item parts do not make its amount": "UPDATE settlement_items SET in_scope = in_scope - 1",
    "item rows lost": "DELETE FROM settlement_items",
    "settlement figure edited": "UPDATE settlements SET in_scope = in_scope - 1, full_self_pay = full_self_pay + 1",
    "item rows of no settlement": (
        "UPDATE settlement_items SET settlement_id = 'SGONE' "
        "WHERE settlement_id = (SELECT MIN(settlement_id) FROM settlement_items)"
    ),
}


def test_ledger_check_passes_a_sound_ledger(sound_ledger):
    check = ledger_check(sound_ledger)
    assert check.returncode == 0, check.stdout
    assert "OK; 1 reversed, 2 settled" in check.stdout


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_ledger_check_fails_a_corrupted_copy(sound_ledger, tmp_path, corruption):
    broken = tmp_path / "broken.db"
    shutil.copy(sound_ledger, broken)
    with sqlite3.connect(broken) as con:
        assert con.execute(CORRUPTIONS[corruption]).rowcount >= 1
    check = ledger_check(broken)
    assert check.returncode == 1, check.stdout
    assert "FAIL " in check.stdout and "problem(s)" in check.stdout
