"""Concurrency: calls that race for the same money, through a real server.

Racers start together behind a barrier so their calls really overlap. The
money figures are derived by hand from the bundled world (server/worlds/default):
whatever order the platform serialises them in, the fund never pays more than
the cap, the deductible is applied once, a msgid settles once and a settlement
is undone once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import CANCER_HOSPITAL
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.rejections import Rejection, rejection_of
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.v1 import settlement_service_pb2 as pb

RACERS = 16
HOTAN = "65320000000000000002"  # 653200/390/M00503: deductible 0, 75%, cap 10,000,000 fen
QINGHAI_RULES = "63000000000000000009"  # 630000/390/M00503 to 2025: deductible 5000, 100%, cap 5,000,000
QINGHAI_REFERENCE = "63000000000000000001"
TUMOUR = "M00503"


def race(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run every call at once (one thread each, released together); the
    results in order, a Rejection where the call was refused."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except grpc.RpcError as error:
            results[i] = rejection_of(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def clients(target: str, n: int) -> list[Hospital]:
    """One HIS connection per racer (its own channel), no retries: each call is sent once.
    Racers name their msgids: each Hospital numbers its own from 0001 each second, so
    two instances of one institution would send the same msgid (a retry, to the platform)."""
    return [Hospital.connect(target, CANCER_HOSPITAL, retries=0) for _ in range(n)]


def yearly(db: Path, person: str, disease: str, year: int) -> tuple[int, int]:
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT deductible_used, fund_paid FROM yearly_totals "
            "WHERE session = '' AND person_no = ? AND disease_code = ? AND year = ?",
            (person, disease, year),
        ).fetchone()
    return row or (0, 0)


def assert_ledger_sound(db: Path) -> None:
    ledger = Ledger(db)
    try:
        assert ledger.check() == []
    finally:
        ledger.close()


@pytest.fixture
def racers(server):
    opened: list[Hospital] = []

    def make(n: int = RACERS, target: str | None = None) -> list[Hospital]:
        made = clients(target or server.target, n)
        opened.extend(made)
        return made

    yield make
    for his in opened:
        his.close()


# --- the annual cap and the deductible -----------------------------------------------------------

CAP = 10_000_000
# Setup visit: 13,200,000 fen class A -> fund = 75% = 9,900,000 (under the cap); cap left 100,000.
SETUP_FEN, SETUP_FUND = 13_200_000, 9_900_000
# Each racer: 200,000 fen class A -> 75% = 150,000, more than the 100,000 left on its own.
# So exactly one racer is paid the 100,000 left and every other one 0.
RACE_FEN = 200_000


def cap_race(setup: Hospital, hospitals: Sequence[Hospital]) -> list[Any]:
    first = setup.settle(HOTAN, TUMOUR, "2025-03-01", [Fee("A-TARGET-001", SETUP_FEN)])
    assert first.settlement.totals.fund_pays_fen == SETUP_FUND
    assert first.settlement.totals.cap_remaining_fen == CAP - SETUP_FUND
    return race(
        [
            partial(his.settle, HOTAN, TUMOUR, "2025-04-01", [Fee("A-TARGET-001", RACE_FEN)], msgid=f"CAP{i}")
            for i, his in enumerate(hospitals)
        ]
    )


def assert_cap_held(answers: list[Any], db: Path) -> None:
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    funds = sorted((a.settlement.totals.fund_pays_fen for a in answers), reverse=True)
    assert funds == [CAP - SETUP_FUND] + [0] * (len(answers) - 1)
    for a in answers:
        t = a.settlement.totals
        assert t.HasField("cap_remaining_fen") and t.cap_remaining_fen >= 0
        assert t.fund_pays_fen + t.patient_pays_fen == RACE_FEN
    assert sum(funds) + SETUP_FUND == CAP
    assert yearly(db, HOTAN, TUMOUR, 2025) == (0, CAP)
    assert_ledger_sound(db)


def test_racing_for_the_last_of_the_annual_cap_never_pays_past_it(server, racers, tmp_path):
    setup, *hospitals = racers(RACERS + 1)
    answers = cap_race(setup, hospitals)
    assert_cap_held(answers, tmp_path / "ledger.db")


def test_two_server_processes_on_one_database_share_the_cap(server_process, tmp_path, racers):
    """Two `settlesim serve` processes on one SQLite file: SQLite's own lock
    serialises them, so the cap holds across processes too."""
    db = tmp_path / "shared.db"
    one, two = server_process(db), server_process(db)
    setup = racers(1, one.target)[0]
    hospitals = racers(RACERS // 2, one.target) + racers(RACERS // 2, two.target)
    answers = cap_race(setup, hospitals)
    assert one.stop() == 0 and two.stop() == 0
    assert_cap_held(answers, db)


def test_serve_processes_2_shares_the_cap_and_settles_a_msgid_once(server_process, tmp_path, racers):
    """`settlesim serve --processes 2`: the kernel spreads the racers' connections
    over two server processes on one ledger file; the cap and the msgid still hold."""
    db = tmp_path / "forked.db"
    served = server_process(db, "--processes", "2")
    setup, *hospitals = racers(RACERS + 1, served.target)
    answers = cap_race(setup, hospitals)
    request = reference_request(hospitals[0], "H11010500001202112090000003")
    retries = race([partial(his.settle_request, request) for his in hospitals])
    assert served.stop() == 0
    assert_cap_held(answers, db)
    assert Counter(a.replayed for a in retries) == {False: 1, True: RACERS - 1}
    assert yearly(db, QINGHAI_REFERENCE, TUMOUR, 2021) == (5000, 12963)


def test_racing_for_the_deductible_applies_it_once(racers, tmp_path):
    """Qinghai 2024: deductible 5000, ratio 100%. RACERS visits of 3000 fen class A:
    the first pays 3000 of deductible, the second the 2000 left, the rest none.
    fund = RACERS × 3000 − 5000 in all (16 racers: 48,000 − 5,000 = 43,000)."""
    hospitals = racers()
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
    assert all(a.settlement.totals.deductible_remaining_fen >= 0 for a in answers)
    fund = sum(a.settlement.totals.fund_pays_fen for a in answers)
    assert fund == RACERS * 3000 - 5000
    assert yearly(tmp_path / "ledger.db", QINGHAI_RULES, TUMOUR, 2024) == (5000, fund)
    assert_ledger_sound(tmp_path / "ledger.db")


# --- one msgid ------------------------------------------------------------------------------------


def reference_request(his: Hospital, msgid: str, chemo_fen: int = 12963) -> pb.SettlementRequest:
    """Seed 002 reference case (see test_server_settlement): 5000 + 12963 fen class A,
    deductible 5000, 100% -> fund 12963, patient 5000."""
    fees = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", chemo_fen)]
    return his.settlement_request(QINGHAI_REFERENCE, TUMOUR, "2021-12-09", fees, msgid=msgid)


def test_concurrent_retries_of_one_msgid_settle_once(racers, tmp_path):
    hospitals = racers()
    request = reference_request(hospitals[0], "H11010500001202112090000001")
    answers = race([lambda his=his: his.settle_request(request) for his in hospitals])
    assert all(isinstance(a, pb.SettleVisitResponse) for a in answers), answers
    assert Counter(a.replayed for a in answers) == {False: 1, True: RACERS - 1}
    assert len({a.settlement.settlement_id for a in answers}) == 1
    assert {a.settlement.totals.fund_pays_fen for a in answers} == {12963}
    assert yearly(tmp_path / "ledger.db", QINGHAI_REFERENCE, TUMOUR, 2021) == (5000, 12963)
    assert_ledger_sound(tmp_path / "ledger.db")


def test_one_msgid_with_different_requests_settles_one_of_them(racers, tmp_path):
    """Racer i asks for chemo at 12963 + i fen under the same msgid: one settles,
    every other is MSGID_REUSED. fund = 12963 + i for the winner i (deductible 5000
    met by the consultation, 100%)."""
    hospitals = racers()
    requests = [
        reference_request(his, "H11010500001202112090000002", 12963 + i) for i, his in enumerate(hospitals)
    ]
    answers = race(
        [lambda his=his, r=r: his.settle_request(r) for his, r in zip(hospitals, requests, strict=True)]
    )
    won = [i for i, a in enumerate(answers) if isinstance(a, pb.SettleVisitResponse)]
    assert len(won) == 1
    lost = [a for a in answers if isinstance(a, Rejection)]
    assert {(r.code, r.reason) for r in lost} == {("ALREADY_EXISTS", "MSGID_REUSED")}
    assert answers[won[0]].settlement.totals.fund_pays_fen == 12963 + won[0]
    assert yearly(tmp_path / "ledger.db", QINGHAI_REFERENCE, TUMOUR, 2021) == (5000, 12963 + won[0])
    assert_ledger_sound(tmp_path / "ledger.db")


# --- undoing ---------------------------------------------------------------------------------------

ROUNDS = 10


def test_reversals_racing_voids_of_one_settlement_apply_once(racers, tmp_path):
    """Each round: settle a 10,000 fen visit (Hotan 2026: 75% -> fund 7500), then
    4 reversals and 4 voids of it, each with its own msgid, race. Exactly one
    wins; the others are ALREADY_REVERSED or ALREADY_VOIDED; the totals go back once."""
    hospitals = racers(8)
    his = hospitals[0]
    db = tmp_path / "ledger.db"
    winners: Counter[str] = Counter()
    for round_no in range(ROUNDS):
        settled = his.settle(HOTAN, TUMOUR, "2026-02-01", [Fee("A-TARGET-001", 10_000)]).settlement
        assert settled.totals.fund_pays_fen == 7500
        assert yearly(db, HOTAN, TUMOUR, 2026) == (0, 7500)
        calls = [
            partial(h.reverse, settled.settlement_id, msgid=f"REV{round_no}N{i}")
            for i, h in enumerate(hospitals[:4])
        ]
        calls += [
            partial(h.void, settled.msgid, msgid=f"VOID{round_no}N{i}") for i, h in enumerate(hospitals[4:])
        ]
        answers = race(calls)
        ok = [a for a in answers if not isinstance(a, Rejection)]
        assert len(ok) == 1, answers
        kind = "reversed" if isinstance(ok[0], pb.ReverseSettlementResponse) else "voided"
        winners[kind] += 1
        refused = {(a.code, a.reason) for a in answers if isinstance(a, Rejection)}
        assert refused <= {
            ("FAILED_PRECONDITION", "ALREADY_REVERSED"),
            ("FAILED_PRECONDITION", "ALREADY_VOIDED"),
        }
        expected_status = pb.SETTLEMENT_STATUS_REVERSED if kind == "reversed" else pb.SETTLEMENT_STATUS_VOIDED
        assert his.get(settled.settlement_id).status == expected_status
        assert yearly(db, HOTAN, TUMOUR, 2026) == (0, 0)  # restored once, never below zero
    print(f"\nreverse vs void over {ROUNDS} rounds: {dict(winners)}")
    assert_ledger_sound(db)


def test_a_void_racing_its_settle_leaves_nothing_in_force(racers, tmp_path):
    """Settle msgid M and void M at once: either the settle commits and the void
    voids it, or the void blocks M and the settle is MSGID_VOIDED. Either way no
    money stays paid (Hotan 2027, 10,000 fen at 75% -> fund 7500 while in force)."""
    settler, voider = racers(2)
    db = tmp_path / "ledger.db"
    outcomes: Counter[str] = Counter()
    for round_no in range(ROUNDS):
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
            assert not voided.voided_settlement
            outcomes["void first"] += 1
        else:
            assert settled.settlement.totals.fund_pays_fen == 7500
            assert (
                voided.voided_settlement
                and voided.settlement.settlement_id == settled.settlement.settlement_id
            )
            outcomes["settle first"] += 1
        assert yearly(db, HOTAN, TUMOUR, 2027) == (0, 0)
    print(f"\nsettle vs void over {ROUNDS} rounds: {dict(outcomes)}")
    assert_ledger_sound(db)


# --- opening one new ledger from several processes -------------------------------------------------


def _open_ledger(path: Path, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        Ledger(path).close()
    except Exception as error:  # reported to the parent, which asserts there were none
        errors.put(repr(error))


def test_processes_opening_a_new_ledger_at_once_all_succeed(tmp_path):
    """`serve --processes N` children open one fresh ledger file at the same moment.
    Switching a new file to WAL is refused at once ("database is locked", no busy
    wait) to one of two processes doing it together; it failed a child's start-up
    about once in 20 runs of `serve --processes 2`. 30 rounds of 8 processes."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for round_no in range(30):
        barrier = context.Barrier(8)
        path = tmp_path / f"new{round_no}.db"
        processes = [context.Process(target=_open_ledger, args=(path, barrier, errors)) for _ in range(8)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [p.exitcode for p in processes] == [0] * 8
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
