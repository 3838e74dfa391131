"""2201-2205: the visit (registration, diagnosis, fee lines and their split), kept in the ledger."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from settlesim.server.national import money
from settlesim.server.national.call import CHRGITM_LV, CHRONIC_SPECIAL_OUTPATIENT, Call, data_of, day_of
from settlesim.server.national.envelope import Part, parse
from settlesim.server.national.people import find_person
from settlesim.server.national.visits import FeeLine, NationalWrites, Visit
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.v1 import settlement_service_pb2 as pb


class Registration2201(Part):
    psn_no: str
    insutype: str = ""
    begntime: str
    mdtrt_cert_type: str = ""
    mdtrt_cert_no: str = ""
    ipt_otp_no: str = ""


class VisitRef(Part):
    mdtrt_id: str
    psn_no: str = ""
    ipt_otp_no: str = ""


class MdtrtInfo(Part):
    mdtrt_id: str
    psn_no: str = ""
    med_type: str = CHRONIC_SPECIAL_OUTPATIENT
    begntime: str = ""
    dise_codg: str = ""


class Diagnosis(Part):
    diag_type: str = ""
    diag_srt_no: str = ""
    diag_code: str = ""
    maindiag_flag: str = ""


class Upload2203(Part):
    mdtrtinfo: MdtrtInfo
    diseinfo: list[Diagnosis] = Field(default_factory=list)


class FeeDetail(Part):
    feedetl_sn: str
    mdtrt_id: str
    psn_no: str = ""
    chrg_bchno: str = ""
    med_list_codg: str
    medins_list_codg: str = ""
    det_item_fee_sumamt: Any
    cnt: Any
    pric: Any


class Upload2204(Part):
    feedetail: list[FeeDetail]


class FeeCancel(Part):
    mdtrt_id: str
    chrg_bchno: str = "0000"
    psn_no: str = ""


# --- 2201-2205: the visit ------------------------------------------------------------------------


def register(call: Call) -> dict[str, Any]:
    """2201 门诊挂号 -> mdtrt_id."""
    data = data_of(call, Registration2201)
    person = find_person(call.world, data.psn_no)
    if call.institution not in call.world.institutions:
        raise Refusal(
            Reason.UNKNOWN_INSTITUTION, f"no institution {call.institution}", field="fixmedins_code"
        )
    insutype = data.insutype or person.insurance_type.value
    begntime = day_of(data.begntime, "input.data.begntime")
    mdtrt_id = call.once(
        lambda writes: {
            "data": {
                "mdtrt_id": writes.register(person.person_no, insutype, begntime),
                "psn_no": person.person_no,
                "ipt_otp_no": data.ipt_otp_no,
            }
        }
    )
    return mdtrt_id


def cancel_registration(call: Call) -> dict[str, Any]:
    """2202 挂号撤销: refused while the visit has a settlement in force."""
    data = data_of(call, VisitRef)

    def work(writes: NationalWrites) -> dict[str, Any]:
        writes.cancel(data.mdtrt_id)
        return {}

    return call.once(work)


def upload_visit(call: Call) -> dict[str, Any]:
    """2203 就诊信息上传: med_type and the main diagnosis (dise_codg, or diseinfo's main one)."""
    body = parse(Upload2203, call.envelope.input, "input")
    info = body.mdtrtinfo
    dise_codg = info.dise_codg
    if not dise_codg and body.diseinfo:
        main = [d for d in body.diseinfo if d.maindiag_flag == "1"] or body.diseinfo
        dise_codg = main[0].diag_code
    if not dise_codg:
        where = "input.mdtrtinfo.dise_codg"
        raise Refusal(Reason.FIELD_MISSING, f"the visit's diagnosis: {where}", field=where)
    begntime = day_of(info.begntime, "input.mdtrtinfo.begntime") if info.begntime else ""

    def work(writes: NationalWrites) -> dict[str, Any]:
        writes.describe(info.mdtrt_id, info.med_type, dise_codg, begntime)
        return {}

    return call.once(work)


def _lines(details: list[FeeDetail]) -> list[FeeLine]:
    lines = []
    for i, d in enumerate(details):
        where = f"input.feedetail.{i}"
        lines.append(
            FeeLine(
                feedetl_sn=d.feedetl_sn,
                chrg_bchno=d.chrg_bchno,
                med_list_codg=d.med_list_codg,
                medins_list_codg=d.medins_list_codg,
                pric=money.yuan_to_fen(d.pric, f"{where}.pric"),
                cnt=money.whole_count(d.cnt, f"{where}.cnt"),
                amount=money.yuan_to_fen(d.det_item_fee_sumamt, f"{where}.det_item_fee_sumamt"),
            )
        )
    return lines


def settlement_request(
    call: Call, visit: Visit, lines: list[FeeLine], *, use_account: bool = False
) -> pb.SettlementRequest:
    """The contract's SettlementRequest for a visit and its lines (the 2207 msgid keys it);
    `use_account`: 2206/2207's acct_used_flag."""
    if not visit.dise_codg:
        raise Refusal(
            Reason.FIELD_MISSING,
            f"visit {visit.mdtrt_id} has no diagnosis yet: upload it with 2203 first",
            field="input.mdtrtinfo.dise_codg",
        )
    insutype = int(visit.insutype) if visit.insutype in ("310", "390") else 0
    return pb.SettlementRequest(
        msgid=call.envelope.msgid,
        visit=pb.Visit(
            institution_code=call.institution,
            person=pb.PersonRef(person_no=visit.psn_no),
            disease_code=visit.dise_codg,
            visit_date=visit.begntime,
            insurance_type=insutype,  # type: ignore[arg-type]
        ),
        items=[
            pb.FeeItem(
                sequence_no=line.feedetl_sn,
                catalog_code=line.med_list_codg,
                hospital_item_code=line.medins_list_codg,
                unit_price_fen=line.pric,
                quantity=line.cnt,
                amount_fen=line.amount,
            )
            for line in lines
        ],
        operator=call.envelope.opter or call.envelope.opter_name or "national",
        use_personal_account=use_account,
    )


def upload_fees(call: Call) -> dict[str, Any]:
    """2204 费用明细上传: the lines, and each line's split (result[]) as the rules give it."""
    body = parse(Upload2204, call.envelope.input, "input")
    if not body.feedetail:
        raise Refusal(Reason.ITEMS_EMPTY, "feedetail has no fee line", field="input.feedetail")
    visits = {d.mdtrt_id for d in body.feedetail}
    if len(visits) != 1:
        raise Refusal(
            Reason.FIELD_INVALID, "one 2204 uploads the lines of one visit", field="input.feedetail"
        )
    mdtrt_id = visits.pop()
    lines = _lines(body.feedetail)
    visit = call.store.visit(call.session, call.institution, mdtrt_id)
    request = settlement_request(call, visit, lines)
    priced = call.contract_call(
        "PreSettleVisit", call.core.pre_settle_visit, pb.PreSettleVisitRequest(request=request)
    ).settlement
    result = [_line_split(line, item) for line, item in zip(lines, priced.items, strict=True)]

    def work(writes: NationalWrites) -> dict[str, Any]:
        writes.upload(mdtrt_id, lines)
        return {"result": result}

    return call.once(work)


def _line_split(line: FeeLine, item: pb.SettledItem) -> dict[str, Any]:
    yuan = money.fen_to_yuan
    return {
        "feedetl_sn": line.feedetl_sn,
        "det_item_fee_sumamt": yuan(item.amount_fen),
        "cnt": line.cnt,
        "pric": yuan(line.pric),
        "pric_uplmt_amt": yuan(item.price_ceiling_fen) if item.HasField("price_ceiling_fen") else None,
        "selfpay_prop": money.ratio(_self_pay_share_bp(item)),
        "fulamt_ownpay_amt": yuan(item.full_self_pay_fen),
        "overlmt_amt": yuan(item.over_ceiling_self_pay_fen),
        "preselfpay_amt": yuan(item.pre_self_pay_fen),
        "inscp_scp_amt": yuan(item.in_scope_fen),
        "chrgitm_lv": CHRGITM_LV.get(item.catalog_class, "03"),
    }  # fmt: skip


def _self_pay_share_bp(item: pb.SettledItem) -> int:
    """selfpay_prop 自付比例: class A none, class B its first self-paid share, else all."""
    if item.catalog_class == pb.CATALOG_CLASS_A:
        return 0
    if item.catalog_class == pb.CATALOG_CLASS_B:
        return item.self_pay_share_bp
    return 10_000


def cancel_fees(call: Call) -> dict[str, Any]:
    """2205 费用明细撤销: a batch (chrg_bchno) or "0000" for all; refused after settlement."""
    data = data_of(call, FeeCancel)

    def work(writes: NationalWrites) -> dict[str, Any]:
        writes.cancel_lines(data.mdtrt_id, data.chrg_bchno or "0000")
        return {}

    return call.once(work)
