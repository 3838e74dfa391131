"""More requests for the hot method waiting in gRPC core than grpc.aio keeps by itself.

gRPC core hands a new call to the application only against a request the application posted
beforehand. grpc.aio keeps one such request per registered method (one more for all generic
methods) and posts the next only once its accept loop has handed the accepted call on, several
turns of the event loop later (from grpcio 1.84 the request is a task of its own, awaited
with `asyncio.wait`). Every call that arrives meanwhile waits in core, one loop turn or more
each, behind the others: under the bench's closed loop (32 calls in flight over 4 connections)
a settle spent 5.1-5.9 ms of its 13.5-14.4 ms between the client's send and our door, while
the loop sat idle in epoll a quarter of the time (`scripts/call_path.py`, docs/performance.md).

`AcceptLoops` keeps `EXTRA_REQUESTS` more requests for each method given, each re-posted by its
own small accept loop on the server's event loop the moment it is taken. With 4 more for
SettleVisit that wait fell to 2.8-3.1 ms and the bench's settles/s rose by a quarter.

This reaches into grpc.aio's Cython internals: `AioServer._request_registered_call`,
`_MethodResolver`, `_handle_rpc` and `_schedule_rpc_coro`, called as grpc.aio's own accept loop
calls them. They are checked by name and parameters when the server starts; if a grpcio release
changes them, the server keeps grpc.aio's single request and says so in its log
(`tests/test_grpc_accepts.py` holds the installed grpcio to them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

log = logging.getLogger("settlesim.server")

# Measured (scripts/call_path.py, closed loop of 32 over 4 connections, settles/s): grpc.aio's
# one request 2,093-2,102; 2 more 2,465; 4 more 2,424-2,481; 8 and 16 more 2,461-2,462.
EXTRA_REQUESTS = 4
# A request that fails while the server runs is posted again, as grpc.aio does, but not for ever.
_FAILURES_IN_A_ROW = 10

# The parameters of the internals as grpc.aio's accept loop calls them (grpcio 1.84-1.85).
_HANDLE_RPC = ("method_name", "method_resolver", "interceptors", "rpc_state", "loop", "concurrency_exceeded")
_SCHEDULE_RPC = ("rpc_coro", "rpc_state", "loop", "method_name")


def _parameters(function: Any) -> tuple[str, ...] | None:
    code = getattr(function, "__code__", None)
    return None if code is None else tuple(code.co_varnames[: code.co_argcount])


def internals(cygrpc: Any = None) -> Any:
    """grpc.aio's Cython module if it has the internals as this module calls them, else None."""
    if cygrpc is None:
        from grpc._cython import cygrpc
    server_class = getattr(cygrpc, "AioServer", None)
    if (
        server_class is None
        or not callable(getattr(server_class, "_request_registered_call", None))
        or not callable(getattr(server_class, "is_running", None))
        or getattr(cygrpc, "_MethodResolver", None) is None
        or not isinstance(getattr(cygrpc, "_RequestCallError", None), type)
        or _parameters(getattr(cygrpc, "_handle_rpc", None)) != _HANDLE_RPC
        or _parameters(getattr(cygrpc, "_schedule_rpc_coro", None)) != _SCHEDULE_RPC
    ):
        return None
    return cygrpc


class AcceptLoops:
    """`extra` more requests in gRPC core for each of `handlers`' methods (fully qualified
    names), on a started grpc.aio server with no aio interceptors. They end with the server."""

    def __init__(
        self, cygrpc: Any, core: Any, handlers: dict[str, grpc.RpcMethodHandler], extra: int
    ) -> None:
        self._cygrpc, self._core = cygrpc, core
        self._resolver = cygrpc._MethodResolver([], dict(handlers))
        self._loop = asyncio.get_running_loop()
        self._calls: set[asyncio.Task[Any]] = set()  # the loop keeps only weak references
        self.accepted = 0  # calls these requests took (the rest went to grpc.aio's own)
        self._loops = [
            self._loop.create_task(self._accept(method), name=f"accept {method}")
            for method in handlers
            for _ in range(extra)
        ]

    @classmethod
    def start(
        cls, server: grpc.aio.Server, handlers: dict[str, grpc.RpcMethodHandler], extra: int = EXTRA_REQUESTS
    ) -> AcceptLoops | None:
        """The accept loops, or None (grpc.aio's own request only) when grpcio's internals
        are not those this module knows, or there is nothing to do."""
        if not handlers or extra <= 0:
            return None
        cygrpc, core = internals(), getattr(server, "_server", None)
        if cygrpc is None or not isinstance(core, cygrpc.AioServer):
            log.info("grpcio %s: one request per method in gRPC core (its internals differ)", grpc.__version__)
            return None
        return cls(cygrpc, core, handlers, extra)

    @property
    def running(self) -> int:
        """Accept loops still posting requests."""
        return sum(not task.done() for task in self._loops)

    async def _accept(self, method: str) -> None:
        cygrpc, core, loop, name = self._cygrpc, self._core, self._loop, method.encode()
        failures = 0
        while core.is_running():
            try:
                rpc_state = await core._request_registered_call(name)
            except cygrpc._RequestCallError:
                failures += 1
                if not core.is_running():
                    return  # the server is stopping: core fails every pending request
                if failures >= _FAILURES_IN_A_ROW:
                    log.warning("gRPC core refused %d requests for %s in a row; one fewer", failures, method)
                    return
                continue
            except Exception:  # refused at once (not the callback): posting it again would spin
                log.warning("gRPC core refused a request for %s; one fewer", method, exc_info=True)
                return
            failures = 0
            self.accepted += 1
            call = loop.create_task(
                cygrpc._schedule_rpc_coro(
                    cygrpc._handle_rpc(method, self._resolver, (), rpc_state, loop, False), rpc_state, loop, method
                ),
                name="rpc_task",
            )
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)
