"""2206 pre-settle, 2207 settle, 2208 reversal (a refund record), 2601 void; setlinfo."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from settlesim.server.national import money
from settlesim.server.national.call import CHRONIC_SPECIAL_OUTPATIENT, OUTPATIENT_CLEARING, Call, data_of
from settlesim.server.national.envelope import Part
from settlesim.server.national.visit_flow import settlement_request
from settlesim.server.national.visits import NationalWrites, Visit
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.v1 import settlement_service_pb2 as pb


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
    return visit, settlement_request(call, visit, lines, use_account=data.acct_used_flag == "1")


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

    def link(writes: NationalWrites, stored: Any) -> None:
        writes.link(visit.mdtrt_id, call.envelope.msgid)

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


# --- setlinfo ------------------------------------------------------------------------------------

_STATUS = {pb.SETTLEMENT_STATUS_SETTLED: "settled", pb.SETTLEMENT_STATUS_REVERSED: "reversed",
           pb.SETTLEMENT_STATUS_VOIDED: "voided", pb.SETTLEMENT_STATUS_UNSPECIFIED: ""}  # fmt: skip


def settlement_output(s: pb.Settlement, mdtrt_id: str, *, refund: bool = False) -> dict[str, Any]:
    """2206/2207/2208/5203 output: setlinfo and setldetail, one row per fund that pays (the
    contract's `funds`; the pooled fund always)."""
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
        "hifp_pay": yuan(t.pooled_fund_fen),
        "pool_prop_selfpay": money.ratio(t.ratio_bp),
        "cvlserv_pay": yuan(0),
        "hifes_pay": yuan(0),
        "hifmi_pay": yuan(t.serious_illness_fen),
        "hifob_pay": yuan(t.large_amount_fen),
        "maf_pay": yuan(t.medical_assistance_fen),
        "oth_pay": yuan(0),
        "fund_pay_sumamt": yuan(t.fund_pays_fen),
        "psn_part_amt": yuan(t.patient_pays_fen),
        "acct_pay": yuan(t.account_pays_fen),
        "acct_mulaid_pay": yuan(0),
        "psn_cash_pay": yuan(t.cash_pays_fen),
        "hosp_part_amt": yuan(0),
        # The balance is a state, not a movement: a refund record shows the balance it restores.
        "balc": money.fen_to_yuan(
            t.account_balance_fen + (t.account_pays_fen if refund else 0)
        ) if t.HasField("account_balance_fen") else money.fen_to_yuan(0),
        "medins_setl_id": s.msgid,
        "clr_optins": s.insured_region,
        "clr_way": "",
        "clr_type": OUTPATIENT_CLEARING,
        # settlesim extensions: the settlement's status now; a refund's original.
        "setl_status": _STATUS.get(s.status, ""),
    }  # fmt: skip
    if refund:
        setlinfo["orig_setl_id"] = s.settlement_id
    detail = [
        {
            "fund_pay_type": f.fund_type,
            "inscp_scp_amt": yuan(f.base_fen),
            "crt_payb_lmt_amt": yuan(f.limit_fen),
            "fund_payamt": yuan(f.paid_fen),
            "fund_pay_type_name": f.name,
            "setl_proc_info": f.detail,
        }
        for f in s.funds
    ]
    return {"setlinfo": setlinfo, "setldetail": detail}
