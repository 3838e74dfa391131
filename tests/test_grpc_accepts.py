"""More requests for SettleVisit in gRPC core than grpc.aio keeps (server/grpc_accepts.py):
they take calls, end with the server, and stand down when grpcio's internals are not the
ones the module calls. Real grpc.aio servers on real ports."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server import grpc_accepts
from settlesim.server.app import ServerConfig, start
from settlesim.server.grpc_accepts import AcceptLoops
from settlesim.server.service import OFTEN_ACCEPTED, GenericOnly
from settlesim.server.world_generate import generate_world

ECHO = "/test.Echo/Say"


def _echo_server() -> tuple[grpc.aio.Server, GenericOnly]:
    """A grpc.aio server with one method, added as app.start adds SettlementService's."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    adding = GenericOnly(server, frozenset({ECHO}))
    adding.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Say": handler}),))
    adding.add_registered_method_handlers("test.Echo", {"Say": handler})
    return server, adding


@pytest.mark.parametrize("loop_factory", ["asyncio", "uvloop"])
def test_more_requests_take_calls_and_end_with_the_server(loop_factory: str) -> None:
    failures: list[object] = []

    async def scenario() -> tuple[int, int, int, int]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: failures.append(context))
        server, adding = _echo_server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        loops = AcceptLoops.start(server, adding.registered, extra=3)
        assert loops is not None
        running = loops.running
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary(ECHO)
            answers = await asyncio.gather(*(say(b"%d" % i, timeout=10) for i in range(200)))
        assert answers == [b"%d" % i for i in range(200)]
        await server.stop(1)
        for _ in range(20):  # core fails the pending requests; the loops see it and end
            await asyncio.sleep(0.01)
        return running, loops.accepted, loops.running, len(answers)

    if loop_factory == "uvloop":
        import uvloop

        running, accepted, left, answered = uvloop.run(scenario())
    else:
        running, accepted, left, answered = asyncio.run(scenario())
    assert running == 3
    assert 0 < accepted <= answered  # the extra requests took calls (grpc.aio's own took the rest)
    assert left == 0  # every accept loop ended with the server
    assert failures == []  # ... quietly: no task died with an exception nobody retrieved


def test_no_extra_requests_when_asked_for_none() -> None:
    async def scenario() -> AcceptLoops | None:
        server, adding = _echo_server()
        server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return AcceptLoops.start(server, adding.registered, extra=0) or AcceptLoops.start(server, {}, extra=3)
        finally:
            await server.stop(0)

    assert asyncio.run(scenario()) is None


def test_internals_that_differ_keep_grpcs_one_request(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grpc._cython import cygrpc

    # The installed grpcio has them as the module calls them: an upgrade that changes them
    # fails here first (and the server would fall back to grpc.aio's one request).
    assert grpc_accepts.internals() is cygrpc

    def handle_rpc_183(generic_handlers, interceptors, rpc_state, loop, concurrency_exceeded): ...

    like_183 = SimpleNamespace(**{name: getattr(cygrpc, name) for name in dir(cygrpc) if not name.startswith("__")})
    like_183._handle_rpc = handle_rpc_183
    assert grpc_accepts.internals(like_183) is None
    without_registered_calls = SimpleNamespace(**vars(like_183))
    without_registered_calls._handle_rpc = cygrpc._handle_rpc
    without_registered_calls.AioServer = type("AioServer", (), {"is_running": lambda self: True})
    assert grpc_accepts.internals(without_registered_calls) is None
    assert grpc_accepts.internals(SimpleNamespace()) is None

    async def scenario() -> AcceptLoops | None:
        server, adding = _echo_server()
        server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return AcceptLoops.start(server, adding.registered)
        finally:
            await server.stop(0)

    monkeypatch.setattr(grpc_accepts, "internals", lambda cygrpc=None: None)  # a grpcio whose internals differ
    with caplog.at_level(logging.INFO, logger="settlesim.server"):
        assert asyncio.run(scenario()) is None
    assert "one request per method in gRPC core" in caplog.text


def test_serve_keeps_more_requests_for_settle_visit(tmp_path: Path) -> None:
    generate_world(tmp_path / "world", 50, 1)
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", world_dir=tmp_path / "world"))
    try:
        assert running.accepts is not None and running.accepts.running == grpc_accepts.EXTRA_REQUESTS
        requests = bench.Requests(Workload.load(tmp_path / "world"), 1)
        answered, errors, *_ = asyncio.run(bench._closed_loop(running.target, requests, 16, 1.0, 2))
        assert answered > 0 and errors == 0
        assert running.accepts.accepted > 0  # settles went through the extra requests
    finally:
        running.stop(grace=1)
    assert {"/settlesim.v1.SettlementService/SettleVisit"} == OFTEN_ACCEPTED
