"""A call runs to its end once the platform has its request (server/completion.py): in the task
gRPC runs its handler in, which refuses cancellation meanwhile (a CallTask, made by the server
loop's task factory), or, on a loop whose tasks are asyncio's own, in a Shielded task of its own.
Either way the client's leaving does not stop it, and its handler ends after it.
(The cap's side of it: tests/test_server_limits.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import CANCER_HOSPITAL
from settlesim.clients.hospital import Fee, SettlementUncertain
from settlesim.clients.secure import connect
from settlesim.server import completion
from settlesim.server.app import ServerConfig, start
from settlesim.server.completion import CallTask, DetachedContext, call_task, to_completion
from settlesim.server.faults import FaultPlan, RpcFaults

QINGHAI = "63000000000000000001"
TUMOUR = "M00503"


class _Context:
    """What to_completion reads of a grpc.aio context here: nothing until it aborts."""

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        raise AssertionError("not aborted in these tests")


async def _abandoned_call(ran: list[str]) -> tuple[bool, float]:
    """A handler whose call (0.2 s) its client leaves after 0.05 s: whether the handler's task
    ended cancelled, and how long after the call's end."""

    async def call(_request: Any, context: DetachedContext) -> str:
        await asyncio.sleep(0.2)
        ran.append("gone" if context.gone else "there")
        ran.append(f"{time.perf_counter():.6f}")
        return "answer"

    async def _handle_exceptions() -> str:  # named as grpc.aio names the coroutine of a call's handler
        return await to_completion(call, None, _Context())

    handler = asyncio.get_running_loop().create_task(_handle_exceptions())
    await asyncio.sleep(0.05)
    handler.cancel()  # what gRPC does when the client leaves
    with contextlib.suppress(asyncio.CancelledError):
        await handler
    return handler.cancelled(), time.perf_counter() - float(ran[-1])


@pytest.mark.parametrize("factory", [None, call_task], ids=["asyncio-tasks", "call-tasks"])
def test_a_call_whose_client_left_runs_to_its_end_and_its_handler_ends_after_it(factory):
    made: list[type] = []

    def recorded(loop: asyncio.AbstractEventLoop, coro: Any, **task_args: Any) -> asyncio.Task[Any]:
        task = call_task(loop, coro, **task_args)
        made.append(type(task))
        return task

    async def main() -> tuple[bool, float]:
        if factory is not None:
            asyncio.get_running_loop().set_task_factory(recorded)
        return await _abandoned_call(ran)

    ran: list[str] = []
    cancelled, after = asyncio.run(main())
    assert ran[0] == "gone"  # it ran on after the cancel, and knew its client had left
    assert cancelled and after < 0.1  # the handler's task ended cancelled, once the call had ended
    if factory is not None:  # the handler's task refused the cancel itself (asyncio.run's own come after)
        assert made[0] is CallTask and CallTask not in made[1:]


def test_other_tasks_on_the_server_loop_are_asyncio_s_own_and_cancel_as_always():
    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(call_task)
        sleeper = asyncio.create_task(asyncio.sleep(10))
        assert type(sleeper) is asyncio.Task
        await asyncio.sleep(0)
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper

    asyncio.run(main())


@pytest.mark.parametrize("coro_name", ["_handle_exceptions", "other"], ids=["call-task", "asyncio-task"])
def test_the_task_factory_passes_on_the_keywords_a_loop_gives_it(coro_name: str):
    """A task factory is called `(loop, coro, **kwargs)` and must pass the keywords on to the
    task (asyncio's rule; uvloop on Python 3.13 passes `eager_start`, which made `serve` fail at
    start there when the factory took `context` alone). The keywords given are ones every
    supported Python's asyncio.Task accepts; `eager_start` on a CallTask has its own test."""

    async def body() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        coro = body()
        coro.__name__ = coro_name  # grpc.aio's name for a call's handler makes a CallTask
        loop = asyncio.get_running_loop()
        task = call_task(loop, coro, name="handler-7", context=contextvars.copy_context())
        assert task.get_name() == "handler-7"
        assert (type(task) is CallTask) == (coro_name == "_handle_exceptions")
        await task

    asyncio.run(main())


def test_a_call_task_asked_to_start_eagerly_starts_after_it_is_set_up():
    """A CallTask's first step reads `detached`, which the factory sets after making it: an
    eager start would run that step inside the constructor. So the factory drops `eager_start`
    for a CallTask (an optimization only). Without that, this fails on every Python: 3.11's
    Task refuses the keyword, 3.12's and newer step before `detached` is set."""

    async def _handle_exceptions() -> bool:  # named as grpc.aio names a call handler's coroutine
        return asyncio.current_task().detached is None  # type: ignore[union-attr]

    async def main() -> None:
        task = call_task(asyncio.get_running_loop(), _handle_exceptions(), eager_start=True)
        assert type(task) is CallTask and await task

    asyncio.run(main())


def test_the_server_runs_an_abandoned_call_to_its_end_in_the_handler_s_own_task(tmp_path: Path, monkeypatch):
    """On `serve` (journal on) with a settle that sleeps 300 ms (injected), a client that gives up
    at 100 ms: the settle still commits (a retry replays it), and no Shielded task was made: the
    handler's own task refused the cancel (if grpc.aio renamed its handler's coroutine, the
    factory would make no CallTask and this would count one Shielded task per call)."""
    shielded: list[object] = []

    class Counted(completion.Shielded):
        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            shielded.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(completion, "Shielded", Counted)
    plan = FaultPlan({"SettleVisit": RpcFaults(latency_ms=300)})
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", faults=plan))
    try:
        impatient = connect(running.target, CANCER_HOSPITAL, retries=0, deadline=0.1)
        request = impatient.settlement_request(QINGHAI, TUMOUR, "2021-12-09", [Fee("A-CONSULT-001", 500)])
        with pytest.raises(SettlementUncertain) as given_up:
            impatient.settle_request(request)
        assert given_up.value.last_error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.5)  # the abandoned settle wakes, commits and ends
        impatient.deadline = 10
        again = impatient.settle_request(request)
        assert again.replayed and again.settlement.totals.total_fen == 500
        assert shielded == []
        impatient.close()
    finally:
        running.stop(grace=1)


def test_a_drain_waits_for_a_call_whose_client_left(tmp_path: Path):
    """The server is stopped (as on SIGTERM: health NOT_SERVING, then gRPC's drain with a grace
    shorter than the call) while a settle that sleeps 600 ms (injected) runs for a client that
    gave up: the drain waits for it, and it commits (a new server on the same ledger replays it)."""
    plan = FaultPlan({"SettleVisit": RpcFaults(latency_ms=600)})
    db = tmp_path / "ledger.db"
    running = start(ServerConfig(port=0, db_path=db, faults=plan))
    impatient = connect(running.target, CANCER_HOSPITAL, retries=0, deadline=0.1)
    request = impatient.settlement_request(QINGHAI, TUMOUR, "2021-12-09", [Fee("A-CONSULT-001", 500)])
    with pytest.raises(SettlementUncertain):
        impatient.settle_request(request)
    impatient.close()
    t = time.perf_counter()
    running.stop(grace=2)
    assert time.perf_counter() - t > 0.3  # it waited for the call, which had ~0.5 s to go
    again = start(ServerConfig(port=0, db_path=db))
    try:
        his = connect(again.target, CANCER_HOSPITAL, retries=0)
        replay = his.settle_request(request)
        assert replay.replayed and replay.settlement.totals.total_fen == 500
        his.close()
    finally:
        again.stop(grace=1)
