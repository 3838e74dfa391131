"""A mock HIS of the national door: a contract SettlementRequest played as the national
calls an HIS makes for it (2201 → 2203 → 2204 → 2206 → 2207), money as Decimal yuan.

`play_visit` takes the poster (httpx in tests, Locust's HTTP client under load): a
function from an envelope to the answer envelope, parsed with Decimal money.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import simplejson
from settlesim.v1 import settlement_service_pb2 as pb

PATH = "/fsi/api/rsfComIfsService/callService"
Post = Callable[[dict[str, Any]], dict[str, Any]]


def yuan(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))


def encode(envelope: dict[str, Any]) -> bytes:
    return simplejson.dumps(envelope, use_decimal=True, ensure_ascii=False).encode()


def decode(body: bytes) -> dict[str, Any]:
    return simplejson.loads(body, use_decimal=True)


class NationalRefused(Exception):
    """An answer with infcode -1."""

    def __init__(self, infno: str, answer: dict[str, Any]) -> None:
        super().__init__(f"{infno}: {answer.get('err_reason')} {answer.get('err_msg')}")
        self.infno, self.answer = infno, answer


def msgid(institution_code: str, tag: str, n: int) -> str:
    """institution + yyyyMMddHHmmss + tag + sequence: unique per (tag, n)."""
    return f"{institution_code}{time.strftime('%Y%m%d%H%M%S')}{tag}{n:06d}"


@dataclass
class VisitPlayed:
    mdtrt_id: str
    split: list[dict[str, Any]]  # 2204 result[]
    pre: dict[str, Any]  # 2206 setlinfo
    setlinfo: dict[str, Any]  # 2207 setlinfo ({} when the visit stopped at 2206)
    setldetail: list[dict[str, Any]] = field(default_factory=list)  # the last answer's (2207, or 2206)


def play_visit(
    post: Post, request: pb.SettlementRequest, next_msgid: Callable[[], str], *, settle: bool = True
) -> VisitPlayed:
    """The national calls for `request`; 2207 sends the split the 2204 answer gave and
    carries the request's own msgid (its idempotency key, what 2601 voids), 2201-2206
    fresh ones. `settle=False` stops after 2206 (a pre-settlement)."""
    visit = request.visit
    psn_no = visit.person.person_no
    head = {
        "fixmedins_code": visit.institution_code,
        "opter": request.operator or "national",
        "signtype": "MOCK",
    }

    def call(infno: str, body: dict[str, Any], msgid: str = "") -> dict[str, Any]:
        answer = post({**head, "infno": infno, "msgid": msgid or next_msgid(), "input": body})
        if answer.get("infcode") != 0:
            raise NationalRefused(infno, answer)
        return answer["output"]

    insutype = str(visit.insurance_type) if visit.insurance_type else ""
    registered = call(
        "2201", {"data": {"psn_no": psn_no, "insutype": insutype, "begntime": f"{visit.visit_date} 09:00:00"}}
    )
    mdtrt_id = registered["data"]["mdtrt_id"]
    call(
        "2203",
        {
            "mdtrtinfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "med_type": "14",
                "dise_codg": visit.disease_code,
            }
        },
    )
    lines = [
        {"feedetl_sn": item.sequence_no, "mdtrt_id": mdtrt_id, "psn_no": psn_no, "chrg_bchno": "CB1",
         "med_list_codg": item.catalog_code, "medins_list_codg": item.hospital_item_code,
         "det_item_fee_sumamt": yuan(item.amount_fen), "cnt": item.quantity, "pric": yuan(item.unit_price_fen)}
        for item in request.items
    ]  # fmt: skip
    split = call("2204", {"feedetail": lines})["result"]
    total = yuan(sum(item.amount_fen for item in request.items))
    settlement = {"psn_no": psn_no, "mdtrt_id": mdtrt_id, "medfee_sumamt": total, "insutype": insutype,
                  "med_type": "14", "acct_used_flag": "1" if request.use_personal_account else "0",
                  "chrg_bchno": "CB1"}  # fmt: skip
    pre_settled = call("2206", {"data": settlement})
    pre = pre_settled["setlinfo"]
    if not settle:
        return VisitPlayed(mdtrt_id, split, pre, {}, pre_settled.get("setldetail", []))
    sums = {
        "fulamt_ownpay_amt": sum((r["fulamt_ownpay_amt"] for r in split), Decimal("0.00")),
        "overlmt_selfpay": sum((r["overlmt_amt"] for r in split), Decimal("0.00")),
        "preselfpay_amt": sum((r["preselfpay_amt"] for r in split), Decimal("0.00")),
        "inscp_scp_amt": sum((r["inscp_scp_amt"] for r in split), Decimal("0.00")),
    }
    settled = call("2207", {"data": {**settlement, **sums}}, request.msgid)
    return VisitPlayed(mdtrt_id, split, pre, settled["setlinfo"], settled.get("setldetail", []))


def money_problems(request: pb.SettlementRequest, played: VisitPlayed) -> list[str]:
    """What an HIS checks of the answers: the sums add up, 2207 = 2206, nothing negative."""
    s, pre = played.setlinfo, played.pre
    total = yuan(sum(item.amount_fen for item in request.items))
    problems = []
    if s["medfee_sumamt"] != total:
        problems.append(f"medfee_sumamt {s['medfee_sumamt']} != lines {total}")
    if s["fund_pay_sumamt"] + s["psn_part_amt"] != s["medfee_sumamt"]:
        problems.append(f"fund {s['fund_pay_sumamt']} + person {s['psn_part_amt']} != {s['medfee_sumamt']}")
    if min(s["fund_pay_sumamt"], s["psn_part_amt"]) < 0:
        problems.append("negative money")
    for name in ("medfee_sumamt", "fund_pay_sumamt", "psn_part_amt", "inscp_scp_amt"):
        if s[name] != pre[name]:
            problems.append(f"2207 {name} {s[name]} != 2206's {pre[name]}")
    if not s["setl_id"] or s["setl_status"] != "settled":
        problems.append(f"setl_id/status wrong: {s['setl_id']!r} {s['setl_status']!r}")
    return problems


def detail_file(lines: Iterable[Sequence[object]], name: str = "detail.txt") -> bytes:
    """A 9101 detail file as HIS code builds it: a zip of one tab-separated text file, a
    settlement per line (setl_id, mdtrt_id, psn_no, medfee_sumamt, fund_pay_sumamt, acct_pay,
    refd_setl_flag)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, "".join("\t".join(str(c) for c in line) + "\n" for line in lines))
    return out.getvalue()


def file_lines(content: bytes) -> list[list[str]]:
    """The tab-separated lines of a file 9102 downloads (a zip of one text file)."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        (member,) = archive.namelist()
        text = archive.read(member).decode()
    return [line.split("\t") for line in text.splitlines() if line]
