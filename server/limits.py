"""The door of every SettlementService call: limits that keep one client from
hurting the others (docs/errors.md#server-limits).

- **Request body deadline.** A call whose request message has not arrived
  `body_seconds` after the call opened is refused DEADLINE_EXCEEDED /
  REQUEST_BODY_TIMEOUT and its stream freed: a client cannot hold streams open
  forever by sending headers and nothing else.
- **Concurrent calls.** At most `max_calls` settlement calls are worked on at
  once (counted from the arrival of their request until the call has ended, also when its
  client has left: server/completion.py); one more is
  refused RESOURCE_EXHAUSTED / SERVER_BUSY at once instead of queueing without
  bound. Health and reflection are never counted or refused.

The HTTP/2 limits (streams per connection, keepalive, idle connections) are
gRPC core settings: `app.server_options`.

To read the body under a deadline the door takes the call as a client-streaming
handler (the wire is the same for a unary call) and reads its one message
itself; everything inside it (audit, faults, the servicer) sees a unary call.
The door is made once per method when the server starts (server/door.py).
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import current_task
from typing import Any

import grpc
from settlesim.server.completion import to_completion
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.status import to_status

log = logging.getLogger("settlesim.server")
EOF = grpc.aio.EOF

MAX_CONCURRENT_CALLS = 2000  # settlement calls worked on at once
REQUEST_BODY_SECONDS = 10.0  # from a call's opening to its request message


async def _refuse(context: grpc.aio.ServicerContext, refusal: Refusal, level: int = logging.WARNING) -> None:
    log.log(
        level,
        "call refused at the door: %s %s",
        refusal.reason,
        refusal.message,
        extra={"fields": {"reason": str(refusal.reason), "peer": context.peer()}},
    )
    status = to_status(refusal)
    await context.abort(status.code, status.details, status.trailing_metadata)


class CallLimits:
    """The body deadline and the cap on concurrent calls: `door` wraps a method's handler in them."""

    def __init__(
        self, max_calls: int = MAX_CONCURRENT_CALLS, body_seconds: float = REQUEST_BODY_SECONDS
    ) -> None:
        self.max_calls, self.body_seconds = max_calls, body_seconds
        self.in_flight = 0
        self.stopping = False  # the server drains (app.RunningServer.stop): its cuts are not the clients'
        # Calls still waiting for their request message, by the loop time their body is due.
        # One sweep a tick refuses the late ones: a timer per call cost more than the call's door.
        self._awaiting: dict[asyncio.Task[Any], float] = {}
        self._late: set[asyncio.Task[Any]] = set()
        self._sweep_every = min(1.0, max(0.05, body_seconds / 10))
        self._sweeping = False

    def _sweep(self) -> None:
        """Cancel the read of every call whose request message is overdue."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, due in list(self._awaiting.items()):
            if due <= now:
                del self._awaiting[task]
                self._late.add(task)
                task.cancel()
        if self._awaiting:
            loop.call_later(self._sweep_every, self._sweep)
        else:
            self._sweeping = False

    def door(self, handler: grpc.RpcMethodHandler, *, detach: bool = False) -> grpc.RpcMethodHandler:
        """`handler` (a unary one) behind the door, as a client-streaming handler whose one
        message the door reads itself. `detach`: the call runs to its end even when the client
        leaves (server/completion.py), for the wrappers that must see how it ended."""
        behavior = handler.unary_unary
        body_seconds, awaiting, late = self.body_seconds, self._awaiting, self._late
        loop = asyncio.get_running_loop()  # the handlers are made on the server's loop
        time = loop.time

        async def door(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
            task = current_task(loop)
            assert task is not None
            awaiting[task] = time() + body_seconds
            if not self._sweeping:
                self._sweeping = True
                loop.call_later(self._sweep_every, self._sweep)
            try:
                request = await context.read()
            except asyncio.CancelledError:
                if task not in late:
                    raise  # the client went away
                late.discard(task)
                request = None
            finally:
                awaiting.pop(task, None)
            if request is None:
                await _refuse(
                    context,
                    Refusal(
                        Reason.REQUEST_BODY_TIMEOUT,
                        f"no request message within {body_seconds:g} s of the call's start",
                    ),
                )
            if request is EOF:
                # at the end of a drain's grace gRPC ends the calls still waiting so: not a client's
                # fault worth a warning (the client, if it is there, is told UNAVAILABLE by gRPC)
                await _refuse(
                    context,
                    Refusal(Reason.MALFORMED_MESSAGE, "the call ended without a request message"),
                    level=logging.INFO if self.stopping else logging.WARNING,
                )
            if self.in_flight >= self.max_calls:
                await _refuse(
                    context,
                    Refusal(
                        Reason.SERVER_BUSY,
                        f"the server is working on its cap of {self.max_calls} concurrent calls; retry shortly",
                    ),
                )
            self.in_flight += 1
            try:
                if detach:
                    return await to_completion(behavior, request, context, task)
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return grpc.stream_unary_rpc_method_handler(
            door, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
