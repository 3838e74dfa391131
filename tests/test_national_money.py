"""The fund breakdown and the personal account through both doors: a real server (gRPC and the
national door on free ports, one ledger). Every expected figure is derived by hand.

World facts (server/worlds/default, ILLUSTRATIVE): Beijing 110000 employees (310) M00503: deductible
0, ratio 90%, no cap; large-amount subsidy (hifob_pay) 85% above a 20,000.00 yearly threshold, cap
300,000.00. Person 11000000000000000006, Beijing employee registered to H46020000001 in Sanya, account
opening balance 1,000.00 in 2025. Hainan catalog: A-TARGET-001 class A.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import simplejson
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.national import play_visit
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.national.app import PATH
from settlesim.v1 import settlement_service_pb2 as pb

SANYA = "H46020000001"
EMPLOYEE = "11000000000000000006"
D = Decimal


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=8, national_port=0))
    yield running
    running.stop(grace=1)


class Door:
    """An HIS posting envelopes to the national door."""

    def __init__(self, server: RunningServer, institution: str = SANYA) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{server.national_port}", timeout=30)
        self.institution = institution
        self.numbers = itertools.count(1)

    def msgid(self) -> str:
        return f"{self.institution}20250301090000{next(self.numbers):04d}"

    def post(self, envelope: dict[str, Any]) -> dict[str, Any]:
        body = simplejson.dumps(envelope, use_decimal=True, ensure_ascii=False).encode()
        response = self.http.post(PATH, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        return simplejson.loads(response.content, use_decimal=True)

    def data_call(self, infno: str, **data: Any) -> dict[str, Any]:
        envelope = {"infno": infno, "msgid": self.msgid(), "fixmedins_code": self.institution, "input": {"data": data}}
        answer = self.post(envelope)
        assert answer["infcode"] == 0, (answer["err_reason"], answer["err_msg"])
        return answer["output"]


@pytest.fixture
def door(server: RunningServer) -> Iterator[Door]:
    client = Door(server)
    yield client
    client.http.close()


@pytest.fixture
def sanya(server: RunningServer) -> Iterator[Hospital]:
    his = Hospital.connect(server.target, SANYA)
    yield his
    his.close()


def big_visit(his: Hospital, *, use_account: bool = True) -> pb.SettlementRequest:
    # 30 × 10,000.00 = 300,000.00 of class A: all in scope
    return his.settlement_request(
        EMPLOYEE,
        "M00503",
        "2025-03-01",
        [Fee("A-TARGET-001", 1_000_000, 30)],
        use_personal_account=use_account,
    )


# The big visit, by hand (fen):
#   pooled: round(30,000,000 × 90%) = 27,000,000 (no cap); the in-scope share 30,000,000 − 27,000,000 = 3,000,000
#   large amount: threshold min(3,000,000, 2,000,000 − 0) = 2,000,000; round(1,000,000 × 85%) = 850,000
#     <= cap left 30,000,000
#   every fund 27,000,000 + 850,000 = 27,850,000; patient part 30,000,000 − 27,850,000 = 2,150,000
#   account (flag 1): min(2,150,000, balance 100,000) = 100,000; cash 2,050,000; balance after 0
BIG_SETLINFO = {
    "medfee_sumamt": D("300000.00"),
    "inscp_scp_amt": D("300000.00"),
    "act_pay_dedc": D("0.00"),
    "hifp_pay": D("270000.00"),
    "hifob_pay": D("8500.00"),
    "hifmi_pay": D("0.00"),
    "maf_pay": D("0.00"),
    "fund_pay_sumamt": D("278500.00"),
    "psn_part_amt": D("21500.00"),
    "acct_pay": D("1000.00"),
    "psn_cash_pay": D("20500.00"),
    "balc": D("0.00"),
}
# setldetail, one row per fund: the pooled fund applies to the in-scope 300,000.00 and, uncapped, may
# pay what it pays; the large-amount subsidy applies to the share 30,000.00, may pay its cap left
# (300,000.00) and pays 8,500.00.
BIG_SETLDETAIL = [
    ("310100", D("300000.00"), D("270000.00"), D("270000.00")),
    ("310300", D("30000.00"), D("300000.00"), D("8500.00")),
]


def detail_rows(output: dict[str, Any]) -> list[tuple[str, Decimal, Decimal, Decimal]]:
    return [
        (r["fund_pay_type"], r["inscp_scp_amt"], r["crt_payb_lmt_amt"], r["fund_payamt"])
        for r in output["setldetail"]
    ]


def test_a_visit_above_the_large_amount_threshold_gives_a_setldetail_row_per_fund(door, sanya):
    played = play_visit(door.post, big_visit(sanya), door.msgid)
    assert {k: played.setlinfo[k] for k in BIG_SETLINFO} == BIG_SETLINFO
    assert {k: played.pre[k] for k in BIG_SETLINFO} == BIG_SETLINFO  # 2206 gives the same
    query = door.data_call(
        "5203", psn_no=EMPLOYEE, setl_id=played.setlinfo["setl_id"], mdtrt_id=played.mdtrt_id
    )
    assert detail_rows(query) == BIG_SETLDETAIL
    assert [r["fund_pay_type_name"] for r in query["setldetail"]] == [
        "职工基本医疗保险统筹基金",
        "职工大额医疗费用补助基金",
    ]
    assert "round((30000.00 − 20000.00) × 85%) = 8500.00" in query["setldetail"][1]["setl_proc_info"]


def test_the_same_settlement_reads_alike_through_get_settlement_5203_and_3202(door, sanya):
    settled = sanya.settle_request(big_visit(sanya)).settlement
    t = settled.totals
    # gRPC: the same hand-derived figures, in fen
    assert (t.total_fen, t.pooled_fund_fen, t.large_amount_fen, t.serious_illness_fen, t.medical_assistance_fen) == (
        30_000_000, 27_000_000, 850_000, 0, 0,
    )  # fmt: skip
    assert (t.fund_pays_fen, t.patient_pays_fen, t.account_pays_fen, t.cash_pays_fen, t.account_balance_fen) == (
        27_850_000, 2_150_000, 100_000, 2_050_000, 0,
    )  # fmt: skip
    assert [(f.fund_type, f.base_fen, f.limit_fen, f.paid_fen) for f in settled.funds] == [
        ("310100", 30_000_000, 27_000_000, 27_000_000),
        ("310300", 3_000_000, 30_000_000, 850_000),
    ]
    read = sanya.get(settled.settlement_id)
    assert read.totals == t and list(read.funds) == list(settled.funds)
    # 5203: the same figures in yuan
    query = door.data_call("5203", psn_no=EMPLOYEE, setl_id=settled.settlement_id)
    assert {k: query["setlinfo"][k] for k in BIG_SETLINFO} == BIG_SETLINFO
    assert detail_rows(query) == BIG_SETLDETAIL
    # 3202: the platform's row carries fund_pay_sumamt, every fund (278,500.00, not the pooled 270,000.00)
    rows = [
        {"setl_id": settled.settlement_id, "medfee_sumamt": D("300000.00"), "fund_pay_sumamt": D("278500.00")}
    ]
    answer = door.data_call("3202", stmt_begndate="2025-03-01", stmt_enddate="2025-03-01", detail=rows)[
        "data"
    ]
    assert answer["stmt_rslt"] == "0", answer
    assert [(r["setl_id"], r["stmt_rslt"], r["fund_pay_sumamt"]) for r in answer["detail"]] == [
        (settled.settlement_id, "0", D("278500.00"))
    ]
    # 3201: fund_pay_sumamt and acct_pay are every fund's and the account's
    totals = door.data_call(
        "3201", insutype="310", setl_optins="110000", stmt_begndate="2025-03-01", stmt_enddate="2025-03-01",
        medfee_sumamt=D("300000.00"), fund_pay_sumamt=D("278500.00"), acct_pay=D("1000.00"), fixmedins_setl_cnt=1,
    )["data"]  # fmt: skip
    assert totals["stmt_rslt"] == "0", totals
    assert totals["platform"]["acct_pay"] == D("1000.00")


def test_2208_refund_record_negates_every_fund_and_the_account(door, sanya):
    settled = sanya.settle_request(big_visit(sanya)).settlement
    refund = door.data_call("2208", setl_id=settled.settlement_id, psn_no=EMPLOYEE)
    info = refund["setlinfo"]
    assert (info["hifp_pay"], info["hifob_pay"], info["fund_pay_sumamt"], info["acct_pay"], info["psn_cash_pay"]) == (
        D("-270000.00"), D("-8500.00"), D("-278500.00"), D("-1000.00"), D("-20500.00"),
    )  # fmt: skip
    # the balance is a state: after the refund the 1,000.00 is back
    assert info["balc"] == D("1000.00")
    assert [(r["fund_pay_type"], r["fund_payamt"]) for r in refund["setldetail"]] == [
        ("310100", D("-270000.00")),
        ("310300", D("-8500.00")),
    ]


def test_a_resident_above_the_serious_illness_threshold_who_is_assisted(server):
    """Qinghai resident 63000000000000000011 (assisted from 2025), hypertension M03900 at the Cancer
    Hospital CAMS, 1 × 30,000.00 of A-CONSULT-001 (class A). Qinghai 390 M03900: deductible 0, 60%,
    cap 3,000.00; serious illness above 10,000.00 at 60% (cap 400,000.00); assistance 70% (cap
    50,000.00). By hand (fen):
      pooled: round(3,000,000 × 60%) = 1,800,000, capped at 300,000; share 3,000,000 − 300,000 = 2,700,000
      serious illness: threshold min(2,700,000, 1,000,000) = 1,000,000; round(1,700,000 × 60%) = 1,020,000
      assistance: round((2,700,000 − 1,020,000) × 70%) = round(1,680,000 × 70%) = 1,176,000
      every fund 300,000 + 1,020,000 + 1,176,000 = 2,496,000; patient 3,000,000 − 2,496,000 = 504,000,
      all cash (a resident has no personal account)"""
    his = Hospital.connect(server.target, "H11010500001")
    cancer = Door(server, "H11010500001")
    try:
        fees = [Fee("A-CONSULT-001", 3_000_000)]
        request = his.settlement_request("63000000000000000011", "M03900", "2025-05-01", fees)
        played = play_visit(cancer.post, request, cancer.msgid)
    finally:
        his.close()
    s = played.setlinfo
    assert (s["hifp_pay"], s["hifmi_pay"], s["hifob_pay"], s["maf_pay"]) == (
        D("3000.00"), D("10200.00"), D("0.00"), D("11760.00"),
    )  # fmt: skip
    assert (s["fund_pay_sumamt"], s["psn_part_amt"], s["acct_pay"], s["psn_cash_pay"], s["balc"]) == (
        D("24960.00"), D("5040.00"), D("0.00"), D("5040.00"), D("0.00"),
    )  # fmt: skip
    # 5203's setldetail: pooled (its limit: the cap left, 3,000.00), serious illness (limit: its cap
    # left, 400,000.00), medical assistance (limit: its cap left, 50,000.00)
    query = cancer.data_call("5203", setl_id=s["setl_id"])
    cancer.http.close()
    assert detail_rows(query) == [
        ("390100", D("30000.00"), D("3000.00"), D("3000.00")),
        ("390200", D("27000.00"), D("400000.00"), D("10200.00")),
        ("610100", D("16800.00"), D("50000.00"), D("11760.00")),
    ]


def test_an_answer_stored_before_the_fund_breakdown_reads_with_the_figures_it_implied():
    """A settlement stored before schema 7 has no funds rows and no pooled/cash figures: the
    pooled fund was every fund and the patient paid cash (the Qinghai case: 129.63 / 50.00)."""
    from settlesim.server.answers import complete_older

    old = pb.Settlement(
        settlement_id="S1", insurance_type=pb.INSURANCE_TYPE_RESIDENT,
        totals=pb.SettlementTotals(total_fen=17963, in_scope_fen=17963, fund_pays_fen=12963, patient_pays_fen=5000),
    )  # fmt: skip
    read = complete_older(old)
    assert (read.totals.pooled_fund_fen, read.totals.cash_pays_fen, read.totals.account_pays_fen) == (12963, 5000, 0)
    assert [(f.fund_type, f.base_fen, f.paid_fen) for f in read.funds] == [("390100", 17963, 12963)]
    assert not read.totals.HasField("account_balance_fen")
    # an answer with its funds is left as it is
    assert complete_older(read).funds == read.funds and len(read.funds) == 1
