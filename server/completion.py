"""Calls that run to their end once the platform has the request, as on the
synchronous server: a client that gives up (deadline, cancel) does not stop a
settle that is already under way, so its commit may land late — the case the
national void (2601) and a retry with the same msgid exist for.

The door asks for it when a wrapper that must see how a call ended is on (the journal,
the audit log, faults: server/door.py). When the client leaves, gRPC cancels the task
of the call's handler, and a cancellation reaches whatever that task awaits. On the
server's loop that task is a `CallTask` (the door sets the loop's task factory), which
refuses to be cancelled while its call runs detached: gRPC's cancel only marks the client
as gone, and the handler ends (cancelled, as gRPC expects) once the call has ended. On
another loop the call runs in a task of its own that refuses to be cancelled (`Shielded`),
which the handler awaits. The call and its context stay alive until then (gRPC frees a
call when its handler's task ends).
Inside, the call sees a `DetachedContext`: an abort only records its status (the last
one wins, as the audit log's fail-closed refusal must replace a refusal whose record
failed); the status goes to the client once, when the call has ended, if it is still there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


class DetachedAbort(Exception):
    """An abort inside a detached call: its status is on the DetachedContext."""


class DetachedContext:
    """The parts of grpc.aio.ServicerContext a settlement call uses, and whether its client left."""

    __slots__ = ("_auth", "_code", "_context", "_details", "_metadata", "_peer", "_trailing", "gone")
    _UNREAD: Any = object()

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        # Read from the live call when first asked for (it lives until the call has ended).
        self._metadata: Any = self._UNREAD
        self._peer: Any = self._UNREAD
        self._auth: Any = self._UNREAD
        self.gone = False  # the client left before the call ended
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Any = ()

    def invocation_metadata(self) -> Any:
        if self._metadata is self._UNREAD:
            self._metadata = self._context.invocation_metadata()
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


class CallTask(asyncio.Task):  # type: ignore[type-arg]
    """The task gRPC runs a call's handler in, on the server's loop (`call_task`, its task
    factory, set by server/door.py). While the call runs detached (`detached` holds its
    DetachedContext) the task refuses to be cancelled: gRPC's cancel, when the client leaves,
    only marks the client gone, and nothing the call awaits (the ledger's COMMIT) is cancelled.
    So a detached call needs no task of its own (a Shielded one cost a call ~16k instructions:
    its creation, registration and two more steps through the loop)."""

    __slots__ = ("detached",)
    detached: DetachedContext | None

    def cancel(self, msg: Any = None) -> bool:
        detached = self.detached
        if detached is None:
            return super().cancel(msg)
        detached.gone = True
        return False


_HANDLER_CORO = "_handle_exceptions"  # what grpc.aio names the coroutine a call's handler runs in


def call_task(loop: asyncio.AbstractEventLoop, coro: Any, **task_args: Any) -> asyncio.Task[Any]:
    """The server loop's task factory (loop.set_task_factory): a CallTask for gRPC's call
    handlers, asyncio's own Task for the rest (a subclass costs each task ~4k instructions,
    most of it where another task awaits it). Should grpc.aio rename its coroutine, calls run
    detached in a Shielded task of their own, as before (slower, the same outcome). The loop's
    keywords go to the task as they came (asyncio's rule for task factories: `context`, and
    uvloop on Python 3.13 passes `eager_start`), but for `eager_start` on a CallTask: its
    first step must not run before `detached` is set."""
    if getattr(coro, "__name__", None) == _HANDLER_CORO:
        task_args.pop("eager_start", None)
        task = CallTask(coro, loop=loop, **task_args)
        task.detached = None
        return task
    return asyncio.Task(coro, loop=loop, **task_args)


class Shielded(asyncio.Task):  # type: ignore[type-arg]
    """The task a detached call runs in on a loop whose tasks are not CallTasks. Cancelling it is
    refused: gRPC cancels the handler's task when the client leaves, which cancels the task it
    awaits, this one; the call runs on and the handler's task is woken (with its
    CancelledError) once the call has ended."""

    __slots__ = ("detached",)
    detached: DetachedContext

    def cancel(self, msg: Any = None) -> bool:
        self.detached.gone = True
        return False


async def to_completion(
    call: Callable[[Any, Any], Coroutine[Any, Any, T]],
    request: Any,
    context: grpc.aio.ServicerContext,
    task: asyncio.Task[Any] | None = None,
) -> T:
    """`await call(request, context)`; if the client goes meanwhile, the call still runs to its end.
    `task`: the task running this coroutine, when the caller has it at hand (the door); any other
    task would leave the call's own task free to be cancelled."""
    if isinstance(context, DetachedContext):  # an outer wrapper detached it already
        return await call(request, context)
    detached = DetachedContext(context)
    if task is None:
        task = asyncio.current_task()
    if type(task) is CallTask and task.detached is None:
        # The handler's own task refuses cancellation until the call has ended.
        task.detached = detached
        try:
            response = await call(request, detached)
        except DetachedAbort:
            task.detached = None
            if detached.gone:
                raise asyncio.CancelledError from None
            assert detached._code is not None
            await context.abort(detached._code, detached._details, detached._trailing)
            raise  # abort raises; this keeps type checkers honest
        finally:
            task.detached = None
        if detached.gone:  # the client left: gRPC ends the call as cancelled, as it would have
            raise asyncio.CancelledError
        return response
    shielded = Shielded(call(request, detached), loop=asyncio.get_running_loop())
    shielded.detached = detached
    try:
        return await shielded
    except asyncio.CancelledError:
        # The client left, and the call has ended (its task cannot be cancelled); nobody
        # awaits its outcome: take it, so asyncio does not warn.
        if shielded.done() and not shielded.cancelled():
            shielded.exception()
        raise
    except DetachedAbort:
        assert detached._code is not None
        await context.abort(detached._code, detached._details, detached._trailing)
        raise  # abort raises; this keeps type checkers honest
