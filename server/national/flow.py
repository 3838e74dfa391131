"""The national transactions (交易), each from its envelope to its output.

Every transaction that touches money goes through SettlementCore with a contract
message built from the visit the ledger keeps (2206 PreSettleVisit, 2207
SettleVisit, 2208 ReverseSettlement, 2601 VoidByMessageId, 5203 GetSettlement,
3201 Reconcile), so the national door validates, checks and prices exactly as the
gRPC door does. The visit flow's own steps (2201-2205) keep their state in the
ledger (visits.py). Money leaves as Decimal yuan (money.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import simplejson
from pydantic import Field
from settlesim.server import validation
from settlesim.server.model import Person, World
from settlesim.server.national import money
from settlesim.server.national.envelope import Envelope, Part, parse
from settlesim.server.national.visits import FeeLine, Visit, VisitStore
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.service import Caller, SettlementCore
from settlesim.server.status import zh_message
from settlesim.v1 import settlement_service_pb2 as pb

CHRONIC_SPECIAL_OUTPATIENT = "14"  # med_type 门诊慢特病
OUTPATIENT_CLEARING = "11"  # clr_type 门诊
# chrgitm_lv 收费项目等级: 01 甲类, 02 乙类, 03 丙类 (also what is not in the catalog: 自费).
CHRGITM_LV = {
    pb.CATALOG_CLASS_A: "01",
    pb.CATALOG_CLASS_B: "02",
    pb.CATALOG_CLASS_C: "03",
    pb.CATALOG_CLASS_NOT_LISTED: "03",
}
# fund_pay_type 基金支付类型 of the basic pooled fund, per insutype.
POOLED_FUND = {"310": ("310100", "职工基本医疗保险统筹基金"), "390": ("390100", "城乡居民基本医疗保险基金")}


@dataclass
class Call:
    """One national call: who, what, and the contract calls it made (for the journal)."""

    core: SettlementCore
    store: VisitStore
    caller: Caller
    envelope: Envelope
    core_loop: asyncio.AbstractEventLoop | None = None
    contract: list[list[Any]] = field(default_factory=list)  # [rpc, request, answer] per contract call

    @property
    def world(self) -> World:
        return self.core.world

    @property
    def institution(self) -> str:
        return self.envelope.fixmedins_code

    @property
    def session(self) -> str:
        return self.caller.session

    def request_hash(self) -> str:
        body = simplejson.dumps(self.envelope.input, use_decimal=True, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{self.envelope.infno}\n{body}".encode()).hexdigest()

    def once(self, work: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        return self.store.once(
            self.session,
            self.institution,
            self.envelope.msgid,
            self.envelope.infno,
            self.request_hash(),
            work,
        )

    def contract_call(
        self, rpc: str, method: Callable[[Caller, Any], Any], request: Any, **kwargs: Any
    ) -> Any:
        made = [rpc, request, None]  # journaled even when it is refused
        self.contract.append(made)
        made[2] = answer = self.core_call(method, request, **kwargs)
        return answer

    def core_call(self, method: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
        """A SettlementCore call from the door's worker thread. An async core (one
        event loop serving gRPC) is run on its own loop, `core_loop`."""
        answer = method(self.caller, request, **kwargs)
        if inspect.isawaitable(answer):
            assert self.core_loop is not None, "an async core needs its event loop"
            answer = asyncio.run_coroutine_threadsafe(answer, self.core_loop).result()  # type: ignore[arg-type]
        return answer


# --- input parts ---------------------------------------------------------------------------


class SignIn(Part):
    opter_no: str = ""
    mac: str = ""
    ip: str = ""


class PersonQuery(Part):
    mdtrt_cert_type: str = ""
    mdtrt_cert_no: str = ""
    psn_cert_type: str = ""
    certno: str = ""
    psn_no: str = ""


class PersonNo(Part):
    psn_no: str


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


class Settle(Part):
    psn_no: str
    mdtrt_id: str
    medfee_sumamt: Any = None
    chrg_bchno: str = ""
    acct_used_flag: str = "0"
    insutype: str = ""
    med_type: str = CHRONIC_SPECIAL_OUTPATIENT
    invono: str = ""
    fulamt_ownpay_amt: Any = None
    overlmt_selfpay: Any = None
    preselfpay_amt: Any = None
    inscp_scp_amt: Any = None


class Reverse(Part):
    setl_id: str
    mdtrt_id: str = ""
    psn_no: str = ""


class Void(Part):
    psn_no: str = ""
    omsgid: str
    oinfno: str


class Totals3201(Part):
    insutype: str
    clr_type: str = OUTPATIENT_CLEARING
    setl_optins: str
    stmt_begndate: str
    stmt_enddate: str
    medfee_sumamt: Any
    fund_pay_sumamt: Any
    acct_pay: Any = Decimal(0)
    fixmedins_setl_cnt: Any
    refd_setl_flag: str = "0"


class SettlementQuery(Part):
    psn_no: str = ""
    setl_id: str
    mdtrt_id: str = ""


def data_of(call: Call, model: type[Part]) -> Any:
    """input.data as `model` (a missing data part is an empty one)."""
    data = call.envelope.input.get("data", {})
    return parse(model, data, "input.data")


# --- 9001, 1101, 5301: who is this -----------------------------------------------------------


def sign_in(call: Call) -> dict[str, Any]:
    """9001 签到 (input.signIn): a sign_no for the operator (not required by later calls here)."""
    parse(SignIn, call.envelope.input.get("signIn", call.envelope.input.get("data", {})), "input.signIn")
    now = datetime.now(UTC)
    return {"signinoutb": {"sign_time": now.strftime("%Y-%m-%d %H:%M:%S"), "sign_no": uuid.uuid4().hex[:24]}}


def _person(world: World, psn_no: str = "", cert_type: str = "", cert_no: str = "") -> Person:
    person = world.people.get(psn_no) if psn_no else None
    if person is None and cert_no:
        found = world.people_by_certificate.get((cert_type or "01", cert_no)) or (
            cert_no if cert_no in world.people else None
        )
        person = world.people.get(found) if found else None
    if person is None:
        raise Refusal(Reason.PERSON_NOT_FOUND, f"no insured person {psn_no or cert_no!r}", person_no=psn_no)
    return person


def person_info(call: Call) -> dict[str, Any]:
    """1101 人员信息获取: baseinfo and insuinfo (no personal account yet: balc 0.00)."""
    q = data_of(call, PersonQuery)
    cert_no = q.certno or q.mdtrt_cert_no
    person = _person(call.world, q.psn_no, q.psn_cert_type, cert_no)
    first = person.insured[0] if person.insured else None
    return {
        "baseinfo": {
            "psn_no": person.person_no,
            "psn_cert_type": person.certificate_type,
            "certno": person.certificate_no,
            "psn_name": person.name,
        },
        "insuinfo": [
            {
                "insutype": person.insurance_type.value,
                "psn_type": "",
                "balc": money.fen_to_yuan(0),
                "psn_insu_stas": "1" if first is not None else "0",
                "psn_insu_date": first.start.isoformat() if first else "",
                "paus_insu_date": first.end.isoformat() if first and first.end else "",
                "insuplc_admdvs": person.insured_region,
            }
        ],
        "idetinfo": [],
    }


def disease_registrations(call: Call) -> dict[str, Any]:
    """5301 慢特病备案查询: the person's qualified chronic/special diseases."""
    person = _person(call.world, data_of(call, PersonNo).psn_no)
    rows = []
    for q in person.qualifications:
        disease = call.world.diseases.get(q.disease)
        rows.append(
            {
                "opsp_dise_code": q.disease,
                "opsp_dise_name": disease.name if disease else "",
                "begndate": q.valid.start.isoformat(),
                "enddate": q.valid.end.isoformat() if q.valid.end else "",
                "insutype": person.insurance_type.value,
            }
        )
    return {"feedetail": rows}


class Entitlement(Part):
    psn_no: str
    insutype: str = ""
    med_type: str = CHRONIC_SPECIAL_OUTPATIENT
    begntime: str
    dise_codg: str


def entitlement(call: Call) -> dict[str, Any]:
    """2001 人员待遇享受检查: whether the visit (person, disease, date, this institution)
    can settle as a cross-province chronic/special-disease visit, per fund (the pooled
    fund only). An ineligible visit is an answer (trt_enjymnt_flag 0 with the reason),
    not a refusal, as VerifyRegistration answers it."""
    data = data_of(call, Entitlement)
    day = _day(data.begntime, "input.data.begntime")
    insutype = int(data.insutype) if data.insutype in ("310", "390") else 0
    visit = pb.Visit(
        institution_code=call.institution,
        person=pb.PersonRef(person_no=data.psn_no),
        disease_code=data.dise_codg,
        visit_date=day,
        insurance_type=insutype,  # type: ignore[arg-type]
    )
    answer = call.contract_call(
        "VerifyRegistration", call.core.verify_registration, pb.VerifyRegistrationRequest(visit=visit)
    )
    person = call.world.people.get(answer.person_no)
    own = person.insurance_type.value if person is not None else data.insutype
    fund_type, fund_name = POOLED_FUND.get(own, ("", "基本医疗保险统筹基金"))
    registration = answer.registration if answer.HasField("registration") else None
    result = "享受待遇" if answer.eligible else f"{zh_message(Reason(answer.reason))}：{answer.message}"
    return {
        "trtinfo": [
            {
                "psn_no": answer.person_no or data.psn_no,
                "fund_pay_type": fund_type,
                "fund_pay_type_name": fund_name,
                "trt_enjymnt_flag": "1" if answer.eligible else "0",
                "begndate": registration.valid_from if registration else "",
                "enddate": registration.valid_until if registration else "",
                "trt_chk_rslt": result,
                # settlesim extension: the reason SettleVisit would refuse with.
                "trt_chk_reason": answer.reason,
            }
        ]
    }


# --- 2201-2205: the visit ------------------------------------------------------------------------


def _day(text: str, field_name: str) -> str:
    """yyyy-MM-dd of a national time ("2021-12-09 10:00:00" or "2021-12-09")."""
    day = text[:10]
    try:
        date.fromisoformat(day)
    except ValueError:
        raise Refusal(
            Reason.FIELD_INVALID, f"{field_name} must start yyyy-MM-dd: {text!r}", field=field_name
        ) from None
    return day


def register(call: Call) -> dict[str, Any]:
    """2201 门诊挂号 -> mdtrt_id."""
    data = data_of(call, Registration2201)
    person = _person(call.world, data.psn_no)
    if call.institution not in call.world.institutions:
        raise Refusal(
            Reason.UNKNOWN_INSTITUTION, f"no institution {call.institution}", field="fixmedins_code"
        )
    insutype = data.insutype or person.insurance_type.value
    begntime = _day(data.begntime, "input.data.begntime")
    mdtrt_id = call.once(
        lambda db: {
            "data": {
                "mdtrt_id": VisitStore.register(
                    db, call.session, call.institution, person.person_no, insutype, begntime
                ),
                "psn_no": person.person_no,
                "ipt_otp_no": data.ipt_otp_no,
            }
        }
    )
    return mdtrt_id


def cancel_registration(call: Call) -> dict[str, Any]:
    """2202 挂号撤销: refused while the visit has a settlement in force."""
    data = data_of(call, VisitRef)

    def work(db: Any) -> dict[str, Any]:
        VisitStore.cancel(db, call.session, call.institution, data.mdtrt_id)
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
    begntime = _day(info.begntime, "input.mdtrtinfo.begntime") if info.begntime else ""

    def work(db: Any) -> dict[str, Any]:
        VisitStore.describe(
            db, call.session, call.institution, info.mdtrt_id, info.med_type, dise_codg, begntime
        )
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


def _settlement_request(call: Call, visit: Visit, lines: list[FeeLine]) -> pb.SettlementRequest:
    """The contract's SettlementRequest for a visit and its lines (the 2207 msgid keys it)."""
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
    request = _settlement_request(call, visit, lines)
    priced = call.contract_call(
        "PreSettleVisit", call.core.pre_settle_visit, pb.PreSettleVisitRequest(request=request)
    ).settlement
    result = [_line_split(line, item) for line, item in zip(lines, priced.items, strict=True)]

    def work(db: Any) -> dict[str, Any]:
        VisitStore.upload(db, call.session, call.institution, mdtrt_id, lines)
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

    def work(db: Any) -> dict[str, Any]:
        VisitStore.cancel_lines(db, call.session, call.institution, data.mdtrt_id, data.chrg_bchno or "0000")
        return {}

    return call.once(work)


# --- 2206, 2207: settle the visit's lines -------------------------------------------------------


def _visit_to_settle(call: Call, data: Settle) -> tuple[Visit, pb.SettlementRequest]:
    visit = call.store.visit(call.session, call.institution, data.mdtrt_id)
    if visit.status == "cancelled":
        raise Refusal(
            Reason.VISIT_CANCELLED, f"visit {visit.mdtrt_id} was cancelled (2202)", mdtrt_id=visit.mdtrt_id
        )
    if data.psn_no != visit.psn_no:
        raise Refusal(
            Reason.PERSON_MISMATCH, f"visit {visit.mdtrt_id} is {visit.psn_no}'s, not {data.psn_no}'s"
        )
    lines = call.store.lines(call.session, call.institution, visit.mdtrt_id)
    if not lines:
        raise Refusal(
            Reason.ITEMS_EMPTY, f"visit {visit.mdtrt_id} has no uploaded fee line (2204)", field="input.data"
        )
    return visit, _settlement_request(call, visit, lines)


def _compare(given: dict[str, Any], platform: pb.SettlementTotals, *, required: bool) -> None:
    """The HIS's own figures against the platform's: SPLIT_MISMATCH names each difference."""
    ours = {
        "medfee_sumamt": platform.total_fen,
        "fulamt_ownpay_amt": platform.full_self_pay_fen,
        "overlmt_selfpay": platform.over_ceiling_self_pay_fen,
        "preselfpay_amt": platform.pre_self_pay_fen,
        "inscp_scp_amt": platform.in_scope_fen,
    }
    differ = []
    for name, fen in ours.items():
        value = given.get(name)
        if value is None:
            if required:
                raise Refusal(
                    Reason.FIELD_MISSING, f"input.data.{name} is required", field=f"input.data.{name}"
                )
            continue
        theirs = money.yuan_to_fen(value, f"input.data.{name}")
        if theirs != fen:
            differ.append(f"{name} {money.fen_to_yuan(theirs)} ≠ {money.fen_to_yuan(fen)}")
    if differ:
        raise Refusal(
            Reason.SPLIT_MISMATCH,
            "the hospital's figures differ from the platform's (hospital ≠ platform): " + "; ".join(differ),
            field="input.data",
        )


def pre_settle(call: Call) -> dict[str, Any]:
    """2206 预结算: what 2207 would give now; nothing is stored."""
    data = data_of(call, Settle)
    visit, request = _visit_to_settle(call, data)
    answer = call.contract_call(
        "PreSettleVisit", call.core.pre_settle_visit, pb.PreSettleVisitRequest(request=request)
    ).settlement
    _compare(data.model_dump(), answer.totals, required=False)
    return settlement_output(answer, visit.mdtrt_id)


def settle(call: Call) -> dict[str, Any]:
    """2207 结算: the four split amounts the HIS sends must equal the platform's."""
    data = data_of(call, Settle)
    visit, request = _visit_to_settle(call, data)
    priced = call.core_call(call.core.pre_settle_visit, pb.PreSettleVisitRequest(request=request)).settlement
    _compare(data.model_dump(), priced.totals, required=True)

    def link(db: Any, stored: Any) -> None:
        VisitStore.link(db, call.session, call.institution, visit.mdtrt_id, call.envelope.msgid)

    answer = call.contract_call(
        "SettleVisit", call.core.settle_visit, pb.SettleVisitRequest(request=request), on_settled=link
    )
    return settlement_output(answer.settlement, visit.mdtrt_id)


# --- 2208, 2601: undo ---------------------------------------------------------------------------


def refund_id(settlement_id: str) -> str:
    """The refund record's setl_id: fixed by the settlement it refunds (one reversal each)."""
    return "R" + settlement_id[1:]


def reverse(call: Call) -> dict[str, Any]:
    """2208 结算撤销: answered as the refund record (a new setl_id, every figure negated)."""
    data = data_of(call, Reverse)
    request = pb.ReverseSettlementRequest(
        msgid=call.envelope.msgid,
        institution_code=call.institution,
        settlement_id=data.setl_id,
        operator=call.envelope.opter or "national",
    )
    answer = call.contract_call("ReverseSettlement", call.core.reverse_settlement, request)
    return settlement_output(answer.settlement, data.mdtrt_id or answer.settlement.visit_id, refund=True)


def void(call: Call) -> dict[str, Any]:
    """2601 冲正: undoes the settlement (2207) or reversal-blocked msgid `omsgid` made."""
    data = data_of(call, Void)
    if data.oinfno != "2207":
        raise Refusal(
            Reason.UNSUPPORTED_TRANSACTION,
            f"2601 voids 2207 settlements here; oinfno {data.oinfno} is not supported (docs/national.md)",
            field="input.data.oinfno",
        )
    request = pb.VoidByMessageIdRequest(
        msgid=call.envelope.msgid,
        institution_code=call.institution,
        original_msgid=data.omsgid,
        original_infno=data.oinfno,
        operator=call.envelope.opter or "national",
    )
    answer = call.contract_call("VoidByMessageId", call.core.void_by_message_id, request)
    voided = answer.settlement.settlement_id if answer.voided_settlement else ""
    return {"data": {"omsgid": data.omsgid, "oinfno": data.oinfno, "setl_id": voided}}


# --- 3201, 5203: reconcile and read ---------------------------------------------------------------


def reconcile(call: Call) -> dict[str, Any]:
    """3201 对总账: the settlements in force of one insutype × clr_type × setl_optins."""
    data = data_of(call, Totals3201)
    hospital = {
        "medfee_sumamt": money.yuan_to_fen(data.medfee_sumamt, "input.data.medfee_sumamt"),
        "fund_pay_sumamt": money.yuan_to_fen(data.fund_pay_sumamt, "input.data.fund_pay_sumamt"),
        "acct_pay": money.yuan_to_fen(data.acct_pay, "input.data.acct_pay"),
        "fixmedins_setl_cnt": money.whole_count(data.fixmedins_setl_cnt, "input.data.fixmedins_setl_cnt"),
    }
    request = pb.ReconcileRequest(
        institution_code=call.institution,
        start_date=_day(data.stmt_begndate, "input.data.stmt_begndate"),
        end_date=_day(data.stmt_enddate, "input.data.stmt_enddate"),
        include_entries=True,
    )
    sums = call.contract_call("Reconcile", call.core.reconcile, request)
    platform = {"medfee_sumamt": 0, "fund_pay_sumamt": 0, "acct_pay": 0, "fixmedins_setl_cnt": 0}
    if data.clr_type == OUTPATIENT_CLEARING:  # every settlement here is an outpatient one
        for entry in sums.entries:
            read = pb.GetSettlementRequest(
                institution_code=call.institution, settlement_id=entry.settlement_id
            )
            s = call.core_call(call.core.get_settlement, read).settlement
            if str(s.insurance_type) == data.insutype and s.insured_region == data.setl_optins:
                platform["medfee_sumamt"] += s.totals.total_fen
                platform["fund_pay_sumamt"] += s.totals.fund_pays_fen
                platform["fixmedins_setl_cnt"] += 1
    differ = [name for name in platform if platform[name] != hospital[name]]
    described = "; ".join(
        f"{name} {_shown(name, hospital[name])} ≠ {_shown(name, platform[name])}" for name in differ
    )
    return {
        "data": {
            "setl_optins": data.setl_optins,
            "stmt_rslt": "0" if not differ else "1",
            "stmt_rslt_dscr": "对账一致" if not differ else f"对账不平 (hospital ≠ platform): {described}",
            # settlesim extension: the platform's own figures.
            "platform": {name: _shown(name, value) for name, value in platform.items()},
        }
    }


class DetailRow(Part):
    setl_id: str
    medfee_sumamt: Any
    fund_pay_sumamt: Any
    msgid: str = ""


class Detail3202(Part):
    stmt_begndate: str
    stmt_enddate: str
    detail: list[DetailRow] = Field(default_factory=list)


# 3202 row results (settlesim's codes; the file-based national edition has its own):
MATCHED, DIFFERENT, PLATFORM_ONLY, HOSPITAL_ONLY = "0", "1", "2", "3"


def detail_reconcile(call: Call) -> dict[str, Any]:
    """3202 对明细账, rows inline (no 9101/9102 file): each of the hospital's settlements
    against the platform's in force for the period, and the platform's the hospital
    did not list. Every row carries the msgid to void it with (2601)."""
    data = data_of(call, Detail3202)
    request = pb.ReconcileRequest(
        institution_code=call.institution,
        start_date=_day(data.stmt_begndate, "input.data.stmt_begndate"),
        end_date=_day(data.stmt_enddate, "input.data.stmt_enddate"),
        include_entries=True,
    )
    sums = call.contract_call("Reconcile", call.core.reconcile, request)
    platform = {e.settlement_id: e for e in sums.entries}
    rows, listed = [], set()
    for i, row in enumerate(data.detail):
        where = f"input.data.detail.{i}"
        total = money.yuan_to_fen(row.medfee_sumamt, f"{where}.medfee_sumamt")
        fund = money.yuan_to_fen(row.fund_pay_sumamt, f"{where}.fund_pay_sumamt")
        listed.add(row.setl_id)
        entry = platform.get(row.setl_id)
        if entry is None:
            rows.append(
                _detail_row(row.setl_id, row.msgid, HOSPITAL_ONLY, "平台无此结算（或已撤销、冲正）", None)
            )
            continue
        same = (entry.total_fen, entry.fund_pays_fen) == (total, fund)
        why = (
            "一致"
            if same
            else f"金额不符 (hospital ≠ platform): {money.fen_to_yuan(total)}/{money.fen_to_yuan(fund)} ≠ "
            f"{money.fen_to_yuan(entry.total_fen)}/{money.fen_to_yuan(entry.fund_pays_fen)}"
        )
        rows.append(_detail_row(row.setl_id, entry.msgid, MATCHED if same else DIFFERENT, why, entry))
    for entry in sums.entries:
        if entry.settlement_id not in listed:
            rows.append(
                _detail_row(entry.settlement_id, entry.msgid, PLATFORM_ONLY, "医院未上传此结算", entry)
            )
    balanced = all(r["stmt_rslt"] == MATCHED for r in rows)
    return {"data": {"stmt_rslt": "0" if balanced else "1", "stmt_rslt_dscr": "对账一致" if balanced else "对账不平",
                     "detail": rows}}  # fmt: skip


def _detail_row(setl_id: str, msgid: str, result: str, why: str, entry: Any) -> dict[str, Any]:
    return {
        "setl_id": setl_id,
        "msgid": msgid,
        "stmt_rslt": result,
        "stmt_rslt_dscr": why,
        "medfee_sumamt": money.fen_to_yuan(entry.total_fen) if entry is not None else None,
        "fund_pay_sumamt": money.fen_to_yuan(entry.fund_pays_fen) if entry is not None else None,
        "setl_date": entry.visit_date if entry is not None else "",
    }


def _shown(name: str, value: int) -> Any:
    return value if name == "fixmedins_setl_cnt" else money.fen_to_yuan(value)


def settlement_query(call: Call) -> dict[str, Any]:
    """5203 结算信息查询: a settlement by setl_id, as 2207 answered it (with its status now)."""
    data = data_of(call, SettlementQuery)
    request = pb.GetSettlementRequest(institution_code=call.institution, settlement_id=data.setl_id)
    answer = call.contract_call("GetSettlement", call.core.get_settlement, request)
    return settlement_output(answer.settlement, data.mdtrt_id or answer.settlement.visit_id)


# --- setlinfo ------------------------------------------------------------------------------------

_STATUS = {pb.SETTLEMENT_STATUS_SETTLED: "settled", pb.SETTLEMENT_STATUS_REVERSED: "reversed",
           pb.SETTLEMENT_STATUS_VOIDED: "voided", pb.SETTLEMENT_STATUS_UNSPECIFIED: ""}  # fmt: skip


def settlement_output(s: pb.Settlement, mdtrt_id: str, *, refund: bool = False) -> dict[str, Any]:
    """2206/2207/2208/5203 output: setlinfo and one setldetail row per fund (the pooled fund only)."""
    t = s.totals
    sign = -1 if refund else 1

    def yuan(fen: int) -> Decimal:
        return money.fen_to_yuan(sign * fen)

    insutype = str(s.insurance_type) if s.insurance_type else ""
    setl_id = refund_id(s.settlement_id) if refund else s.settlement_id
    setlinfo = {
        "setl_id": setl_id,
        "mdtrt_id": mdtrt_id,
        "psn_no": s.person_no,
        "insutype": insutype,
        "med_type": CHRONIC_SPECIAL_OUTPATIENT,
        "setl_time": f"{s.visit_date} 00:00:00" if s.visit_date else "",
        "medfee_sumamt": yuan(t.total_fen),
        "fulamt_ownpay_amt": yuan(t.full_self_pay_fen),
        "overlmt_selfpay": yuan(t.over_ceiling_self_pay_fen),
        "preselfpay_amt": yuan(t.pre_self_pay_fen),
        "inscp_scp_amt": yuan(t.in_scope_fen),
        "act_pay_dedc": yuan(t.deductible_applied_fen),
        "hifp_pay": yuan(t.fund_pays_fen),
        "pool_prop_selfpay": money.ratio(t.ratio_bp),
        "cvlserv_pay": yuan(0),
        "hifes_pay": yuan(0),
        "hifmi_pay": yuan(0),
        "hifob_pay": yuan(0),
        "maf_pay": yuan(0),
        "oth_pay": yuan(0),
        "fund_pay_sumamt": yuan(t.fund_pays_fen),
        "psn_part_amt": yuan(t.patient_pays_fen),
        "acct_pay": yuan(0),
        "acct_mulaid_pay": yuan(0),
        "psn_cash_pay": yuan(t.patient_pays_fen),
        "hosp_part_amt": yuan(0),
        "balc": yuan(0),
        "medins_setl_id": s.msgid,
        "clr_optins": s.insured_region,
        "clr_way": "",
        "clr_type": OUTPATIENT_CLEARING,
        # settlesim extensions: the settlement's status now; a refund's original.
        "setl_status": _STATUS.get(s.status, ""),
    }
    if refund:
        setlinfo["orig_setl_id"] = s.settlement_id
    fund_type, fund_name = POOLED_FUND.get(insutype, ("", "基本医疗保险统筹基金"))
    detail = [
        {
            "fund_pay_type": fund_type,
            "inscp_scp_amt": yuan(t.in_scope_fen),
            "crt_payb_lmt_amt": yuan(0),
            "fund_payamt": yuan(t.fund_pays_fen),
            "fund_pay_type_name": fund_name,
            "setl_proc_info": "",
        }
    ]
    return {"setlinfo": setlinfo, "setldetail": detail}


TRANSACTIONS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "9001": sign_in,
    "1101": person_info,
    "5301": disease_registrations,
    "2001": entitlement,
    "2201": register,
    "2202": cancel_registration,
    "2203": upload_visit,
    "2204": upload_fees,
    "2205": cancel_fees,
    "2206": pre_settle,
    "2207": settle,
    "2208": reverse,
    "2601": void,
    "3201": reconcile,
    "3202": detail_reconcile,
    "5203": settlement_query,
}


def run(call: Call) -> dict[str, Any]:
    """The transaction the envelope names."""
    validation.required_codes(msgid=call.envelope.msgid, fixmedins_code=call.institution)
    call.core.acting_for(call.caller, call.institution)
    transaction = TRANSACTIONS.get(call.envelope.infno)
    if transaction is None:
        raise Refusal(
            Reason.UNSUPPORTED_TRANSACTION,
            f"infno {call.envelope.infno!r} is not one this door speaks: {', '.join(TRANSACTIONS)}",
            field="infno",
        )
    return transaction(call)
