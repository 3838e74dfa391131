"""gRPC's own cost of accepting a call on the event loop (docs/performance.md, session 12).

From grpcio 1.84 on, grpc.aio's accept loop keeps a task per pending request and runs
`asyncio.wait(..., FIRST_COMPLETED)` over them for every call it accepts, even with no
registered method (server/service.py GenericOnly registers none): ~55k instructions of the
loop a call (callgrind, the aio noop server: 250k on 1.83.2, 305k on 1.85.3). 1.81-1.83 await
the one request directly. pyproject.toml pins grpcio below 1.84 for that; this test is what
an upgrade must pass (or the pin and this test are revisited with new figures).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from settlesim.server.app import RunningServer

CALLS = 20


@pytest.fixture
def counted_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """asyncio.wait wrapped to count its calls (gRPC's Cython looks it up on the module each time)."""
    waits = [0]
    wait: Callable[..., Any] = asyncio.wait

    def counting(*args: Any, **kwargs: Any) -> Any:
        waits[0] += 1
        return wait(*args, **kwargs)

    monkeypatch.setattr(asyncio, "wait", counting)
    return waits


def test_the_aio_server_accepts_calls_without_an_asyncio_wait_each(
    server: RunningServer, counted_waits: list[int]
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(CALLS):
            answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # One wait may be pending from before the counting began; none comes per call.
    assert counted_waits[0] <= 1, (
        f"{counted_waits[0]} asyncio.wait calls for {CALLS} calls: grpcio {grpc.__version__}"
    )
