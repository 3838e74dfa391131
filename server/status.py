"""Refusals as gRPC statuses: google.rpc.Status with ErrorInfo (stable reason,
domain, metadata), BadRequest for malformed fields, and a LocalizedMessage in
Chinese for hospital staff."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from settlesim.server.rules.reasons import Reason, Refusal, Violation

DOMAIN = "settlesim.v1"

_MALFORMED = {
    Reason.FIELD_MISSING, Reason.FIELD_INVALID, Reason.QUANTITY_NOT_POSITIVE, Reason.PRICE_NEGATIVE,
    Reason.AMOUNT_MISMATCH, Reason.ITEMS_EMPTY, Reason.TOO_MANY_ITEMS, Reason.AMOUNT_OUT_OF_RANGE,
    Reason.DUPLICATE_SEQUENCE_NO, Reason.UNKNOWN_INSTITUTION, Reason.UNKNOWN_DISEASE, Reason.PERSON_MISMATCH,
    Reason.MALFORMED_MESSAGE, Reason.DUPLICATE_HEADER,
}  # fmt: skip
# The field a malformed-input refusal is about when it lists no violation itself.
_FIELD_OF = {Reason.PERSON_MISMATCH: "request.visit.person", Reason.MALFORMED_MESSAGE: "*"}
_CODES = {
    Reason.MSGID_REUSED: code_pb2.ALREADY_EXISTS,
    Reason.SETTLEMENT_NOT_FOUND: code_pb2.NOT_FOUND,
    Reason.CALLER_UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    Reason.INSTITUTION_NOT_CALLER: code_pb2.PERMISSION_DENIED,
    Reason.SESSIONS_DISABLED: code_pb2.PERMISSION_DENIED,
    Reason.SESSION_NOT_YOURS: code_pb2.PERMISSION_DENIED,
    Reason.INJECTED_FAULT: code_pb2.UNAVAILABLE,
    Reason.AUDIT_UNAVAILABLE: code_pb2.UNAVAILABLE,
    Reason.LEDGER_UNAVAILABLE: code_pb2.UNAVAILABLE,
    Reason.LEDGER_DAMAGED: code_pb2.DATA_LOSS,
    Reason.RUN_ALREADY_OPEN: code_pb2.ALREADY_EXISTS,
    Reason.RUN_NOT_FOUND: code_pb2.NOT_FOUND,
    Reason.SERVER_BUSY: code_pb2.RESOURCE_EXHAUSTED,
    Reason.REQUEST_BODY_TIMEOUT: code_pb2.DEADLINE_EXCEEDED,
    Reason.VISIT_NOT_FOUND: code_pb2.NOT_FOUND,
    Reason.UNSUPPORTED_TRANSACTION: code_pb2.UNIMPLEMENTED,
}

# 给医院操作员看的中文说明 (LocalizedMessage zh-CN) for the refusals staff meet most.
_ZH = {
    Reason.PERSON_NOT_FOUND: "未查询到参保人员信息",
    Reason.PERSON_NOT_INSURED: "参保人员在就诊日期非参保状态",
    Reason.NOT_CROSS_PROVINCE: "非跨省异地就医，不能按跨省门诊慢特病结算",
    Reason.DISEASE_NOT_COVERED: "参保地未将该病种纳入门诊慢特病保障",
    Reason.GENERAL_OUTPATIENT_DISEASE: "参保地将该病种按普通门诊保障，非门诊慢特病",
    Reason.QUALIFICATION_NOT_FOUND: "参保人未办理该病种待遇资格认定",
    Reason.QUALIFICATION_NOT_VALID: "该病种待遇资格在就诊日期无效",
    Reason.INSTITUTION_NOT_DESIGNATED: "医疗机构非定点医疗机构",
    Reason.INSTITUTION_NOT_CONNECTED: "医疗机构未接入国家跨省异地就医结算平台",
    Reason.DISEASE_NOT_OPENED: "医疗机构未开通该病种跨省直接结算",
    Reason.REGISTRATION_NOT_FOUND: "参保人未办理跨省异地就医备案",
    Reason.REGISTRATION_NOT_YET_VALID: "异地就医备案尚未生效",
    Reason.REGISTRATION_EXPIRED: "异地就医备案已过期",
    Reason.REGISTRATION_REVOKED: "异地就医备案已撤销",
    Reason.REGISTRATION_SUPERSEDED: "异地就医备案已变更，原备案失效",
    Reason.DESTINATION_MISMATCH: "就医地与备案地不符",
    Reason.INSTITUTION_NOT_IN_REGISTRATION: "该医疗机构不在参保人备案的定点医疗机构范围内",
    Reason.TOO_MANY_INSTITUTIONS: "备案定点医疗机构数量超过规定",
    Reason.RESIDENCE_TOO_SHORT: "异地居住时间不满足备案要求",
    Reason.MSGID_REUSED: "报文ID重复",
    Reason.MSGID_VOIDED: "该报文已冲正，不能再结算",
    Reason.SETTLEMENT_NOT_FOUND: "未查询到结算信息",
    Reason.ALREADY_REVERSED: "该结算已撤销",
    Reason.ALREADY_VOIDED: "该结算已冲正",
    Reason.AUDIT_UNAVAILABLE: "平台审计日志暂不可用，请稍后以同一报文ID重试",
    Reason.LEDGER_UNAVAILABLE: "结算平台暂时无法记账，请稍后使用同一报文ID重试",
    Reason.LEDGER_DAMAGED: "结算平台数据异常，暂停服务",
    Reason.FIELD_MISSING: "报文缺少必填项",
    Reason.FIELD_INVALID: "报文字段取值不符合规范",
    Reason.MALFORMED_MESSAGE: "报文格式错误，无法解析",
    Reason.AMOUNT_MISMATCH: "费用明细金额与单价乘数量不符",
    Reason.DUPLICATE_SEQUENCE_NO: "费用明细流水号重复",
    Reason.ITEMS_EMPTY: "没有可结算的费用明细",
    Reason.UNKNOWN_INSTITUTION: "未查询到定点医药机构信息",
    Reason.UNKNOWN_DISEASE: "未查询到该病种信息",
    Reason.PERSON_MISMATCH: "就诊凭证与人员编号不符",
    Reason.INSTITUTION_NOT_CALLER: "无权代其他定点医药机构办理",
    Reason.VISIT_NOT_FOUND: "未查询到就诊信息（就诊ID不存在）",
    Reason.VISIT_CANCELLED: "该就诊已撤销挂号",
    Reason.VISIT_SETTLED: "该就诊已结算，请先撤销结算",
    Reason.SPLIT_MISMATCH: "医院计算的费用分割金额与平台不一致，未结算",
    Reason.UNSUPPORTED_TRANSACTION: "不支持的交易编号",
}


def zh_message(reason: Reason) -> str:
    """The Chinese message for hospital staff (err_msg, LocalizedMessage zh-CN)."""
    return _ZH.get(reason, "交易失败")


def code_for(reason: Reason) -> int:
    """The canonical google.rpc.Code a reason travels with."""
    if reason in _MALFORMED:
        return code_pb2.INVALID_ARGUMENT
    return _CODES.get(reason, code_pb2.FAILED_PRECONDITION)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _violations(refusal: Refusal) -> tuple[Violation, ...]:
    """Every malformed-input refusal carries a BadRequest: its own violations, or
    one for the field it names (metadata `field`) or is about."""
    if refusal.violations or refusal.reason not in _MALFORMED:
        return refusal.violations
    field = refusal.metadata.get("field") or _FIELD_OF.get(refusal.reason, "")
    return (Violation(field, refusal.message[:200], refusal.reason),)


def to_status(refusal: Refusal, code: int | None = None) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=refusal.reason.value, domain=DOMAIN, metadata=refusal.metadata)
    details = [_pack(info)]
    violations = _violations(refusal)
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason.value
                        )
                        for v in violations
                    ]
                )
            )
        )
    if refusal.reason in _ZH:
        details.append(_pack(error_details_pb2.LocalizedMessage(locale="zh-CN", message=_ZH[refusal.reason])))
    status = status_pb2.Status(
        code=code if code is not None else code_for(refusal.reason), message=refusal.message, details=details
    )
    return rpc_status.to_status(status)
