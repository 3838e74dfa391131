"""Reading a refusal: the gRPC status code, the ErrorInfo reason and the
BadRequest field violations of an RpcError."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class Rejection:
    code: str  # e.g. "FAILED_PRECONDITION"
    reason: str  # ErrorInfo.reason, "" if the server sent none
    message: str
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: tuple[tuple[str, str, str], ...] = ()  # (field, reason, description)
    localized: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.reason or '(no reason)'}: {self.message}"


def rejection_of(error: grpc.RpcError) -> Rejection:
    """Decode an RpcError raised by a stub call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    reason, domain, metadata, violations, localized = "", "", {}, [], ""
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is not None:
        message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [(v.field, v.reason, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.LocalizedMessage.DESCRIPTOR):
                loc = error_details_pb2.LocalizedMessage()
                detail.Unpack(loc)
                localized = loc.message
    return Rejection(code.name, reason, message or "", domain, metadata, tuple(violations), localized)
