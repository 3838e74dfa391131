"""How SettlementService's handlers are built and added to the server (server/door.py,
service.GenericOnly): once at start-up, behind the door, every method generic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from settlesim.server.audit import AuditInterceptor, AuditLog
from settlesim.server.door import settlement_handlers
from settlesim.server.faults import FaultInterceptor, FaultPlan, RpcFaults
from settlesim.server.ledger import open_ledger
from settlesim.server.limits import CallLimits
from settlesim.server.service import SERVICE, GenericOnly, SettlementService, register
from settlesim.server.world_loader import load_world


class RecordingServer:
    """What a grpc server is told when services are added to it."""

    def __init__(self) -> None:
        self.generic: list[object] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        self.generic.extend(handlers)  # type: ignore[call-overload]

    def add_registered_method_handlers(self, name: str, _handlers: object) -> None:
        self.registered.append(name)


def test_generic_only_adds_each_service_as_generic_methods_and_registers_none():
    server = RecordingServer()
    handlers = {"SettleVisit": grpc.unary_unary_rpc_method_handler(lambda request, context: None)}
    register(handlers, server)  # type: ignore[arg-type]
    assert server.registered == [SERVICE.full_name] and len(server.generic) == 1  # a server as it is
    only = RecordingServer()
    register(handlers, GenericOnly(only))  # type: ignore[arg-type]
    assert only.registered == [] and len(only.generic) == 1
    details = type("Details", (), {"method": f"/{SERVICE.full_name}/SettleVisit", "invocation_metadata": ()})()
    assert only.generic[0].service(details) is handlers["SettleVisit"]  # type: ignore[attr-defined]


def test_every_method_is_behind_the_door_built_once_with_every_wrapper(tmp_path: Path):
    """Each method's handler reads its own request (client-streaming, for the body deadline),
    whatever wrappers are on, and is one object made at start-up."""
    world, ledger = load_world(), open_ledger(tmp_path / "ledger.db")
    audit = AuditLog(tmp_path / "audit.jsonl")
    service = SettlementService(world, ledger)

    async def build() -> list[dict[str, grpc.RpcMethodHandler]]:  # the door keeps its loop
        plain = settlement_handlers(service, CallLimits())
        faults = FaultInterceptor(FaultPlan({"*": RpcFaults(latency_ms=1)}))
        wrapped = settlement_handlers(
            service, CallLimits(), audit=AuditInterceptor(audit, service.call_settings), faults=faults
        )
        return [plain, wrapped]

    try:
        for handlers in asyncio.run(build()):
            assert set(handlers) == {method.name for method in SERVICE.methods}
            for handler in handlers.values():
                assert handler.request_streaming and not handler.response_streaming
                assert handler.unary_unary is None and handler.stream_unary is not None
    finally:
        audit.close()
        ledger.close()
