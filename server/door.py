"""The door of every SettlementService call, built once per method when the server starts.

Each method's handler is composed here, outermost first: the limits (body deadline, call cap:
server/limits.py), then, only when the server was asked for them, the audit log, the call
journal and the injected faults, then the servicer (refusals as statuses). The server has no
interceptors: gRPC would run an interceptor chain per call (a coroutine and a partial per
interceptor, health and reflection included) to find a handler that is the same every time.

A call runs to its end once the platform has its request (server/completion.py) when any of
the wrappers that must see how it ended is on; without them it is the servicer's alone.
"""

from __future__ import annotations

import asyncio

import grpc
from settlesim.server.audit import AuditInterceptor
from settlesim.server.completion import call_task
from settlesim.server.faults import FaultInterceptor
from settlesim.server.journal import JournalInterceptor
from settlesim.server.limits import CallLimits
from settlesim.server.service import method_handlers
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc


def settlement_handlers(
    servicer: pb_grpc.SettlementServiceServicer,
    limits: CallLimits,
    *,
    audit: AuditInterceptor | None = None,
    journal: JournalInterceptor | None = None,
    faults: FaultInterceptor | None = None,
) -> dict[str, grpc.RpcMethodHandler]:
    """Each SettlementService method's handler behind its door, by method name. Call on the
    server's event loop (the door keeps its loop; when a call is to run to its end, the tasks
    gRPC runs handlers in become CallTasks, which can refuse cancellation: server/completion.py)."""
    detach = any(w is not None for w in (audit, journal, faults))
    if detach:
        asyncio.get_running_loop().set_task_factory(call_task)
    handlers = method_handlers(servicer)
    for rpc, handler in handlers.items():
        if faults is not None:
            handler = faults.wrap(rpc, handler)
        if journal is not None:
            handler = journal.wrap(rpc, handler)
        if audit is not None:
            handler = audit.wrap(rpc, handler)  # sees the injected faults and the journal's view
        handlers[rpc] = limits.door(handler, detach=detach)
    return handlers
