"""Replay through the national door (`--door national`): each case step is sent as the
national calls an HIS makes for it (clients/national.py), and the national answers are
read back into the contract's response message, so compare.py compares them unchanged.

    verify      1101 → 2001
    pre_settle  1101 → 5301 → 2201 → 2203 → 2204 → 2206
    settle      1101 → 5301 → 2201 → 2203 → 2204 → 2206 → 2207 (the step's msgid)
    reverse     2208        void 2601        get 5203        reconcile 3202 (+ 3201)

(9001 signs each hospital in once.) A refusal's reason is the answer's `err_reason`
(the gRPC door's ErrorInfo reason), its status code the one that reason has on the gRPC
door (server/status.py). What the national interface cannot carry — a request it has
no form for, an answer field it has no counterpart for — is not compared but listed
with its reason (Unexpressed): every report shows and counts them (docs/cases.md).
"""

from __future__ import annotations

import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
from settlesim.clients import national
from settlesim.clients.hospital import SESSION_HEADER, SESSION_MEMBERS_HEADER, Hospital, MsgidFactory
from settlesim.clients.rejections import Rejection
from settlesim.clients.replay.cases import DOORS, Case, ExpectedError, Step
from settlesim.clients.replay.target import Credentials, TargetError
from settlesim.clients.secure import Identity
from settlesim.server.rules.reasons import Reason
from settlesim.server.status import code_for
from settlesim.v1 import settlement_service_pb2 as pb

GRPC, NATIONAL = DOORS

# Why something is not compared through the national door: limits of the national interface.
NO_RAW = "a raw protobuf request has no national form (the door builds the contract message itself)"
PERSON_ONCE = "the national calls name the person once: 1101 finds them by certificate, 2201/2001 by psn_no"
BY_SETL_ID = "5203 looks a settlement up by setl_id; it has no msgid (medins_setl_id) lookup"
NO_FIELDS = "a national answer names no BadRequest fields (err_msg is free text)"
EXTENSION = "a settlesim extension the national answer has no field for"
NOT_ECHOED = "the HIS's own field (fixmedins_code, mdtrtarea_admvs, dise_codg, begntime): no national answer echoes it"
LEVEL_03 = "chrgitm_lv 03 is class C and not-in-catalog alike"
REGISTRATION_DATES = "2001 trtinfo carries the registration's dates only (this door answers no 备案 query)"
VOID_ANSWER = "2601 answers the voided setl_id only"
GET_NO_LINES = "2208 and 5203 answer setlinfo; the lines' split is 2204's answer"
NO_CASH_PART = "3201/3202 carry no patient cash figure (3201 compares acct_pay)"
DSCR_TEXT = "3201 says which figures differ in stmt_rslt_dscr, free text"
ONE_GROUP = "3201 reconciles per insutype × setl_optins group; the hospital's figures span {n} groups"

_TOTALS = ("total_fen", "full_self_pay_fen", "over_ceiling_self_pay_fen", "pre_self_pay_fen", "in_scope_fen",
           "deductible_applied_fen", "fund_pays_fen", "ratio_bp", "patient_pays_fen", "serious_illness_fen",
           "large_amount_fen", "medical_assistance_fen", "pooled_fund_fen", "account_pays_fen", "cash_pays_fen",
           "account_balance_fen")  # fmt: skip
_FUND = ("fund_type", "name", "base_fen", "limit_fen", "paid_fen", "detail")  # 2207 setldetail
_ITEM = ("sequence_no", "catalog_class", "self_pay_share_bp", "price_ceiling_fen", "amount_fen",
         "full_self_pay_fen", "over_ceiling_self_pay_fen", "pre_self_pay_fen", "in_scope_fen")  # fmt: skip
_SETLINFO = ("settlement_id", "visit_id", "msgid", "status", "person_no", "insured_region", "insurance_type",
             *(f"totals.{t}" for t in _TOTALS), *(f"funds[].{f}" for f in _FUND))  # fmt: skip
_SETTLED = (*(f"settlement.{f}" for f in _SETLINFO), *(f"settlement.items[].{f}" for f in _ITEM))
# What each call's answer carries through the national door; anything else is Unexpressed.
CARRIED: dict[str, frozenset[str]] = {
    "verify": frozenset({"eligible", "reason", "person_no", "insured_region", "registration",
                         "registration.valid_from", "registration.valid_until"}),
    "pre_settle": frozenset(_SETTLED),
    "settle": frozenset(_SETTLED),
    "reverse": frozenset(f"settlement.{f}" for f in _SETLINFO),
    "void": frozenset({"voided_settlement", "settlement.settlement_id"}),
    "get": frozenset(f"settlement.{f}" for f in _SETLINFO),
    "reconcile": frozenset({"matched", "platform.count", "platform.total_fen", "platform.fund_pays_fen",
                            *(f"entries[].{f}" for f in ("settlement_id", "msgid", "visit_date", "total_fen",
                                                         "fund_pays_fen"))}),
}  # fmt: skip
_WHY: dict[str, str] = {
    "settlement.totals.cap_remaining_fen": EXTENSION, "settlement.totals.deductible_remaining_fen": EXTENSION,
    "settlement.totals.serious_threshold_applied_fen": EXTENSION,
    "replayed": EXTENSION, "settlement.trace": EXTENSION, "settlement.undone_by_msgid": EXTENSION,
    "settlement.sandbox": EXTENSION, "sandbox": EXTENSION, "coverage": EXTENSION, "message": EXTENSION,
    "treatment_region": NOT_ECHOED,
    "settlement.items": GET_NO_LINES, "platform.patient_pays_fen": NO_CASH_PART,
    "entries[].patient_pays_fen": NO_CASH_PART, "mismatched_fields": DSCR_TEXT,
}  # fmt: skip
_DEFAULT_WHY = {"verify": REGISTRATION_DATES, "void": VOID_ANSWER, "reconcile": EXTENSION}


@dataclass(frozen=True)
class Unexpressed:
    """Something of a step not compared through the national door, and why."""

    path: str  # "request", "error.fields", or the expected answer field, e.g. "settlement.totals.cap_remaining_fen"
    reason: str


def unsendable(step: Step) -> str:
    """Why the step's request has no national form ("" when it has one)."""
    if step.raw is not None:
        return NO_RAW
    person = step.request.get("person")
    if isinstance(person, dict) and person.get("person_no") and person.get("certificate_no"):
        return PERSON_ONCE
    if step.call == "get" and not step.request.get("settlement_id"):
        return BY_SETL_ID
    return ""


def for_door(cases: Sequence[Case], door: str) -> tuple[list[Case], list[tuple[Case, str]]]:
    """The cases a run through `door` runs, and those written for the other door (`door:`)."""
    runnable = [c for c in cases if c.door in ("", door)]
    return runnable, [(c, f"the case is for the {c.door} door (door: {c.door})") for c in cases if c not in runnable]


def unsendable_cases(cases: Sequence[Case]) -> tuple[list[Case], list[tuple[Case, str]]]:
    """Cases with a step to send, and those none of whose steps has a national form (with why)."""
    runnable, skipped = [], []
    for case in cases:
        reasons = [unsendable(step) for step in case.steps]
        if all(reasons):
            skipped.append((case, "not through the national door: " + "; ".join(sorted(set(reasons)))))
        else:
            runnable.append(case)
    return runnable, skipped


def expressible(
    step: Step, expected: dict[str, Any], error: ExpectedError | None, limits: Iterable[Unexpressed] = ()
) -> tuple[dict[str, Any], ExpectedError | None, list[Unexpressed]]:
    """The expectation cut to what the national answer carries, and what was cut (why)."""
    notes: list[Unexpressed] = []
    dropped = {n.path: n.reason for n in limits}
    if error is not None:
        if error.fields:
            notes.append(Unexpressed("error.fields", NO_FIELDS))
            error = ExpectedError(error.code, error.reason)
        return expected, error, notes
    return _cut(step.call, expected, "", "", notes, dropped), None, notes


def _cut(
    call: str, expected: Any, pattern: str, shown: str, notes: list[Unexpressed], dropped: dict[str, str]
) -> Any:
    if not isinstance(expected, dict):
        return expected
    kept: dict[Any, Any] = {}
    for key, want in expected.items():
        at, here = (f"{pattern}.{key}" if pattern else key), (f"{shown}.{key}" if shown else key)
        if at in dropped:
            notes.append(Unexpressed(here, dropped[at]))
            continue
        carried = CARRIED[call]
        if at not in carried and not any(c.startswith((at + ".", at + "[]")) for c in carried):
            notes.append(Unexpressed(here, _WHY.get(at, _DEFAULT_WHY.get(call, NOT_ECHOED))))
            continue
        if at.endswith("catalog_class") and want in ("CATALOG_CLASS_NOT_LISTED", pb.CATALOG_CLASS_NOT_LISTED):
            notes.append(Unexpressed(here, LEVEL_03))
            continue
        if isinstance(want, (list, dict)) and any(c.startswith(at + "[]") for c in carried):
            pairs = want.items() if isinstance(want, dict) else enumerate(want)
            elements = {i: _cut(call, w, f"{at}[]", f"{here}[{i}]", notes, dropped) for i, w in pairs}
            kept[key] = elements if isinstance(want, dict) else [elements[i] for i in range(len(want))]
        else:
            kept[key] = _cut(call, want, at, here, notes, dropped)
    return kept


# --- talking to the door --------------------------------------------------------------------------


class NationalRefusal(grpc.RpcError):
    """A national answer with infcode -1, as the Rejection the gRPC door would have given."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(str(rejection))
        self.rejection = rejection


def _rejection(answer: dict[str, Any]) -> Rejection:
    reason = str(answer.get("err_reason", ""))
    try:
        number = code_for(Reason(reason))
        code = next(c.name for c in grpc.StatusCode if c.value[0] == number)
    except (ValueError, StopIteration):
        code = "INTERNAL"  # a reason the contract does not know: the door is broken
    return Rejection(code, reason, str(answer.get("err_detail") or answer.get("err_msg", "")))


def _fen(value: Any) -> int:
    """Decimal yuan of an answer -> fen, exactly."""
    fen = Decimal(str(value)) * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of fen")
    return int(fen)


_STATUS = {"settled": pb.SETTLEMENT_STATUS_SETTLED, "reversed": pb.SETTLEMENT_STATUS_REVERSED,
           "voided": pb.SETTLEMENT_STATUS_VOIDED}  # fmt: skip
_LEVEL = {"01": pb.CATALOG_CLASS_A, "02": pb.CATALOG_CLASS_B, "03": pb.CATALOG_CLASS_C}


def _insurance_type(insutype: str) -> int:
    return int(insutype) if insutype in ("310", "390") else 0


def settlement_of(
    setlinfo: dict[str, Any],
    split: Sequence[dict[str, Any]] = (),
    setldetail: Sequence[dict[str, Any]] = (),
    *,
    sign: int = 1,
) -> pb.Settlement:
    """setlinfo, 2204's result[] and setldetail[] as the contract's Settlement; `sign` -1
    reads a refund record back into the settlement it refunds."""
    s = setlinfo
    totals = pb.SettlementTotals(
        total_fen=sign * _fen(s["medfee_sumamt"]),
        full_self_pay_fen=sign * _fen(s["fulamt_ownpay_amt"]),
        over_ceiling_self_pay_fen=sign * _fen(s["overlmt_selfpay"]),
        pre_self_pay_fen=sign * _fen(s["preselfpay_amt"]),
        in_scope_fen=sign * _fen(s["inscp_scp_amt"]),
        deductible_applied_fen=sign * _fen(s["act_pay_dedc"]),
        fund_pays_fen=sign * _fen(s["fund_pay_sumamt"]),
        ratio_bp=int(Decimal(str(s["pool_prop_selfpay"])) * 10_000),
        patient_pays_fen=sign * _fen(s["psn_part_amt"]),
        serious_illness_fen=sign * _fen(s["hifmi_pay"]),
        large_amount_fen=sign * _fen(s["hifob_pay"]),
        medical_assistance_fen=sign * _fen(s["maf_pay"]),
        pooled_fund_fen=sign * _fen(s["hifp_pay"]),
        account_pays_fen=sign * _fen(s["acct_pay"]),
        cash_pays_fen=sign * _fen(s["psn_cash_pay"]),
        # balc is the balance after the settlement; a refund record shows the one it restores.
        account_balance_fen=_fen(s["balc"]) + (_fen(s["acct_pay"]) if sign < 0 else 0),
    )
    items = []
    for r in split:
        level = _LEVEL.get(str(r["chrgitm_lv"]), pb.CATALOG_CLASS_UNSPECIFIED)
        item = pb.SettledItem(
            sequence_no=str(r["feedetl_sn"]),
            catalog_class=level,  # type: ignore[arg-type]
            self_pay_share_bp=int(Decimal(str(r["selfpay_prop"])) * 10_000) if level == pb.CATALOG_CLASS_B else 0,
            amount_fen=_fen(r["det_item_fee_sumamt"]),
            full_self_pay_fen=_fen(r["fulamt_ownpay_amt"]),
            over_ceiling_self_pay_fen=_fen(r["overlmt_amt"]),
            pre_self_pay_fen=_fen(r["preselfpay_amt"]),
            in_scope_fen=_fen(r["inscp_scp_amt"]),
        )
        if r.get("pric_uplmt_amt") is not None:
            item.price_ceiling_fen = _fen(r["pric_uplmt_amt"])
        items.append(item)
    return pb.Settlement(
        settlement_id=str(s.get("orig_setl_id") or s["setl_id"]),
        visit_id=str(s["mdtrt_id"]),
        msgid=str(s.get("medins_setl_id", "")),
        status=_STATUS.get(str(s.get("setl_status", "")), pb.SETTLEMENT_STATUS_UNSPECIFIED),  # type: ignore[arg-type]
        person_no=str(s["psn_no"]),
        insured_region=str(s.get("clr_optins", "")),
        insurance_type=_insurance_type(str(s.get("insutype", ""))),  # type: ignore[arg-type]
        totals=totals,
        items=items,
        funds=[
            pb.FundPayment(fund_type=str(f["fund_pay_type"]), name=str(f["fund_pay_type_name"]),
                           base_fen=sign * _fen(f["inscp_scp_amt"]), limit_fen=sign * _fen(f["crt_payb_lmt_amt"]),
                           paid_fen=sign * _fen(f["fund_payamt"]), detail=str(f["setl_proc_info"]))
            for f in setldetail
        ],
    )  # fmt: skip


class NationalHospital:
    """One institution's HIS speaking the national envelope: `call` takes the contract
    request a case step built and answers the contract response the national answers
    give. The request builders are Hospital's own."""

    visit = Hospital.visit
    settlement_request = Hospital.settlement_request

    def __init__(
        self, http: httpx.Client, institution_code: str, session: str, members: Iterable[str], deadline: float
    ) -> None:
        self.http, self.institution_code, self.deadline = http, institution_code, deadline
        self.next_msgid = MsgidFactory(institution_code)
        self.operator = "mock-his"
        self.headers = {"content-type": "application/json"}
        if session:
            self.headers[SESSION_HEADER] = session
            others = sorted(set(members) - {institution_code})
            if others:
                self.headers[SESSION_MEMBERS_HEADER] = ",".join(others)
        self.signed_in = False
        self.settled: dict[str, tuple[str, str]] = {}  # setl_id -> (mdtrt_id, psn_no), what an HIS keeps
        self.by_msgid: dict[str, str] = {}  # 2207 msgid -> psn_no
        self.groups: set[tuple[str, str]] = set()  # (insutype, setl_optins) of the settlements seen
        self.limits: list[Unexpressed] = []  # what the last call could not express, known only once it ran

    def post(self, envelope: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.post(national.PATH, content=national.encode(envelope), headers=self.headers,
                                      timeout=self.deadline)  # fmt: skip
            answer = national.decode(response.content)
        except (httpx.HTTPError, ValueError) as error:
            raise NationalRefusal(Rejection("UNAVAILABLE", "", f"the national door did not answer: {error}")) from None
        if not isinstance(answer, dict) or "infcode" not in answer:
            raise NationalRefusal(Rejection("INTERNAL", "", f"not a national envelope: {response.text[:200]}"))
        return answer

    def transaction(self, infno: str, body: dict[str, Any], msgid: str = "") -> dict[str, Any]:
        if not self.signed_in and infno != "9001":
            self.transaction("9001", {"signIn": {"opter_no": self.operator}})
            self.signed_in = True
        answer = self.post(self._envelope(infno, body, msgid))
        if answer["infcode"] != 0:
            raise NationalRefusal(_rejection(answer))
        return answer["output"]

    def _envelope(self, infno: str, body: dict[str, Any], msgid: str = "") -> dict[str, Any]:
        return {"infno": infno, "msgid": msgid or self.next_msgid(), "fixmedins_code": self.institution_code,
                "opter": self.operator, "signtype": "MOCK", "input": body}  # fmt: skip

    def call(self, method: str, request: Any, *, retry: bool = True) -> Any:
        """The contract `method`'s answer to `request`, from the national calls it takes; an
        answer that does not read as the contract's is the target failing (INTERNAL)."""
        self.limits = []
        try:
            return getattr(self, "_" + method)(request)
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError) as error:
            raise NationalRefusal(
                Rejection("INTERNAL", "", f"a national answer does not read as the contract's: {error!r}")
            ) from None

    # --- the calls ------------------------------------------------------------------------------

    def _person(self, person: pb.PersonRef, *, required: bool = True) -> dict[str, Any] | None:
        """1101: the person by certificate (or psn_no). None when not found and not `required`."""
        query = (
            {"mdtrt_cert_type": person.certificate_type or "02", "mdtrt_cert_no": person.certificate_no}
            if person.certificate_no and not person.person_no
            else {"psn_no": person.person_no}
        )
        try:
            info = self.transaction("1101", {"data": query})
        except NationalRefusal as refused:
            if required or refused.rejection.reason != "PERSON_NOT_FOUND":
                raise
            return None
        # The groups 3201 reconciles: the insurance type and insured region of each patient seen.
        self.groups.update((str(i["insutype"]), str(i["insuplc_admdvs"])) for i in info["insuinfo"])
        return info

    def _VerifyRegistration(self, request: pb.VerifyRegistrationRequest) -> pb.VerifyRegistrationResponse:
        visit = request.visit
        # A psn_no typed in: 2001 itself says when nobody has it (eligible false, PERSON_NOT_FOUND).
        info = self._person(visit.person, required=not visit.person.person_no)
        psn_no = info["baseinfo"]["psn_no"] if info else visit.person.person_no
        data = {"psn_no": psn_no, "insutype": str(visit.insurance_type) if visit.insurance_type else "",
                "med_type": "14", "begntime": visit.visit_date, "dise_codg": visit.disease_code}  # fmt: skip
        trt = self.transaction("2001", {"data": data})["trtinfo"][0]
        answer = pb.VerifyRegistrationResponse(
            eligible=trt["trt_enjymnt_flag"] == "1",
            reason=str(trt.get("trt_chk_reason", "")),
            person_no=str(trt.get("psn_no", "")),
            insured_region=str(info["insuinfo"][0]["insuplc_admdvs"]) if info and info["insuinfo"] else "",
        )
        if trt.get("begndate"):
            answer.registration.valid_from = str(trt["begndate"])
            answer.registration.valid_until = str(trt.get("enddate", ""))
        return answer

    def _played(self, request: pb.SettlementRequest, *, settle: bool) -> pb.Settlement:
        person = request.visit.person
        info = self._person(person) if person.person_no or person.certificate_no else None
        sent = pb.SettlementRequest()
        sent.CopyFrom(request)
        if info is not None:
            sent.visit.person.CopyFrom(pb.PersonRef(person_no=str(info["baseinfo"]["psn_no"])))
            self.transaction("5301", {"data": {"psn_no": sent.visit.person.person_no}})

        def post(envelope: dict[str, Any]) -> dict[str, Any]:
            return self.post({**envelope, "fixmedins_code": self.institution_code})

        try:
            played = national.play_visit(post, sent, self.next_msgid, settle=settle)
        except national.NationalRefused as refused:
            raise NationalRefusal(_rejection(refused.answer)) from None
        setlinfo = played.setlinfo if settle else played.pre
        settlement = settlement_of(setlinfo, played.split, played.setldetail)
        if settle:
            self.settled[settlement.settlement_id] = (played.mdtrt_id, settlement.person_no)
            self.by_msgid[sent.msgid] = settlement.person_no
            self.groups.add((str(setlinfo.get("insutype", "")), settlement.insured_region))
        return settlement

    def _PreSettleVisit(self, request: pb.PreSettleVisitRequest) -> pb.PreSettleVisitResponse:
        return pb.PreSettleVisitResponse(settlement=self._played(request.request, settle=False))

    def _SettleVisit(self, request: pb.SettleVisitRequest) -> pb.SettleVisitResponse:
        return pb.SettleVisitResponse(settlement=self._played(request.request, settle=True))

    def _ReverseSettlement(self, request: pb.ReverseSettlementRequest) -> pb.ReverseSettlementResponse:
        mdtrt_id, psn_no = self.settled.get(request.settlement_id, ("", ""))
        data = {"setl_id": request.settlement_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no}
        out = self.transaction("2208", {"data": data}, request.msgid)
        # The refund record (its own setl_id, every figure negated) read back as the settlement it refunds.
        return pb.ReverseSettlementResponse(
            settlement=settlement_of(out["setlinfo"], (), out.get("setldetail", []), sign=-1)
        )

    def _VoidByMessageId(self, request: pb.VoidByMessageIdRequest) -> pb.VoidByMessageIdResponse:
        data = {"psn_no": self.by_msgid.get(request.original_msgid, ""), "omsgid": request.original_msgid,
                "oinfno": request.original_infno or "2207"}  # fmt: skip
        out = self.transaction("2601", {"data": data}, request.msgid)["data"]
        voided = str(out.get("setl_id", ""))
        return pb.VoidByMessageIdResponse(
            voided_settlement=bool(voided), settlement=pb.Settlement(settlement_id=voided)
        )

    def _GetSettlement(self, request: pb.GetSettlementRequest) -> pb.GetSettlementResponse:
        mdtrt_id, psn_no = self.settled.get(request.settlement_id, ("", ""))
        data = {"setl_id": request.settlement_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no}
        out = self.transaction("5203", {"data": data})
        return pb.GetSettlementResponse(settlement=settlement_of(out["setlinfo"], (), out.get("setldetail", [])))

    def _Reconcile(self, request: pb.ReconcileRequest) -> pb.ReconcileResponse:
        """3202 with no rows of the hospital's lists the platform's settlements in force (the
        entries and their sums); 3201 of the case's one group says whether the figures match."""
        period = {"stmt_begndate": request.start_date, "stmt_enddate": request.end_date}
        rows = self.transaction("3202", {"data": {**period, "detail": []}})["data"]["detail"]
        answer = pb.ReconcileResponse(
            platform=pb.ReconcileFigures(
                count=len(rows),
                total_fen=sum(_fen(r["medfee_sumamt"]) for r in rows),
                fund_pays_fen=sum(_fen(r["fund_pay_sumamt"]) for r in rows),
            ),
            entries=[
                pb.ReconcileEntry(settlement_id=str(r["setl_id"]), msgid=str(r["msgid"]),
                                  visit_date=str(r["setl_date"]), total_fen=_fen(r["medfee_sumamt"]),
                                  fund_pays_fen=_fen(r["fund_pay_sumamt"]))
                for r in rows
            ],
        )  # fmt: skip
        h = request.hospital
        # The hospital's figures belong to one group; all zero, they are every group's.
        if not self.groups or (len(self.groups) > 1 and (h.count, h.total_fen, h.fund_pays_fen) != (0, 0, 0)):
            self.limits.append(Unexpressed("matched", ONE_GROUP.format(n=len(self.groups))))
            return answer
        matched = True
        for insutype, optins in sorted(self.groups):
            totals = {**period, "insutype": insutype, "clr_type": "11", "setl_optins": optins,
                      "medfee_sumamt": national.yuan(h.total_fen), "fund_pay_sumamt": national.yuan(h.fund_pays_fen),
                      "acct_pay": national.yuan(0), "fixmedins_setl_cnt": h.count}  # fmt: skip
            matched &= self.transaction("3201", {"data": totals})["data"]["stmt_rslt"] == "0"
        answer.matched = matched
        return answer


class NationalConnections:
    """How a replay reaches the national door: HTTPS when `credentials` trust a CA, one
    keep-alive client per client certificate (a TLS connection has one identity), and each
    institution's bearer token as `authorization` (the door's --auth token takes it)."""

    def __init__(self, target: str, timeout: float = 10.0, credentials: Credentials | None = None) -> None:
        self.target = target
        self.credentials = credentials or Credentials()
        scheme = "https" if self.credentials.ca is not None else "http"
        self.url = target if "://" in target else f"{scheme}://{target}"
        self.timeout = timeout
        self._clients: dict[tuple[bytes | None, bytes | None], httpx.Client] = {}
        self._files: tempfile.TemporaryDirectory[str] | None = None  # PEMs ssl loads from files
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        return self.client("")

    def client(self, institution: str) -> httpx.Client:
        identity = self.credentials.identity(institution)
        key = (identity.cert, identity.key)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = httpx.Client(
                    base_url=self.url, timeout=self.timeout, verify=self._context(identity)
                )
            return self._clients[key]

    def _context(self, identity: Identity) -> ssl.SSLContext | bool:
        if self.credentials.ca is None:
            return True
        context = ssl.create_default_context(cadata=self.credentials.ca.decode())
        if identity.cert is not None and identity.key is not None:
            if self._files is None:
                self._files = tempfile.TemporaryDirectory(prefix="settlesim-national-")
            stem = Path(self._files.name) / f"identity-{len(self._clients)}"
            cert, key = stem.with_suffix(".pem"), stem.with_suffix(".key")
            cert.write_bytes(identity.cert)
            key.touch(mode=0o600)
            key.write_bytes(identity.key)
            context.load_cert_chain(str(cert), str(key))
        return context

    def headers(self, institution: str) -> dict[str, str]:
        token = self.credentials.identity(institution).token
        return {"authorization": f"Bearer {token}"} if token else {}

    def hospital(
        self, institution: str, session: str, deadline: float, members: Iterable[str] = ()
    ) -> NationalHospital:
        his = NationalHospital(self.client(institution), institution, session, members, deadline)
        his.headers.update(self.headers(institution))
        return his

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            if self._files is not None:
                self._files.cleanup()
                self._files = None


def check_target(connections: NationalConnections, institutions: Iterable[str], timeout: float = 5.0) -> None:
    """Fail fast, in one line, when nothing answers the national envelope at the target, when it
    refuses sandboxes, or when it refuses an institution's credentials (a 9001 in a fresh
    session per institution: it writes nothing)."""
    for institution in sorted(set(institutions)) or ["H000000000000"]:
        probe = connections.hospital(institution, "replay-probe-" + secrets.token_hex(4), timeout)
        try:
            answer = probe.post(probe._envelope("9001", {"signIn": {}}))
        except NationalRefusal as refused:
            raise _target_error(connections, refused.rejection.message) from None
        if answer.get("infcode") not in (0, -1):
            raise _target_error(connections, f"an answer that is not a national envelope: {answer!r:.200}")
        reason = answer.get("err_reason")
        if reason == "SESSIONS_DISABLED":
            raise TargetError(
                f"{connections.url} refuses session sandboxes (started with --no-sessions, or with --auth "
                "token/mtls without --sessions); replay needs them to keep runs apart (docs/sessions.md)"
            )
        if reason in ("CALLER_UNAUTHENTICATED", "INSTITUTION_NOT_CALLER"):
            who = connections.credentials.describe(institution) or f"this replay acting for {institution}"
            raise TargetError(f"the national door at {connections.url} refused {who}: {answer.get('err_detail')}")


def _target_error(connections: NationalConnections, why: str) -> Exception:
    return TargetError(
        f"cannot reach the national door at {connections.url}{national.PATH}: {why} "
        "(is `settlesim serve --national-port PORT` running there?)"
    )


def run_national(
    cases: Sequence[Case],
    target: str,
    run_all: Callable[..., list[Any]],
    credentials: Credentials | None,
    jobs: int,
    deadline: float,
    connect_timeout: float,
    on_case: Callable[[Any], None] | None,
    on_start: Callable[[], None] | None,
    on_skip: Callable[[list[tuple[Case, str]]], None] | None,
    on_world: Callable[[Any, str | None], None] | None,
) -> Any:
    """runner.run_cases through the national door (`run_all` runs the cases in parallel): a
    case none of whose steps has a national form is skipped with why; the door says no
    world (on_world hears None)."""
    from settlesim.clients.replay.runner import RunResult

    connections = NationalConnections(target, deadline, credentials)
    run_id = secrets.token_hex(6)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    try:
        ours, elsewhere = for_door(cases, NATIONAL)
        runnable, unsent = unsendable_cases(ours)
        skipped = elsewhere + unsent
        check_target(connections, {s.institution for c in runnable for s in c.steps if s.institution}, connect_timeout)
        if skipped and on_skip is not None:
            on_skip(skipped)
        if on_world is not None:
            on_world(None, None)
        if on_start is not None:
            on_start()
        results = run_all(runnable, connections, run_id, jobs, deadline, on_case)
    finally:
        connections.close()
    return RunResult(target, run_id, started_at, results, time.perf_counter() - started, skipped, None, NATIONAL)
