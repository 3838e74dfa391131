"""3201 totals and 3202 detail reconciliation, 5203 settlement query."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import Field
from settlesim.server.national import money
from settlesim.server.national.call import OUTPATIENT_CLEARING, Call, data_of, day_of
from settlesim.server.national.envelope import Part
from settlesim.server.national.settling import settlement_output
from settlesim.v1 import settlement_service_pb2 as pb


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


# --- 3201, 5203: reconcile and read ---------------------------------------------------------------


def _settlements_of_period(call: Call, begin: str, end: str) -> pb.ReconcileResponse:
    """Reconcile with its entries: the institution's settlements in force by visit date."""
    request = pb.ReconcileRequest(
        institution_code=call.institution,
        start_date=day_of(begin, "input.data.stmt_begndate"),
        end_date=day_of(end, "input.data.stmt_enddate"),
        include_entries=True,
    )
    return call.contract_call("Reconcile", call.core.reconcile, request)


def reconcile(call: Call) -> dict[str, Any]:
    """3201 对总账: the settlements in force of one insutype × clr_type × setl_optins."""
    data = data_of(call, Totals3201)
    hospital = {
        "medfee_sumamt": money.yuan_to_fen(data.medfee_sumamt, "input.data.medfee_sumamt"),
        "fund_pay_sumamt": money.yuan_to_fen(data.fund_pay_sumamt, "input.data.fund_pay_sumamt"),
        "acct_pay": money.yuan_to_fen(data.acct_pay, "input.data.acct_pay"),
        "fixmedins_setl_cnt": money.whole_count(data.fixmedins_setl_cnt, "input.data.fixmedins_setl_cnt"),
    }
    sums = _settlements_of_period(call, data.stmt_begndate, data.stmt_enddate)
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
                platform["acct_pay"] += s.totals.account_pays_fen
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
    rows = detail_rows(call, data.stmt_begndate, data.stmt_enddate, data.detail, "input.data.detail")
    balanced = all(r["stmt_rslt"] == MATCHED for r in rows)
    return {"data": {"stmt_rslt": "0" if balanced else "1", "stmt_rslt_dscr": "对账一致" if balanced else "对账不平",
                     "detail": rows}}  # fmt: skip


def detail_rows(call: Call, begin: str, end: str, detail: list[DetailRow], where_rows: str) -> list[dict[str, Any]]:
    """Each of the hospital's rows against the platform's settlements in force for the
    period, then the platform's the hospital did not list (3202, inline or by file)."""
    sums = _settlements_of_period(call, begin, end)
    platform = {e.settlement_id: e for e in sums.entries}
    rows, listed = [], set()
    for i, row in enumerate(detail):
        where = f"{where_rows}.{i}"
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
    return rows


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
