"""A benchmark killed with SIGKILL leaves no server running (server/parent_death.py): the servers
`bench.running` starts stop when it exits; one started without it outlives its parent, as a
server started by hand outlives its shell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

NOOP = [sys.executable, "-m", "settlesim.server.noop", "--port", "0", "--design", "aio"]


def _serve(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(tmp_path / "ledger.db"),
            "--no-console", "--log-level", "warning"]  # fmt: skip


# The parent: starts the server as the bench does (or with a plain Popen), says its pid, waits.
BENCH_PARENT = """
import sys, time
from settlesim.clients import bench
started = bench.running(sys.argv[1:])  # kept: a collected context manager stops its server
print(started.__enter__().process.pid, flush=True)
time.sleep(600)
"""
PLAIN_PARENT = """
import subprocess, sys, time
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
while "serving on" not in process.stdout.readline():
    pass
print(process.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's new parent may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _server_of_killed_parent(parent_code: str, command: list[str]) -> int:
    """Start `command` under a parent running `parent_code`, SIGKILL the parent; the server's pid."""
    parent = subprocess.Popen([sys.executable, "-c", parent_code, *command], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        assert _running(server)
    finally:
        parent.kill()
        parent.wait()
    return server


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("kind", ["serve", "noop"])
def test_a_benchmarks_server_stops_when_the_benchmark_is_killed(kind: str, tmp_path: Path) -> None:
    command = _serve(tmp_path) if kind == "serve" else NOOP
    server = _server_of_killed_parent(BENCH_PARENT, command)
    try:
        assert _wait_gone(server, 20), f"{kind} (pid {server}) still runs after its bench was killed"
    finally:
        if _running(server):
            os.kill(server, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_started_otherwise_outlives_its_parent(tmp_path: Path) -> None:
    # The control: without the bench's variable the same server keeps running, so the test above
    # sees the variable's work, not a server that dies with any parent.
    server = _server_of_killed_parent(PLAIN_PARENT, NOOP)
    try:
        assert not _wait_gone(server, 3), "a server started by a plain Popen stopped with its parent"
    finally:
        if _running(server):
            os.kill(server, signal.SIGTERM)
            _wait_gone(server, 10)
