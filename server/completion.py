"""Calls that run to their end once the platform has the request, as on the
synchronous server: a client that gives up (deadline, cancel) does not stop a
settle that is already under way, so its commit may land late — the case the
national void (2601) and a retry with the same msgid exist for.

Only the fault and audit interceptors ask for it (a slow platform, and a record
of what the server did). Once the client has gone, gRPC frees the call, and
touching its context would touch freed memory: the call runs with a
`DetachedContext` that holds what the servicer reads (metadata, peer, TLS
identity). An abort inside only records its status (the last one wins, as the
audit log's fail-closed refusal must replace a refusal whose record failed);
the status goes to the client once, when the call has ended, if it is still there.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


class DetachedAbort(Exception):
    """An abort inside a detached call: its status is on the DetachedContext."""


class DetachedContext:
    """The parts of grpc.aio.ServicerContext a settlement call uses, valid after the client left."""

    _UNREAD: Any = object()

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._metadata = context.invocation_metadata()
        # Peer and auth context are read when first asked for, or at the latest when the client
        # leaves (`keep`, while the call is still alive): most calls never ask.
        self._peer: Any = self._UNREAD
        self._auth: Any = self._UNREAD
        self.gone = False  # the client left before the call ended
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Any = ()

    def keep(self) -> None:
        """Read what is still unread from the live call: the client is leaving."""
        self.peer()
        self.auth_context()

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        if self._peer is self._UNREAD:
            self._peer = self._context.peer()
        return self._peer

    def auth_context(self) -> Any:
        if self._auth is self._UNREAD:
            self._auth = self._context.auth_context()
        return self._auth

    def is_active(self) -> bool:
        return not self.gone

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def trailing_metadata(self) -> Any:
        return self._trailing

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing_metadata
        raise DetachedAbort(details)


def _pass_on(waiter: asyncio.Future[Any], task: asyncio.Task[Any]) -> None:
    """The call's outcome to the client's waiter, if the client still waits; else take it
    (nobody awaits a call whose client has gone) so asyncio does not warn."""
    if waiter.cancelled():
        if not task.cancelled():
            task.exception()
    elif task.cancelled():
        waiter.cancel()
    elif (error := task.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(task.result())


async def to_completion(
    call: Callable[[Any, Any], Coroutine[Any, Any, T]], request: Any, context: grpc.aio.ServicerContext
) -> T:
    """`await call(request, context)`; if the client goes meanwhile, the call still runs to its end."""
    if isinstance(context, DetachedContext):  # an outer interceptor detached it already
        return await call(request, context)
    detached = DetachedContext(context)
    loop = asyncio.get_running_loop()
    task = loop.create_task(call(request, detached))
    # What asyncio.shield does, with one callback: cancelling this call (the client left)
    # cancels only the waiter, never the task. It is on every journaled call's path.
    waiter: asyncio.Future[T] = loop.create_future()
    task.add_done_callback(functools.partial(_pass_on, waiter))
    try:
        return await waiter
    except asyncio.CancelledError:
        detached.keep()  # before the call is freed
        detached.gone = True
        raise
    except DetachedAbort:
        assert detached._code is not None
        await context.abort(detached._code, detached._details, detached._trailing)
        raise  # abort raises; this keeps type checkers honest
