"""A hospital that keeps as many calls going on one connection as the server allows (100 streams a
connection, docs/errors.md#server-limits) is answered, never refused. The client's transport holds
the calls past 100 until a stream frees; the server must count a connection's streams as HTTP/2
does, those the client has open. gRPC core's default ("overload protection") counts the streams it
has not yet freed, and refused calls at the cap whenever the loop had not freed finished ones yet:
UNAVAILABLE "RST_STREAM ... error code 7", thousands a second (the control below shows it)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world

CALLERS = 150  # calls at once over one connection: the cap's 100 and 50 the client's transport holds
SECONDS = 2.0

# The control: the aio noop's handlers behind this server's gRPC settings, but with gRPC core's
# default overload protection, in a process of its own; it prints its port.
_PROTECTED_NOOP = """
import asyncio
import grpc
from settlesim.server.app import server_options
from settlesim.server.noop import AioNoopService
from settlesim.server.service import add_to_server

async def main():
    options = [(k, 1 if k == "grpc.http.overload_protection" else v) for k, v in server_options()]
    server = grpc.aio.server(options=options)
    add_to_server(AioNoopService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def _load(target: str, world: Path) -> tuple[int, int, dict[str, int]]:
    requests = bench.Requests(Workload.load(world), 1)
    for _ in range(50):  # one caller until the server answers: it listens once it printed its port
        if asyncio.run(bench._closed_loop(target, requests, 1, 0.1, 1))[0]:
            break
    bench.FIRST_DETAILS.clear()  # what the load's first failed calls were told, not the wait's
    answered, errors, _, _, failed = asyncio.run(bench._closed_loop(target, requests, CALLERS, SECONDS, 1))
    return answered, errors, dict(failed)


def test_a_hospital_at_its_connections_stream_cap_is_never_refused(server_process, tmp_path: Path) -> None:
    generate_world(tmp_path / "world", 200, 1)
    server = server_process(None, "--world", str(tmp_path / "world"), "--log-level", "warning")
    answered, errors, failed = _load(server.target, tmp_path / "world")
    assert answered > 100 and errors == 0, failed


def test_the_same_load_is_refused_with_grpcs_overload_protection(tmp_path: Path) -> None:
    generate_world(tmp_path / "world", 200, 1)
    noop = subprocess.Popen([sys.executable, "-c", _PROTECTED_NOOP], stdout=subprocess.PIPE, text=True)
    try:
        assert noop.stdout is not None
        port = int(noop.stdout.readline())
        answered, _, failed = _load(f"127.0.0.1:{port}", tmp_path / "world")
    finally:
        noop.kill()
        noop.wait()
    assert answered > 100 and failed.get("UNAVAILABLE", 0) > 0, failed
    assert "RST_STREAM" in bench.FIRST_DETAILS["UNAVAILABLE"]
