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
UNNAMED = "from settlesim.clients import bench; bench.STOP_WITH_PARENT = 'SETTLESIM_UNUSED'"
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
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while being read
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_server_started_by_a_plain_popen_outlives_its_parent() -> None:
    server = _server_of_killed_parent(PLAIN_PARENT, NOOP)
    try:
        assert not _wait_gone(server, 3), "a server started by a plain Popen stopped with its parent"
    finally:
        _stop(server)


def _stop(pid: int) -> None:
    if _running(pid):
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)
