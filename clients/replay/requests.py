"""Building the request a step sends: the friendly form the way an HIS builds it
(clients/hospital.py: national msgids, numbered fee lines, medical type 14), with
`raw` protobuf JSON merged over it for requests an honest HIS would never send."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.replay.cases import CALLS, Step
from settlesim.v1 import settlement_service_pb2 as pb


def _enum(value: Any, enum_type: Any) -> int:
    return value if isinstance(value, int) else enum_type.Value(str(value))


def build_request(step: Step, his: Hospital, request: dict[str, Any], raw: dict[str, Any] | None) -> Message:
    """The friendly form, built the way an HIS builds it, with `raw` (protobuf
    JSON) merged over it for requests an honest HIS would never send."""
    request_type = CALLS[step.call][1]
    message = request_type()
    if request and step.call in {"verify", "pre_settle", "settle"}:
        visit = his.visit(
            str(request["person"]) if not isinstance(request["person"], dict) else "",
            str(request["disease"]),
            str(request["date"]),
            _enum(request.get("insurance_type", 0), pb.InsuranceType),
        )
        if isinstance(request["person"], dict):
            json_format.ParseDict(request["person"], visit.person)
        if step.call == "verify":
            message.visit.CopyFrom(visit)
        else:
            fees = [fee for entry in request.get("fees", []) for fee in _fees(entry)]
            inner = his.settlement_request("", "", "", [f for f, _ in fees], request.get("msgid") or None)
            inner.visit.CopyFrom(visit)
            for item, (_, entry) in zip(inner.items, fees, strict=True):
                if "seq" in entry:
                    item.sequence_no = str(entry["seq"])
                if "amount" in entry:
                    item.amount_fen = entry["amount"]
            if "operator" in request:
                inner.operator = request["operator"]
            message.request.CopyFrom(inner)
    elif step.call == "reverse":
        message.MergeFrom(
            pb.ReverseSettlementRequest(
                msgid=request.get("msgid") or his.next_msgid(),
                institution_code=his.institution_code,
                settlement_id=str(request.get("settlement_id", "")),
                operator=request.get("operator", his.operator),
            )
        )
    elif step.call == "void":
        message.MergeFrom(
            pb.VoidByMessageIdRequest(
                msgid=request.get("msgid") or his.next_msgid(),
                institution_code=his.institution_code,
                original_msgid=str(request.get("original_msgid", "")),
                original_infno=str(request.get("original_infno", "2207")),
                operator=request.get("operator", his.operator),
            )
        )
    elif step.call == "get":
        message.MergeFrom(
            pb.GetSettlementRequest(
                institution_code=his.institution_code,
                settlement_id=str(request.get("settlement_id", "")),
                msgid=str(request.get("msgid", "")),
            )
        )
    elif step.call == "reconcile":
        hospital = pb.ReconcileFigures()
        json_format.ParseDict(request.get("hospital", {}), hospital)
        message.MergeFrom(
            pb.ReconcileRequest(
                institution_code=his.institution_code,
                start_date=str(request.get("start", "")),
                end_date=str(request.get("end", "")),
                hospital=hospital,
                include_entries=bool(request.get("include_entries", False)),
            )
        )
    if raw is not None:
        json_format.ParseDict(raw, message)
    return message


def _fees(entry: dict[str, Any]) -> list[tuple[Fee, dict[str, Any]]]:
    fee = Fee(
        str(entry["code"]),
        int(entry["price"]),
        int(entry.get("quantity", 1)),
        str(entry.get("hospital_code", "")),
        str(entry.get("name", "")),
    )
    return [(fee, entry)] * int(entry.get("repeat", 1))


def msgid_of(request: Message) -> str:
    inner = getattr(request, "request", None)
    if isinstance(inner, pb.SettlementRequest):
        return inner.msgid
    return getattr(request, "msgid", "")
