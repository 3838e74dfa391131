"""The employee's personal account (个人账户): spent inside the settlement's own transaction, per
person and year whatever the disease, never below zero under concurrent visits; a reversal or a
void gives it back once. A real server (gRPC, and the national door for 1101), real SQLite.

World facts (server/worlds/default, ILLUSTRATIVE): person 11000000000000000006, Beijing employee
(310) registered to H46020000001 in Sanya, qualified for M00503 and M00504; Beijing 310 terms for
both: deductible 0, ratio 90%, no cap; large-amount threshold 2,000,000 fen a year; account opening
balance 100,000 fen in 2025. Hainan catalog: A-TARGET-001 class A.

One visit of 1 × 400,000 fen, by hand: pooled round(400,000 × 90%) = 360,000; the in-scope share
40,000 is below the large-amount threshold (it pays 0); patient part 400,000 − 360,000 = 40,000.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
import simplejson
from conftest import ledger_check
from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.national.app import PATH

SANYA = "H46020000001"
EMPLOYEE = "11000000000000000006"
VISIT = [Fee("A-TARGET-001", 400_000)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=8, national_port=0))
    yield running
    running.stop(grace=1)


@pytest.fixture
def sanya(server: RunningServer) -> Iterator[Hospital]:
    his = Hospital.connect(server.target, SANYA)
    yield his
    his.close()


def account(settlement) -> tuple[int, int, int]:
    t = settlement.totals
    return t.account_pays_fen, t.cash_pays_fen, t.account_balance_fen


def visit(his: Hospital, disease: str = "M00503", *, use: bool = True):
    return his.settle(EMPLOYEE, disease, "2025-04-01", VISIT, use_personal_account=use).settlement


def test_the_account_pays_the_patients_part_until_its_balance_is_spent(sanya, server, tmp_path):
    # 1: min(40,000, 100,000) = 40,000 from the account; cash 0; balance 100,000 − 40,000 = 60,000
    first = visit(sanya)
    assert (first.totals.patient_pays_fen, *account(first)) == (40_000, 40_000, 0, 60_000)
    # 2 (the other disease: the balance is the person's): 40,000; cash 0; balance 20,000
    second = visit(sanya, "M00504")
    assert account(second) == (40_000, 0, 20_000)
    # 3: min(40,000, 20,000) = 20,000; cash 40,000 − 20,000 = 20,000; balance 0
    third = visit(sanya)
    assert account(third) == (20_000, 20_000, 0)
    # 4: nothing left: cash 40,000, balance 0
    assert account(visit(sanya)) == (0, 40_000, 0)
    # without acct_used_flag the account pays nothing and the balance is shown as it is (0)
    assert account(visit(sanya, use=False)) == (0, 40_000, 0)
    server.stop(grace=1)
    assert ledger_check(tmp_path / "ledger.db").returncode == 0


def test_a_reversal_gives_the_account_back_once(sanya):
    first = visit(sanya)  # 40,000 from the account: balance 60,000
    visit(sanya)  # 40,000 more: balance 20,000
    sanya.reverse(first.settlement_id)  # gives back 40,000: balance 60,000
    with pytest.raises(grpc.RpcError):
        sanya.reverse(first.settlement_id)  # ALREADY_REVERSED: nothing given back twice
    # 60,000 left: min(40,000, 60,000) = 40,000; balance 20,000 (not 60,000 + 40,000 twice over)
    assert account(visit(sanya)) == (40_000, 0, 20_000)


def test_a_void_gives_the_account_back_once(sanya):
    request = sanya.settlement_request(EMPLOYEE, "M00503", "2025-04-01", VISIT, use_personal_account=True)
    sanya.settle_request(request)  # 40,000: balance 60,000
    void = sanya.void(request.msgid)  # back: balance 100,000
    again = sanya.void(request.msgid, msgid=void_msgid(void))  # the same void again: a replay
    assert again.replayed
    # 100,000 left: 40,000; balance 60,000
    assert account(visit(sanya)) == (40_000, 0, 60_000)


def void_msgid(answer) -> str:
    return answer.settlement.undone_by_msgid


def test_concurrent_visits_never_take_the_balance_below_zero(server, tmp_path):
    """12 visits at once for one person (both diseases): the account can pay 100,000 in all, so by
    hand 40,000 + 40,000 + 20,000 = 100,000 and every later one 0, whatever the order; each answer's
    balance is what is left after it, never negative."""
    hospitals = [Hospital.connect(server.target, SANYA) for _ in range(4)]
    try:
        with futures.ThreadPoolExecutor(12) as pool:
            jobs = [pool.submit(visit, hospitals[i % 4], ("M00503", "M00504")[i % 2]) for i in range(12)]
            settled = [job.result() for job in jobs]
    finally:
        for his in hospitals:
            his.close()
    paid = sorted((account(s) for s in settled), key=lambda a: (-a[2], -a[0]))  # balance left, then paid
    assert sum(a[0] for a in paid) == 100_000
    assert paid[:3] == [(40_000, 0, 60_000), (40_000, 0, 20_000), (20_000, 20_000, 0)]
    assert paid[3:] == [(0, 40_000, 0)] * 9
    server.stop(grace=1)
    assert ledger_check(tmp_path / "ledger.db").returncode == 0


def test_1101_tells_the_balance_left(server, sanya):
    """1101's insuinfo balc is the account's balance now: the current year's opening balance
    minus what the account paid this year (the world gives 2026: 120,000 fen)."""
    import datetime

    year = datetime.date.today().year
    body = {"infno": "1101", "msgid": f"{SANYA}{year}0101090000000001", "fixmedins_code": SANYA,
            "input": {"data": {"psn_no": EMPLOYEE}}}  # fmt: skip
    answer = simplejson.loads(
        httpx.post(f"http://127.0.0.1:{server.national_port}{PATH}", json=body).content, use_decimal=True
    )
    opening = {2025: "1000.00", 2026: "1200.00"}.get(year, "0.00")
    assert str(answer["output"]["insuinfo"][0]["balc"]) == opening


def test_a_stored_answer_that_disagrees_with_its_account_column_is_not_served(tmp_path):
    """The account's 40,000 is in the settlement's row and in its stored answer: a row edited to
    39,999 makes GetSettlement refuse LEDGER_DAMAGED and `ledger check` name it."""
    import sqlite3
    from contextlib import closing

    from conftest import refused

    db = tmp_path / "ledger.db"
    running = start(ServerConfig(port=0, db_path=db, max_workers=8))
    his = Hospital.connect(running.target, SANYA)
    settled = visit(his)
    his.close()
    running.stop(grace=1)
    with closing(sqlite3.connect(db, isolation_level=None)) as con:
        con.execute("UPDATE settlements SET account_pays = 39999, patient_pays = patient_pays")
    check = ledger_check(db)
    assert check.returncode != 0 and "stored answer says account_pays 40000 but the column says 39999" in check.stdout
    running = start(ServerConfig(port=0, db_path=db, max_workers=8))
    his = Hospital.connect(running.target, SANYA)
    try:
        rejection = refused(lambda: his.get(settled.settlement_id))
        assert rejection.reason == "LEDGER_DAMAGED"
    finally:
        his.close()
        running.stop(grace=1)
