"""The reference server and the noop yardstick run on the same event loop, uvloop where the
platform has it: asyncio's own loop costs the aio noop's loop 47 % more instructions a call and a
settle's loop 14 % more (callgrind, docs/performance.md, session 12)."""

from __future__ import annotations

import asyncio

import pytest
from settlesim.server.app import RunningServer, run_loop

uvloop = pytest.importorskip("uvloop")  # the dependency is only where uvloop has wheels


def test_the_reference_server_runs_on_uvloop(server: RunningServer) -> None:
    assert isinstance(server.loop, uvloop.Loop), type(server.loop)


def test_the_noop_servers_loop_is_the_reference_servers() -> None:
    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert run_loop(loop_type()) is uvloop.Loop  # server/noop.py serves through run_loop
