"""The national envelope (报文): what every transaction posts and what it gets back.

Typed at the edge with pydantic: a request that does not fit is refused as an
envelope too (infcode -1), never an HTTP error page. Codes a HIS may send as
numbers (insutype 310) are read as text.
"""

from __future__ import annotations

import itertools
import threading
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from settlesim.server.rules.reasons import Reason, Refusal, Violation
from settlesim.server.status import zh_message

SUCCESS, FAILURE = 0, -1


class Part(BaseModel):
    """A part of a transaction's input: unknown fields are kept and ignored, codes are text."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


class Envelope(Part):
    """The request envelope (入参报文)."""

    infno: str = Field(description="交易编号, e.g. 2207")
    msgid: str = Field(description="发送方报文ID: fixmedins_code + yyyyMMddHHmmss + 4-digit sequence")
    mdtrtarea_admvs: str = Field("", description="就医地医保区划")
    insuplc_admdvs: str = Field("", description="参保地医保区划")
    recer_sys_code: str = ""
    dev_no: str = ""
    dev_safe_info: str = ""
    cainfo: str = ""
    signtype: str = ""
    infver: str = ""
    opter_type: str = ""
    opter: str = Field("", description="经办人")
    opter_name: str = ""
    inf_time: str = ""
    fixmedins_code: str = Field(description="定点医药机构编号: the institution the call acts for")
    fixmedins_name: str = ""
    sign_no: str = Field("", description="签到编号 from 9001")
    input: dict[str, Any] = Field(default_factory=dict, description="the transaction's body")


class Answer(BaseModel):
    """The answer envelope (出参报文). err_reason and err_detail are settlesim
    extensions: the refusal's stable reason (as the gRPC door's ErrorInfo) and its
    message for developers; err_msg is the Chinese one for hospital staff."""

    infcode: int = Field(description="0 success, -1 failure")
    inf_refmsgid: str = Field(description="接收方报文ID: the platform's id of this answer")
    refmsg_time: str = Field(description="接收报文时间 yyyyMMddHHmmssSSS")
    respond_time: str = Field(description="响应报文时间 yyyyMMddHHmmssSSS")
    err_msg: str = ""
    err_reason: str = ""
    err_detail: str = ""
    warn_msg: str = ""
    cainfo: str = ""
    signtype: str = ""
    output: dict[str, Any] = Field(default_factory=dict)


def stamp(when: datetime) -> str:
    """yyyyMMddHHmmssSSS, the envelope's time format."""
    return when.strftime("%Y%m%d%H%M%S%f")[:17]


_SEQUENCE = itertools.count(1)
_SEQUENCE_LOCK = threading.Lock()


def refmsgid(region: str, when: datetime) -> str:
    """A 30-character platform message id: region (6) + time (14) + sequence (10)."""
    with _SEQUENCE_LOCK:
        n = next(_SEQUENCE)
    prefix = region if len(region) == 6 and region.isdigit() else "000000"
    return f"{prefix}{when:%Y%m%d%H%M%S}{n % 10**10:010d}"


def answer(
    output: dict[str, Any] | None, refusal: Refusal | None, region: str, received: datetime, now: datetime
) -> dict[str, Any]:
    """The answer envelope as plain data (Decimal money stays Decimal for the writer)."""
    envelope: dict[str, Any] = {
        "infcode": SUCCESS if refusal is None else FAILURE,
        "inf_refmsgid": refmsgid(region, now),
        "refmsg_time": stamp(received),
        "respond_time": stamp(now),
        "err_msg": "",
        "err_reason": "",
        "err_detail": "",
        "warn_msg": "",
        "cainfo": "",
        "signtype": "",
        "output": output or {},
    }
    if refusal is not None:
        zh = zh_message(refusal.reason)
        envelope["err_msg"] = f"{zh}：{refusal.message}" if refusal.message else zh
        envelope["err_reason"] = refusal.reason.value
        envelope["err_detail"] = refusal.message
    return envelope


def parse(model: type[BaseModel], data: object, where: str) -> Any:
    """`data` as `model`, or a Refusal naming every field that does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        violations = []
        for problem in error.errors()[:20]:
            field = ".".join(str(p) for p in (where, *problem["loc"]) if p != "")
            missing = problem["type"] == "missing"
            reason = Reason.FIELD_MISSING if missing else Reason.FIELD_INVALID
            violations.append(Violation(field, problem["msg"], reason))
        first = violations[0]
        raise Refusal(
            first.reason, f"{first.field}: {first.description}", tuple(violations), field=first.field
        ) from None


def money_fields(value: Any) -> Any:
    """Floats never appear: the body is parsed with Decimal; this guards answers."""
    if isinstance(value, float):  # pragma: no cover - a bug, not an input
        raise TypeError("money must be Decimal, never float")
    if isinstance(value, dict):
        return {k: money_fields(v) for k, v in value.items()}
    if isinstance(value, list):
        return [money_fields(v) for v in value]
    return value


__all__ = ["Answer", "Decimal", "Envelope", "Part", "answer", "parse"]
