"""The bench says what its failed calls were told, not only how many failed: a count of
UNAVAILABLE alone does not tell gRPC's own load shedding from a server that went away.
A real closed loop of the bench against a real port where nothing listens."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from settlesim.clients import bench
from settlesim.clients.workload import Workload
from settlesim.server.world_generate import generate_world


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_calls_keep_what_the_first_of_each_status_said(tmp_path: Path) -> None:
    generate_world(tmp_path / "world", 5, 1)
    requests = bench.Requests(Workload.load(tmp_path / "world"), 1)
    bench.FIRST_DETAILS.clear()
    answered, errors, _, _, failed = asyncio.run(
        bench._closed_loop(f"127.0.0.1:{_free_port()}", requests, 2, 0.3, 1)
    )
    assert answered == 0 and errors > 0 and set(failed) == {"UNAVAILABLE"}
    details = bench.FIRST_DETAILS["UNAVAILABLE"]
    assert details  # gRPC's own words, e.g. "failed to connect to all addresses ..."
    figures = bench.Figures("settle", 0, errors, 0.3, [], 0.0, failed=failed, first_details={"UNAVAILABLE": details})
    assert figures.said() == [f"  (the first UNAVAILABLE said: {details!r})"]
    assert bench.Figures("settle", 10, 0, 1.0, [1.0], 0.0).said() == []
