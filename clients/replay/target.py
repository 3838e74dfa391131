"""Is the target usable? Fail fast, in one line, when nobody answers or the
answer is not the settlesim.v1 contract, before any case runs."""

from __future__ import annotations

import secrets

import grpc
from settlesim.clients.hospital import SESSION_HEADER
from settlesim.clients.rejections import rejection_of
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["SettlementService"].full_name


class TargetError(Exception):
    """The target is down or does not speak the settlesim.v1 contract."""


def check_target(channel: grpc.Channel, target: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when nobody answers or the answer is not our contract:
    an empty VerifyRegistration must be refused as INVALID_ARGUMENT (or answered)."""
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise TargetError(
            f"cannot reach {target}: no gRPC server answered within {timeout:g}s "
            "(is `settlesim serve` running there?)"
        ) from None
    stub = pb_grpc.SettlementServiceStub(channel)
    probe_session = (SESSION_HEADER, "replay-probe-" + secrets.token_hex(4))
    try:
        stub.VerifyRegistration(pb.VerifyRegistrationRequest(), timeout=timeout, metadata=[probe_session])
    except grpc.RpcError as error:
        rejection = rejection_of(error)
        if rejection.code == "INVALID_ARGUMENT":
            return
        if rejection.code == "UNIMPLEMENTED":
            raise TargetError(
                f"{target} answers gRPC but does not implement {SERVICE} (UNIMPLEMENTED): "
                "it speaks another contract"
            ) from None
        if rejection.reason == "SESSIONS_DISABLED":
            raise TargetError(
                f"{target} refuses session sandboxes (started with --no-sessions); replay needs them "
                "to keep runs apart (docs/sessions.md)"
            ) from None
        if rejection.code in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}:
            raise TargetError(f"cannot reach {target}: {rejection}") from None
        raise TargetError(f"{target} gave an unexpected answer to a probe: {rejection}") from None
