"""The national JSON door: a real server (gRPC and national door on free ports, one
ledger), posted to over HTTP as an HIS does (httpx)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import simplejson
from settlesim.clients.hospital import Fee
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.national.app import PATH
from settlesim.v1 import settlement_service_pb2 as pb

from tests.conftest import ledger_check

RECORDED = Path(__file__).parent / "data" / "national" / "qinghai-chronic-visit.json"
QINGHAI = "63000000000000000001"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=8, national_port=0))
    yield running
    running.stop(grace=1)


class NationalHis:
    """An HIS posting envelopes to the door: the recorded calls, with {name} filled
    in from earlier answers (mdtrt_id, setl_id, sign_no)."""

    def __init__(self, server: RunningServer) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{server.national_port}", timeout=30)
        recorded = simplejson.loads(RECORDED.read_text(), use_decimal=True)  # money as written
        self.common: dict[str, Any] = recorded["common"]
        self.calls: dict[str, dict[str, Any]] = {c["infno"]: c for c in recorded["calls"]}
        self.known: dict[str, str] = {"sign_no": ""}

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"\{(\w+)\}", lambda m: self.known[m.group(1)], value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    def envelope(self, infno: str, msgid: str | None = None, **data: Any) -> dict[str, Any]:
        """The recorded call `infno`, its input.data fields replaced by `data`."""
        call = copy.deepcopy(self.calls[infno])
        if msgid:
            call["msgid"] = msgid
        if data:
            call["input"]["data"].update(data)
        return self.fill({**self.common, **call})

    def post(self, envelope: dict[str, Any], path: str = PATH) -> dict[str, Any]:
        # The body as an HIS serializes it: money as JSON numbers (Decimal, never float).
        body = simplejson.dumps(envelope, use_decimal=True, ensure_ascii=False).encode()
        response = self.http.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        return well_formed(response)

    def data_call(self, infno: str, msgid: str, **data: Any) -> dict[str, Any]:
        """A call not in the recording: the common envelope, input.data = `data`."""
        return self.post({**self.fill(self.common), "infno": infno, "msgid": msgid, "input": {"data": data}})

    def ok(self, infno: str, msgid: str | None = None, **data: Any) -> dict[str, Any]:
        answer = self.post(self.envelope(infno, msgid, **data))
        assert answer["infcode"] == 0, answer
        return answer["output"]

    def refused(self, infno: str, msgid: str | None = None, **data: Any) -> dict[str, Any]:
        answer = self.post(self.envelope(infno, msgid, **data))
        assert answer["infcode"] == -1, answer
        return answer

    def visit_up_to_2204(self) -> None:
        """9001 1101 5301 2201 2203 2204 of the recorded visit."""
        self.known["sign_no"] = self.ok("9001")["signinoutb"]["sign_no"]
        assert self.ok("1101")["baseinfo"]["psn_no"] == QINGHAI
        assert [q["opsp_dise_code"] for q in self.ok("5301")["feedetail"]] == ["M00503"]
        self.known["mdtrt_id"] = self.ok("2201")["data"]["mdtrt_id"]
        self.ok("2203")
        self.ok("2204")


ENVELOPE_KEYS = {
    "infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "err_reason", "err_detail",
    "warn_msg", "cainfo", "signtype", "output",
}  # fmt: skip


def well_formed(response: httpx.Response) -> dict[str, Any]:
    """An answer envelope: JSON, every key, infcode 0 or -1, a reason and a Chinese
    err_msg on failure; money parsed as Decimal."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    answer = simplejson.loads(response.content, use_decimal=True)
    assert set(answer) == ENVELOPE_KEYS, answer
    assert answer["infcode"] in (0, -1)
    assert len(answer["inf_refmsgid"]) == 30 and re.fullmatch(r"\d{17}", answer["respond_time"])
    assert re.fullmatch(r"\d{17}", answer["refmsg_time"])
    if answer["infcode"] == -1:
        assert answer["err_reason"] and re.search(r"[\u4e00-\u9fff]", answer["err_msg"]), answer
        assert answer["err_reason"] != "INTERNAL", answer
    else:
        assert answer["err_msg"] == "" and answer["err_reason"] == ""
    return answer


@pytest.fixture
def his(server: RunningServer) -> Iterator[NationalHis]:
    client = NationalHis(server)
    yield client
    client.http.close()


def money(setlinfo: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    return setlinfo["medfee_sumamt"], setlinfo["fund_pay_sumamt"], setlinfo["psn_cash_pay"]


def test_the_recorded_visit_settles_the_qinghai_case_and_reconciles(his, server):
    """docs/domain.md: total 5000 + 12963 = 17963 fen; deductible 5000 unused that
    year, ratio 100 %: fund 17963 - 5000 = 12963 (129.63), patient 5000 (50.00)."""
    his.visit_up_to_2204()
    pre = his.ok("2206")["setlinfo"]
    assert money(pre) == (Decimal("179.63"), Decimal("129.63"), Decimal("50.00"))
    assert pre["setl_id"] == ""
    settled = his.ok("2207")
    setlinfo = settled["setlinfo"]
    assert money(setlinfo) == (Decimal("179.63"), Decimal("129.63"), Decimal("50.00"))
    assert setlinfo["hifp_pay"] == Decimal("129.63") and setlinfo["act_pay_dedc"] == Decimal("50.00")
    assert setlinfo["mdtrt_id"] == his.known["mdtrt_id"] and setlinfo["insutype"] == "390"
    assert setlinfo["medins_setl_id"] == "H110105000012021120909310008"
    assert [(d["fund_pay_type"], d["fund_payamt"]) for d in settled["setldetail"]] == [
        ("390100", Decimal("129.63"))
    ]
    reconciled = his.ok("3201")["data"]
    assert reconciled["stmt_rslt"] == "0", reconciled
    assert ledger_check(server.ledger.path).returncode == 0


def test_the_answer_writes_money_as_exact_two_place_numbers(his):
    his.visit_up_to_2204()
    raw = his.http.post(PATH, content=simplejson.dumps(his.envelope("2206"), use_decimal=True)).text
    assert '"medfee_sumamt": 179.63' in raw and '"fund_pay_sumamt": 129.63' in raw
    assert '"psn_cash_pay": 50.00' in raw  # two places, not 50.0


def test_2204_answers_each_lines_split(his):
    """Both lines are class A in Beijing's catalog with no ceiling: chrgitm_lv 01,
    nothing self-paid, all of each line in scope."""
    his.known["sign_no"] = ""
    his.known["mdtrt_id"] = his.ok("2201")["data"]["mdtrt_id"]
    his.ok("2203")
    result = his.ok("2204")["result"]
    assert [
        (r["feedetl_sn"], r["chrgitm_lv"], r["inscp_scp_amt"], r["fulamt_ownpay_amt"]) for r in result
    ] == [
        ("0001", "01", Decimal("50.00"), Decimal("0.00")),
        ("0002", "01", Decimal("129.63"), Decimal("0.00")),
    ]
    for row in result:
        assert row["selfpay_prop"] == Decimal("0.0000") and row["overlmt_amt"] == Decimal("0.00")
        assert row["preselfpay_amt"] == Decimal("0.00") and row["pric_uplmt_amt"] is None


def test_a_settlement_reads_the_same_through_grpc_and_5203(his, hospital):
    his.visit_up_to_2204()
    national = his.ok("2207")["setlinfo"]
    s = hospital().get(national["setl_id"])
    assert (s.totals.total_fen, s.totals.fund_pays_fen, s.totals.patient_pays_fen) == (17963, 12963, 5000)
    queried = his.data_call(
        "5203",
        "H110105000012021120919000010",
        psn_no=QINGHAI,
        setl_id=national["setl_id"],
        mdtrt_id=his.known["mdtrt_id"],
    )["output"]["setlinfo"]
    assert queried == national
    assert money(queried) == (Decimal(s.totals.total_fen) / 100, Decimal(s.totals.fund_pays_fen) / 100,
                              Decimal(s.totals.patient_pays_fen) / 100)  # fmt: skip


def test_2207_with_the_hospitals_split_differing_is_refused_and_nothing_settles(his, server):
    his.visit_up_to_2204()
    # The HIS thinks 0.01 of the chemotherapy drug is fully self-paid.
    answer = his.refused("2207", fulamt_ownpay_amt=Decimal("0.01"), inscp_scp_amt=Decimal("179.62"))
    assert answer["err_reason"] == "SPLIT_MISMATCH"
    assert (
        "fulamt_ownpay_amt 0.01 ≠ 0.00" in answer["err_msg"]
        and "inscp_scp_amt 179.62 ≠ 179.63" in answer["err_msg"]
    )
    assert "费用分割" in answer["err_msg"]
    assert server.ledger.counts() == {}  # nothing settled
    # The same visit settles once the HIS sends the platform's figures (a new msgid).
    assert his.ok("2207", "H110105000012021120909320011")["setlinfo"]["medfee_sumamt"] == Decimal("179.63")


def test_2207_without_the_split_amounts_is_refused(his):
    his.visit_up_to_2204()
    envelope = his.envelope("2207")
    del envelope["input"]["data"]["preselfpay_amt"]
    answer = his.post(envelope)
    assert (answer["infcode"], answer["err_reason"]) == (-1, "FIELD_MISSING")


def test_fees_and_registration_cannot_be_cancelled_after_settlement(his):
    his.visit_up_to_2204()
    settled = his.ok("2207")["setlinfo"]
    cancel = dict(
        infno="2205",
        msgid="H110105000012021120909400012",
        mdtrt_id=his.known["mdtrt_id"],
        chrg_bchno="0000",
        psn_no=QINGHAI,
    )
    answer = his.data_call(**cancel)
    assert (answer["infcode"], answer["err_reason"]) == (-1, "VISIT_SETTLED")
    assert "已结算" in answer["err_msg"]
    unregister = dict(
        infno="2202", msgid="H110105000012021120909400013", mdtrt_id=his.known["mdtrt_id"], psn_no=QINGHAI
    )
    assert his.data_call(**unregister)["err_reason"] == "VISIT_SETTLED"
    # After the reversal both are allowed: 2205 cancels every line, so 2206 has nothing to settle.
    reverse = dict(
        infno="2208",
        msgid="H110105000012021120909400014",
        setl_id=settled["setl_id"],
        mdtrt_id=his.known["mdtrt_id"],
        psn_no=QINGHAI,
    )
    assert his.data_call(**reverse)["infcode"] == 0
    assert his.data_call(**{**cancel, "msgid": "H110105000012021120909400015"})["infcode"] == 0
    assert his.refused("2206", "H110105000012021120909400016")["err_reason"] == "ITEMS_EMPTY"


def test_2208_answers_a_refund_record_and_restores_the_totals_once(his, server):
    his.visit_up_to_2204()
    settled = his.ok("2207")["setlinfo"]
    reverse = dict(
        infno="2208",
        msgid="H110105000012021120910000017",
        setl_id=settled["setl_id"],
        mdtrt_id=his.known["mdtrt_id"],
        psn_no=QINGHAI,
    )
    refund = his.data_call(**reverse)["output"]["setlinfo"]
    assert refund["setl_id"] != settled["setl_id"] and refund["orig_setl_id"] == settled["setl_id"]
    assert money(refund) == (Decimal("-179.63"), Decimal("-129.63"), Decimal("-50.00"))
    assert refund["setl_status"] == "reversed"
    # A retry of the same 2208 answers the same refund; the totals are restored once.
    assert his.data_call(**reverse)["output"]["setlinfo"] == refund
    again = his.data_call(**{**reverse, "msgid": "H110105000012021120910000018"})
    assert (again["infcode"], again["err_reason"]) == (-1, "ALREADY_REVERSED")
    zero = dict(medfee_sumamt=0, fund_pay_sumamt=0, fixmedins_setl_cnt=0)
    assert his.ok("3201", "H110105000012021120918000019", **zero)["data"]["stmt_rslt"] == "0"
    # The deductible is unused again: the same visit settles to the same figures.
    resettled = his.ok("2207", "H110105000012021120910100020")["setlinfo"]
    assert money(resettled) == (Decimal("179.63"), Decimal("129.63"), Decimal("50.00"))
    assert ledger_check(server.ledger.path).returncode == 0


def test_the_recorded_sequence_then_2208_2601_and_3201(his, server):
    """9001 … 2207, 3201 (matches), 2208 (refund), 2207 again, 2601 voids it, 3201 of nothing matches."""
    his.visit_up_to_2204()
    settled = his.ok("2207")["setlinfo"]
    assert his.ok("3201")["data"]["stmt_rslt"] == "0"
    reverse = dict(
        infno="2208",
        msgid="H110105000012021120911000021",
        setl_id=settled["setl_id"],
        mdtrt_id=his.known["mdtrt_id"],
        psn_no=QINGHAI,
    )
    assert his.data_call(**reverse)["infcode"] == 0
    second = "H110105000012021120911100022"
    his.ok("2207", second)
    void = dict(
        infno="2601", msgid="H110105000012021120911200023", psn_no=QINGHAI, omsgid=second, oinfno="2207"
    )
    voided = his.data_call(**void)["output"]["data"]
    assert voided["setl_id"] and voided["omsgid"] == second
    # 3201 with the day's original figures no longer matches, and says by how much.
    stale = his.ok("3201", "H110105000012021120918000024")["data"]
    assert stale["stmt_rslt"] == "1" and "medfee_sumamt 179.63 ≠ 0.00" in stale["stmt_rslt_dscr"]
    zero = dict(medfee_sumamt=0, fund_pay_sumamt=0, fixmedins_setl_cnt=0)
    assert his.ok("3201", "H110105000012021120918000025", **zero)["data"]["stmt_rslt"] == "0"
    assert ledger_check(server.ledger.path).returncode == 0


def test_a_visit_settled_through_grpc_is_reversed_and_reconciled_through_the_national_door(his, hospital):
    grpc_his = hospital()
    s = grpc_his.settle(
        QINGHAI, "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
    )
    setl_id = s.settlement.settlement_id
    assert his.ok("3201")["data"]["stmt_rslt"] == "0"  # the recorded 179.63 / 129.63 / 1
    reverse = dict(infno="2208", msgid="H110105000012021120912000026", setl_id=setl_id, psn_no=QINGHAI)
    assert money(his.data_call(**reverse)["output"]["setlinfo"])[0] == Decimal("-179.63")
    assert grpc_his.get(setl_id).status == pb.SETTLEMENT_STATUS_REVERSED


def test_the_visit_flow_survives_a_restart(tmp_path):
    db = tmp_path / "ledger.db"
    first = start(ServerConfig(port=0, db_path=db, national_port=0))
    try:
        his = NationalHis(first)
        his.visit_up_to_2204()
        known = dict(his.known)
    finally:
        first.stop(grace=1)
    second = start(ServerConfig(port=0, db_path=db, national_port=0))
    try:
        his = NationalHis(second)
        his.known.update(known)
        assert money(his.ok("2207")["setlinfo"]) == (Decimal("179.63"), Decimal("129.63"), Decimal("50.00"))
    finally:
        second.stop(grace=1)


def test_a_retried_2201_gets_the_same_visit_and_a_reused_msgid_is_refused(his):
    first = his.ok("2201")["data"]["mdtrt_id"]
    assert his.ok("2201")["data"]["mdtrt_id"] == first
    assert his.refused("2201", begntime="2021-12-10 09:00:00")["err_reason"] == "MSGID_REUSED"


@pytest.mark.parametrize(
    ("amount", "reason"),
    [("50.001", "FIELD_INVALID"), ("1e400", "FIELD_INVALID"), ('"abc"', "FIELD_INVALID")],
)
def test_money_with_more_than_two_places_is_refused_not_rounded(his, amount, reason):
    his.known["mdtrt_id"] = his.ok("2201")["data"]["mdtrt_id"]
    his.ok("2203")
    body = simplejson.dumps(his.envelope("2204"), use_decimal=True).replace(
        '"pric": 50.00', f'"pric": {amount}'
    )
    answer = well_formed(his.http.post(PATH, content=body))
    assert (answer["infcode"], answer["err_reason"]) == (-1, reason)
    assert "input.feedetail.0.pric" in answer["err_detail"]


def test_not_json_unknown_paths_and_unknown_transactions_are_envelopes(his):
    assert well_formed(his.http.post(PATH, content=b"<xml/>"))["err_reason"] == "MALFORMED_MESSAGE"
    assert well_formed(his.http.post(PATH, content=b"[1, 2]"))["err_reason"] == "FIELD_INVALID"
    missing = well_formed(his.http.post(PATH, json={"infno": "2207"}))
    assert missing["err_reason"] == "FIELD_MISSING" and "msgid" in missing["err_detail"]
    unknown = his.post({**his.common, "infno": "9999", "msgid": "H110105000012021120909000099", "input": {}})
    assert unknown["err_reason"] == "UNSUPPORTED_TRANSACTION" and "不支持" in unknown["err_msg"]
    lost = his.http.get("/nowhere")
    assert lost.status_code == 404 and well_formed(lost)["infcode"] == -1
    assert well_formed(his.http.get(PATH))["infcode"] == -1  # GET: 405, still an envelope


def test_the_path_may_name_the_infno_and_must_agree(his):
    assert his.post(his.envelope("9001"), f"{PATH}/9001")["infcode"] == 0
    assert his.post(his.envelope("9001"), f"{PATH}/2207")["err_reason"] == "FIELD_INVALID"


def test_the_openapi_description_is_published(his):
    spec = his.http.get("/fsi/openapi.json").json()
    assert PATH in spec["paths"] and f"{PATH}/{{infno}}" in spec["paths"]
    body = spec["paths"][PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"infno", "msgid", "fixmedins_code"} <= set(body["required"])


def test_national_calls_are_journaled_with_their_door(his, server):
    """2206, 2207 and a refused 2208 through the national door: journal entries of door
    "national" with the contract call each made, its msgid and its outcome."""
    his.visit_up_to_2204()
    his.ok("2206")
    setl_id = his.ok("2207")["setlinfo"]["setl_id"]
    his.data_call("2208", "H110105000012021120913000027", setl_id="S-NONE", psn_no=QINGHAI)
    server.journal.flush()
    entries = [e for e in server.journal.entries() if e.door == "national"]
    assert [(e.rpc, e.msgid, e.code) for e in entries][-3:] == [
        ("PreSettleVisit", "H110105000012021120909300007", "OK"),
        ("SettleVisit", "H110105000012021120909310008", "OK"),
        ("ReverseSettlement", "H110105000012021120913000027", "NOT_FOUND"),
    ]
    assert entries[-1].reason == "SETTLEMENT_NOT_FOUND" and entries[-1].institution == "H11010500001"
    assert entries[-2].answer["settlement"]["settlement_id"] == setl_id


def test_2204_splits_class_b_ceiling_and_class_c_lines_and_2207_takes_those_figures(his):
    """Beijing's catalog (catalogs/110000.yaml): B-CEIL-001 is class B, 5 % first
    self-paid, ceiling 80.00; C-DRUG-001 is class C.
    B-CEIL-001 at 100.00 × 1: over the ceiling 100.00 - 80.00 = 20.00; first self-paid
    5 % × 80.00 = 4.00; in scope 80.00 - 4.00 = 76.00.
    C-DRUG-001 at 15.00 × 2 = 30.00: all of it fully self-paid, nothing in scope."""
    his.known["mdtrt_id"] = his.ok("2201")["data"]["mdtrt_id"]
    his.ok("2203")
    envelope = his.envelope("2204")
    first, second = envelope["input"]["feedetail"]
    first.update(med_list_codg="B-CEIL-001", pric=Decimal("100.00"), det_item_fee_sumamt=Decimal("100.00"))
    second.update(med_list_codg="C-DRUG-001", pric=Decimal("15.00"), cnt=Decimal("2.0000"),
                  det_item_fee_sumamt=Decimal("30.00"))  # fmt: skip
    answer = his.post(envelope)
    assert answer["infcode"] == 0, answer
    b, c = answer["output"]["result"]
    assert (b["chrgitm_lv"], b["selfpay_prop"], b["pric_uplmt_amt"]) == ("02", Decimal("0.0500"), Decimal("80.00"))
    assert (b["overlmt_amt"], b["preselfpay_amt"], b["inscp_scp_amt"], b["fulamt_ownpay_amt"]) == (
        Decimal("20.00"), Decimal("4.00"), Decimal("76.00"), Decimal("0.00"))  # fmt: skip
    assert (c["chrgitm_lv"], c["selfpay_prop"], c["cnt"]) == ("03", Decimal("1.0000"), 2)
    assert (c["fulamt_ownpay_amt"], c["inscp_scp_amt"]) == (Decimal("30.00"), Decimal("0.00"))
    # 2207 with the sums of those lines: 130.00 in all, 30.00 + 20.00 + 4.00 self-paid, 76.00 in scope.
    split = dict(medfee_sumamt=Decimal("130.00"), fulamt_ownpay_amt=Decimal("30.00"), overlmt_selfpay=Decimal("20.00"),
                 preselfpay_amt=Decimal("4.00"), inscp_scp_amt=Decimal("76.00"))  # fmt: skip
    wrong = his.refused("2207", **{**split, "overlmt_selfpay": Decimal("0.00")})
    assert wrong["err_reason"] == "SPLIT_MISMATCH" and "overlmt_selfpay 0.00 ≠ 20.00" in wrong["err_msg"]
    setlinfo = his.ok("2207", "H110105000012021120909320028", **split)["setlinfo"]
    assert (setlinfo["overlmt_selfpay"], setlinfo["inscp_scp_amt"]) == (Decimal("20.00"), Decimal("76.00"))


NATIONAL_CORRUPTIONS = {
    "a fee line without its visit": (
        "UPDATE national_fee_lines SET mdtrt_id = 'MD-GONE' WHERE feedetl_sn = '0001'",
        "national fee line 0001 of visit MD-GONE",
    ),
    "a visit linked to no settlement": (
        "UPDATE national_visits SET settle_msgid = 'H110105000012021120909319999'",
        "its settlement msgid H110105000012021120909319999 is not a settlement",
    ),
    "a visit linked to another person's settlement": (
        "UPDATE national_visits SET psn_no = '63000000000000000002'",
        "is person 63000000000000000001's, the visit is 63000000000000000002's",
    ),
}


@pytest.mark.parametrize("corruption", sorted(NATIONAL_CORRUPTIONS))
def test_ledger_check_names_a_broken_national_visit(tmp_path, corruption):
    import shutil
    import sqlite3
    from contextlib import closing

    db = tmp_path / "ledger.db"
    running = start(ServerConfig(port=0, db_path=db, national_port=0))
    try:
        his = NationalHis(running)
        his.visit_up_to_2204()
        his.ok("2207")
    finally:
        running.stop(grace=1)
    assert ledger_check(db).returncode == 0
    statement, expected = NATIONAL_CORRUPTIONS[corruption]
    broken = tmp_path / "broken.db"
    shutil.copy(db, broken)
    with closing(sqlite3.connect(broken, isolation_level=None)) as connection:
        connection.execute(statement)
    check = ledger_check(broken)
    assert check.returncode == 1 and expected in check.stdout, check.stdout


@pytest.mark.parametrize(("extra", "expected"), [(["--processes", "2"], "without --processes")])
def test_serve_refuses_the_national_door_where_it_cannot_keep_its_promises(tmp_path, extra, expected):
    from tests.conftest import settlesim

    result = settlesim("serve", "--port", "0", "--national-port", "0", "--db", str(tmp_path / "x.db"), *extra)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr


def test_settlesim_serve_national_port_answers_beside_grpc(tmp_path):
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--national-port", "0", "--no-console",
         "--db", str(tmp_path / "x.db")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("settlesim serving on 127.0.0.1:")
        door = process.stdout.readline().strip()
        assert re.fullmatch(r"settlesim national door on http://127\.0\.0\.1:\d+" + re.escape(PATH), door), door
        url = door.removeprefix("settlesim national door on ")
        sign_in = {"infno": "9001", "msgid": "H110105000012021120909000001", "fixmedins_code": "H11010500001"}
        answer = httpx.post(url, json={**sign_in, "input": {"signIn": {}}}, timeout=30)
        assert well_formed(answer)["infcode"] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_a_settled_visit_does_not_settle_again_under_another_msgid(his, server):
    his.visit_up_to_2204()
    first = his.ok("2207")["setlinfo"]
    again = his.refused("2207", "H110105000012021120909330029")
    assert again["err_reason"] == "VISIT_SETTLED" and "H110105000012021120909310008" in again["err_detail"]
    assert server.ledger.counts() == {"settled": 1}
    # The same msgid again is a retry: the same settlement.
    assert his.ok("2207")["setlinfo"] == first


def test_2001_tells_entitlement_as_verify_registration_does(his):
    """The Qinghai patient is entitled at the Cancer Hospital on 2021-12-09; patient 2's
    registration ended 2023-12-31, so on 2024-03-01 the answer says why not (an answer,
    not a refusal, as VerifyRegistration gives it)."""
    entitled = his.data_call("2001", "H110105000012021120909020030", psn_no=QINGHAI, insutype="390",
                             begntime="2021-12-09 09:00:00", dise_codg="M00503")["output"]["trtinfo"]  # fmt: skip
    assert [(t["fund_pay_type"], t["trt_enjymnt_flag"], t["begndate"]) for t in entitled] == [
        ("390100", "1", "2021-11-01")
    ]
    expired = his.data_call("2001", "H110105000012024030109020031", psn_no="63000000000000000002",
                            begntime="2024-03-01", dise_codg="M00503")["output"]["trtinfo"][0]  # fmt: skip
    assert (expired["trt_enjymnt_flag"], expired["trt_chk_reason"]) == ("0", "REGISTRATION_EXPIRED")
    assert "异地就医备案已过期" in expired["trt_chk_rslt"]


def test_3202_lists_each_settlement_against_the_hospitals_rows(his, hospital):
    """Two settlements on 2021-12-09: the recorded one (national) and a second visit settled
    through gRPC (the deductible is used up: fund 179.63). The hospital lists the first
    with the platform's figures, a made-up one, and not the second."""
    his.visit_up_to_2204()
    first = his.ok("2207")["setlinfo"]
    grpc_his = hospital()
    second = grpc_his.settle(QINGHAI, "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)])
    rows = [
        {"setl_id": first["setl_id"], "medfee_sumamt": Decimal("179.63"), "fund_pay_sumamt": Decimal("129.63")},
        {"setl_id": "S-HIS-ONLY", "medfee_sumamt": Decimal("10.00"), "fund_pay_sumamt": Decimal("0.00")},
    ]
    answer = his.data_call("3202", "H110105000012021120918000032", stmt_begndate="2021-12-09",
                           stmt_enddate="2021-12-09", detail=rows)["output"]["data"]  # fmt: skip
    assert answer["stmt_rslt"] == "1"
    got = {r["setl_id"]: (r["stmt_rslt"], r["msgid"], r["fund_pay_sumamt"]) for r in answer["detail"]}
    assert got == {
        first["setl_id"]: ("0", first["medins_setl_id"], Decimal("129.63")),
        "S-HIS-ONLY": ("3", "", None),
        second.settlement.settlement_id: ("2", second.settlement.msgid, Decimal("179.63")),
    }
    # The figures 3202 gives are GetSettlement's.
    assert grpc_his.get(first["setl_id"]).totals.fund_pays_fen == 12963
    # A row whose fund differs by 0.01 is "1", and says both figures.
    rows[0]["fund_pay_sumamt"] = Decimal("129.62")
    off = his.data_call("3202", "H110105000012021120918000033", stmt_begndate="2021-12-09",
                        stmt_enddate="2021-12-09", detail=rows[:1])["output"]["data"]["detail"][0]  # fmt: skip
    assert off["stmt_rslt"] == "1" and "179.63/129.62 ≠ 179.63/129.63" in off["stmt_rslt_dscr"]


def signed(token: str, institution: str, nonce: str, timestamp: int | None = None) -> dict[str, str]:
    """x-tif-* headers as a gateway signs them: sha256(timestamp + token + nonce + timestamp)."""
    import hashlib
    import time

    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hashlib.sha256(f"{stamp}{token}{nonce}{stamp}".encode()).hexdigest()
    return {"x-tif-paasid": institution, "x-tif-timestamp": stamp, "x-tif-nonce": nonce, "x-tif-signature": digest}


def test_with_auth_token_the_door_takes_only_signed_requests_acting_for_their_signer(tmp_path):
    """institutions.yaml gives the Cancer Hospital the token dev-token-H11010500001 and
    Fuwai dev-token-H11010200002 (the same secrets gRPC's --auth token uses)."""
    import time

    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", national_port=0, auth="token"))
    try:
        his = NationalHis(running)
        body = simplejson.dumps(his.envelope("9001"), use_decimal=True)

        def post(headers: dict[str, str]) -> dict[str, Any]:
            return well_formed(his.http.post(PATH, content=body, headers=headers))

        good = signed("dev-token-H11010500001", "H11010500001", "n1")
        assert post(good)["infcode"] == 0
        assert post(good)["err_reason"] == "CALLER_UNAUTHENTICATED"  # the nonce again: a replay
        assert "nonce" in post(good)["err_detail"]
        assert post({})["err_reason"] == "CALLER_UNAUTHENTICATED"
        wrong_token = signed("dev-token-H11010200002", "H11010500001", "n2")
        assert "does not match" in post(wrong_token)["err_detail"]
        stale = signed("dev-token-H11010500001", "H11010500001", "n3", int(time.time()) - 301)
        assert "within 300 s" in post(stale)["err_detail"]
        # Fuwai, properly signed, cannot act for the Cancer Hospital.
        fuwai = post(signed("dev-token-H11010200002", "H11010200002", "n4"))
        assert fuwai["err_reason"] == "INSTITUTION_NOT_CALLER" and "无权" in fuwai["err_msg"]
    finally:
        running.stop(grace=1)


def test_with_tls_the_door_speaks_https_with_the_servers_certificate(tmp_path):
    import ssl

    from tests.pki import PlatformPki

    pki = PlatformPki(tmp_path / "pki")
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", national_port=0, auth="token",
                                 tls_cert=pki.server.cert, tls_key=pki.server.key))  # fmt: skip
    try:
        trust = ssl.create_default_context(cafile=str(pki.ca.cert))
        url = f"https://127.0.0.1:{running.national_port}{PATH}"
        envelope = {"infno": "9001", "msgid": "H110105000012021120909000001", "fixmedins_code": "H11010500001",
                    "input": {"signIn": {}}}  # fmt: skip
        headers = signed("dev-token-H11010500001", "H11010500001", "tls-1")
        assert well_formed(httpx.post(url, json=envelope, headers=headers, verify=trust))["infcode"] == 0
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the platform CA
            httpx.post(url, json=envelope, headers=headers, verify=ssl.create_default_context())
    finally:
        running.stop(grace=1)


def test_a_sandbox_header_keeps_the_national_visit_in_its_sandbox(his):
    """x-settlesim-session through the national door, read by server/calls.py as gRPC's is:
    what a sandbox settles is not in the real ledger."""
    his.http.headers["x-settlesim-session"] = "national-try-1"
    his.visit_up_to_2204()
    setl_id = his.ok("2207")["setlinfo"]["setl_id"]
    del his.http.headers["x-settlesim-session"]
    outside = his.data_call("5203", "H110105000012021120919000040", psn_no=QINGHAI, setl_id=setl_id)
    assert (outside["infcode"], outside["err_reason"]) == (-1, "SETTLEMENT_NOT_FOUND")
    his.http.headers["x-settlesim-session"] = "bad session!"
    assert his.data_call("5203", "H110105000012021120919000041", setl_id=setl_id)["err_reason"] == "FIELD_INVALID"


def test_a_visit_naming_nobody_is_field_missing_as_on_grpc(server):
    """1101 and 2201 with no psn_no (nor certificate) are FIELD_MISSING, as the contract refuses
    a visit without a person (request.visit.person), not PERSON_NOT_FOUND (they were before)."""
    his = NationalHis(server)
    for infno, data in (("1101", {}), ("2201", {"psn_no": "", "begntime": "2021-12-09 09:00:00"})):
        answer = his.data_call(infno, f"H11010500001202112090900{infno}", **data)
        assert (answer["infcode"], answer["err_reason"]) == (-1, "FIELD_MISSING"), answer
        assert "psn_no" in answer["err_detail"]
