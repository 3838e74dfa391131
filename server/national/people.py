"""9001 sign-in, 1101 person, 5301 chronic/special-disease registrations, 2001 entitlement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from settlesim.server.model import Person, World
from settlesim.server.national import money
from settlesim.server.national.call import CHRONIC_SPECIAL_OUTPATIENT, POOLED_FUND, Call, data_of, day_of
from settlesim.server.national.envelope import Part, parse
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.status import zh_message
from settlesim.v1 import settlement_service_pb2 as pb


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


# --- 9001, 1101, 5301: who is this -----------------------------------------------------------


def sign_in(call: Call) -> dict[str, Any]:
    """9001 签到 (input.signIn): a sign_no for the operator (not required by later calls here)."""
    parse(SignIn, call.envelope.input.get("signIn", call.envelope.input.get("data", {})), "input.signIn")
    now = datetime.now(UTC)
    return {"signinoutb": {"sign_time": now.strftime("%Y-%m-%d %H:%M:%S"), "sign_no": uuid.uuid4().hex[:24]}}


def account_balance(call: Call, person: Person) -> int:
    """个人账户余额 now: the current year's opening balance less what the account paid this year
    (the ledger's yearly totals sum it over the person's diseases)."""
    year = datetime.now(UTC).year
    opening = person.account_opening(year)
    if opening is None:
        return 0
    session = call.session_for(writes=False)  # a sandbox is read only by its own institutions
    paid = call.core.ledger.yearly_totals(session, person.person_no, "", year).account_paid_year
    return max(0, opening - paid)


def find_person(world: World, psn_no: str = "", cert_type: str = "", cert_no: str = "") -> Person:
    if not psn_no and not cert_no:  # as the contract refuses a visit naming nobody
        raise Refusal(Reason.FIELD_MISSING, "the person: give psn_no (or a certificate)", field="input.data.psn_no")
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
    """1101 人员信息获取: baseinfo and insuinfo; balc is the personal account's balance now (this
    year's opening balance minus what the account paid this year; 0.00 without an account)."""
    q = data_of(call, PersonQuery)
    cert_no = q.certno or q.mdtrt_cert_no
    person = find_person(call.world, q.psn_no, q.psn_cert_type, cert_no)
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
                "balc": money.fen_to_yuan(account_balance(call, person)),
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
    person = find_person(call.world, data_of(call, PersonNo).psn_no)
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
    day = day_of(data.begntime, "input.data.begntime")
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
