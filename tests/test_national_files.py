"""3202 by file: 9101 uploads the hospital's detail file, 3202 compares it, 9102 downloads the
result file whose lines carry the msgid to void with. A real server (gRPC and the national
door on free ports, one ledger), posted to with httpx as an HIS does."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from settlesim.clients import national
from settlesim.clients.hospital import Fee, MsgidFactory, fee_items
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.v1 import settlement_service_pb2 as pb

from tests.conftest import ledger_check

CANCER, FUWAI, QINGHAI = "H11010500001", "H11010200002", "63000000000000000001"


class His:
    def __init__(self, running: RunningServer, institution: str = CANCER) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{running.national_port}", timeout=30)
        self.institution = institution
        self.next_msgid = MsgidFactory(institution)

    def raw(self, infno: str, body: dict[str, Any], msgid: str = "") -> httpx.Response:
        envelope = {"infno": infno, "msgid": msgid or self.next_msgid(), "fixmedins_code": self.institution,
                    "input": body}  # fmt: skip
        return self.http.post(national.PATH, content=national.encode(envelope),
                              headers={"content-type": "application/json"})  # fmt: skip

    def post(self, infno: str, body: dict[str, Any], msgid: str = "") -> dict[str, Any]:
        response = self.raw(infno, body, msgid)
        assert response.headers["content-type"] == "application/json", response.headers
        return national.decode(response.content)

    def ok(self, infno: str, body: dict[str, Any], msgid: str = "") -> dict[str, Any]:
        answer = self.post(infno, body, msgid)
        assert answer["infcode"] == 0, answer
        return answer["output"]

    def settle(self, day: str, fees: list[Fee]) -> dict[str, Any]:
        request = pb.SettlementRequest(
            msgid=self.next_msgid(), items=fee_items(fees),
            visit=pb.Visit(institution_code=self.institution, person=pb.PersonRef(person_no=QINGHAI),
                           disease_code="M00503", visit_date=day),
        )  # fmt: skip
        played = national.play_visit(lambda e: national.decode(self.raw(e["infno"], e["input"], e["msgid"]).content),
                                      request, self.next_msgid)  # fmt: skip
        return played.setlinfo


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", national_port=0))
    yield running
    running.stop(grace=1)


def upload(his: His, lines: list[list[object]], msgid: str = "", *, as_bytes: bool = False) -> dict[str, Any]:
    content = national.detail_file(lines)
    sent: Any = [b - 256 if b > 127 else b for b in content] if as_bytes else base64.b64encode(content).decode()
    return his.post("9101", {"fsUploadIn": {"in": sent, "filename": "detail.txt.zip", "fixmedins_code": CANCER}}, msgid)


def test_detail_reconciliation_by_file_9101_3202_9102_then_void_by_the_result_msgid(server, tmp_path):
    """Two Qinghai visits: 2021-12-09 179.63 (deductible 50.00, fund 129.63, patient 50.00) and
    2021-12-10 100.00 (deductible used up, ratio 100 %: fund 100.00). The hospital's file lists
    the first right, the second with fund 99.99, and a settlement the platform does not have;
    the result file says 0 / 1 / 3 per line, and the platform's figures."""
    his = His(server)
    first = his.settle("2021-12-09", [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)])
    second = his.settle("2021-12-10", [Fee("A-CONSULT-001", 10000)])
    assert (first["fund_pay_sumamt"], second["fund_pay_sumamt"]) == (Decimal("129.63"), Decimal("100.00"))
    lines = [
        [first["setl_id"], first["mdtrt_id"], QINGHAI, "179.63", "129.63", "0.00", "0"],
        [second["setl_id"], second["mdtrt_id"], QINGHAI, "100.00", "99.99", "0.00", "0"],
        ["S-HIS-ONLY", "M-HIS-ONLY", QINGHAI, "10.00", "0.00", "0.00", "0"],
    ]
    uploaded = upload(his, lines, "H110105000012021121118000001")
    assert uploaded["infcode"] == 0, uploaded
    file_id = uploaded["output"]["file_qury_no"]
    assert len(file_id) == 30 and uploaded["output"]["filename"] == "detail.txt.zip"
    # A retry of the same upload (same msgid, same file) names the same file; as signed bytes too.
    assert upload(his, lines, "H110105000012021121118000001")["output"] == uploaded["output"]
    assert upload(his, lines, as_bytes=True)["infcode"] == 0

    period = {"stmt_begndate": "2021-12-09", "stmt_enddate": "2021-12-10", "setl_optins": "630000", "clr_type": "11"}
    out = his.ok("3202", {"data": {**period, "file_qury_no": file_id}})
    assert out["stmt_rslt"] == "1"
    result_id = out["fileinfo"]["file_qury_no"]
    assert len(result_id) == 30 and result_id != file_id and out["fileinfo"]["filename"].endswith(".zip")

    response = his.raw("9102", {"fsDownloadIn": {"file_qury_no": result_id, "filename": out["fileinfo"]["filename"],
                                                  "fixmedins_code": CANCER}})  # fmt: skip
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    got = national.file_lines(response.content)
    # psn_no, mdtrt_id, setl_id, msgid, stmt_rslt, refd_setl_flag, memo, medfee, fund, acct_pay
    assert [(r[2], r[3], r[4], r[7], r[8]) for r in got] == [
        (first["setl_id"], first["medins_setl_id"], "0", "179.63", "129.63"),
        (second["setl_id"], second["medins_setl_id"], "1", "100.00", "100.00"),
        ("S-HIS-ONLY", "", "3", "", ""),
    ]
    assert got[1][6] == "金额不符 (hospital ≠ platform): 100.00/99.99 ≠ 100.00/100.00"
    assert (got[0][0], got[0][1]) == (QINGHAI, first["mdtrt_id"])

    # The HIS voids the second by the msgid the result gave (2601); it then reconciles apart.
    voided = his.ok("2601", {"data": {"psn_no": QINGHAI, "omsgid": got[1][3], "oinfno": "2207"}})
    assert voided["data"]["setl_id"] == second["setl_id"]
    again = his.ok("3202", {"data": {**period, "file_qury_no": file_id}})
    lines_after = national.file_lines(
        his.raw("9102", {"fsDownloadIn": {"file_qury_no": again["fileinfo"]["file_qury_no"]}}).content
    )
    assert [(r[2], r[4]) for r in lines_after] == [(first["setl_id"], "0"), (second["setl_id"], "3"),
                                                   ("S-HIS-ONLY", "3")]  # fmt: skip
    # The first result file is unchanged (a file, not a view), and so after a restart.
    port = server.national_port
    server.stop(grace=1)
    restarted = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", national_port=port))
    try:
        kept = His(restarted).raw("9102", {"fsDownloadIn": {"file_qury_no": result_id}})
        assert kept.content == response.content
    finally:
        restarted.stop(grace=1)
    assert ledger_check(tmp_path / "ledger.db").returncode == 0  # kept files are no damage


def test_files_are_refused_as_envelopes_naming_what_is_wrong(server):
    his = His(server)
    six = upload(his, [["S1", "M1", QINGHAI, "1.00", "1.00", "0.00"]])
    assert (six["infcode"], six["err_reason"]) == (-1, "FIELD_INVALID")
    assert "line 1 has 6 columns" in six["err_detail"]
    cents = upload(his, [["S1", "M1", QINGHAI, "1.001", "1.00", "0.00", "0"]])
    assert "line 1 medfee_sumamt has more than 2 decimal places" in cents["err_detail"]
    not_base64 = his.post("9101", {"fsUploadIn": {"in": "not base64!", "filename": "x"}})
    assert not_base64["err_reason"] == "FIELD_INVALID" and "input.fsUploadIn.in" in not_base64["err_detail"]
    # 9102 of a file nobody made, and of another institution's file, is an envelope, not a zip.
    unknown = his.post("9102", {"fsDownloadIn": {"file_qury_no": "F" + "0" * 29}})
    assert unknown["err_reason"] == "FIELD_INVALID" and "no file" in unknown["err_detail"]
    mine = upload(his, [["S1", "M1", QINGHAI, "1.00", "1.00", "0.00", "0"]])["output"]["file_qury_no"]
    assert his.raw("9102", {"fsDownloadIn": {"file_qury_no": mine}}).headers["content-type"] == "application/zip"
    theirs = His(server, FUWAI).post("9102", {"fsDownloadIn": {"file_qury_no": mine}})
    assert theirs["err_reason"] == "FIELD_INVALID"
    # A 3202 naming the msgid of a call (kept in the same place as files) is refused too.
    msgid = his.next_msgid()
    his.ok("2201", {"data": {"psn_no": QINGHAI, "begntime": "2021-12-09 09:00:00"}}, msgid)
    period = {"stmt_begndate": "2021-12-09", "stmt_enddate": "2021-12-09"}
    assert his.post("3202", {"data": {**period, "file_qury_no": msgid}})["err_reason"] == "FIELD_INVALID"
