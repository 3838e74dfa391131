"""A benchmark killed with SIGKILL leaves no server running (server/parent_death.py): the servers
`bench.running` starts stop when it exits; without the variable it names itself in, the same
server outlives its parent, as a server started by hand outlives its shell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from settlesim.server.parent_death import is_running

NOOP = [sys.executable, "-m", "settlesim.server.noop", "--port", "0", "--design", "aio"]


def _serve(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(tmp_path / "ledger.db"),
            "--no-console", "--log-level", "warning"]  # fmt: skip


# The parent: starts the server as the bench does, says its pid, waits.
BENCH_PARENT = """
import sys, time
from settlesim.clients import bench
started = bench.running(sys.argv[1:])  # kept: a collected context manager stops its server
print(started.__enter__().process.pid, flush=True)
time.sleep(600)
"""
UNNAMED = "from settlesim.clients import bench; bench.STOP_WITH_PARENT = 'SETTLESIM_UNUSED'"


def _server_of_killed_parent(parent_code: str, command: list[str]) -> int:
    """Start `command` under a parent running `parent_code`, SIGKILL the parent; the server's pid."""
    parent = subprocess.Popen([sys.executable, "-c", parent_code, *command], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        assert is_running(server)
    finally:
        parent.kill()
        parent.wait()
    return server


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("kind", ["serve", "noop", "noop --processes 2"])
def test_a_benchmarks_server_stops_when_the_benchmark_is_killed(kind: str, tmp_path: Path) -> None:
    command = {"serve": _serve(tmp_path), "noop": NOOP, "noop --processes 2": [*NOOP, "--processes", "2"]}[kind]
    server = _server_of_killed_parent(BENCH_PARENT, command)
    try:
        assert _wait_gone(server, 20), f"{kind} (pid {server}) still runs after its bench was killed"
    finally:
        _stop(server)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("kind", ["serve", "noop"])
def test_without_the_variable_the_same_server_outlives_its_killed_bench(kind: str, tmp_path: Path) -> None:
    # The control: the same bench parent, the variable under another name, so the test above sees
    # the variable's work, not a server that dies with any parent.
    command = _serve(tmp_path) if kind == "serve" else NOOP
    renamed = BENCH_PARENT.replace("from settlesim.clients import bench", UNNAMED)
    server = _server_of_killed_parent(renamed, command)
    try:
        assert not _wait_gone(server, 3), f"{kind} stopped with its parent without the variable"
    finally:
        _stop(server)


def _stop(pid: int) -> None:
    if is_running(pid):
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)
