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


def test_cores_are_the_server_and_load_generators_cpu_over_the_run() -> None:
    # 8 s of run: the server used 6.0 s of CPU and the load generator 4.4 s, so together they
    # kept (6.0 + 4.4) / 8 = 1.30 cores busy; the machine's other 0.8 s are other processes'
    # ((11.2 - 6.0 - 4.4) / 8 = 0.10 cores), which `cores` leaves out.
    figures = bench.Figures("settle", 1000, 0, 8.0, [1.0], 6.0, load_cpu_seconds=4.4, machine_cpu_seconds=11.2)
    assert round(figures.cores, 2) == 1.30
    assert round(figures.other_cores, 2) == 0.10
    assert bench.Figures("settle", 0, 0, 0.0, [], 0.0).cores == 0.0  # an empty run divides by nothing
    assert figures.row().split()[6:9] == ["4400", "1.30", "0.10"]  # load us (4.4 s / 1000), cores, other
    assert bench.HEADER.split()[10:14] == ["load", "us", "cores", "other"]


def test_the_cpu_bound_is_the_faster_noops_cores_over_the_settles_cpu_a_call() -> None:
    # The aio noop answered 40,000 calls in 8 s (5,000/s) on 9.0 s of server CPU and 6.2 s of the
    # load generator's: (9.0 + 6.2) / 8 = 1.90 cores. The sync noop, slower (3,000/s), kept more
    # busy: (9.6 + 6.0) / 8 = 1.95. The settle answered 16,000 in 8 s (2,000/s) on 10.4 s of server
    # CPU and 2.8 s of load: 13.2 s / 16,000 = 825 us a call (650 + 175). At the faster noop's 1.90
    # cores that CPU allows 1.90 / 825e-6 = 2,303.03 settles/s: 2,303.03 / 5,000 = 0.46 of it,
    # while the settle made 2,000 / 5,000 = 0.40. The slower noop's 1.95 cores would say 2,363.64,
    # the server's CPU alone (650 us) 2,923.08, the settle's own cores (13.2 / 8 = 1.65) 2,000.
    aio = bench.Figures("noop aio", 40_000, 0, 8.0, [1.0], 9.0, load_cpu_seconds=6.2)
    sync = bench.Figures("noop sync", 24_000, 0, 8.0, [1.0], 9.6, load_cpu_seconds=6.0)
    settle = bench.Figures("settle", 16_000, 0, 8.0, [1.0], 10.4, load_cpu_seconds=2.8)
    result = bench.Round({"sync": sync, "aio": aio}, settle, settle)
    assert round(result.ratio, 2) == 0.40
    assert round(result.cpu_bound, 2) == 2303.03
    assert round(result.bound_ratio, 2) == 0.46
    assert bench._bound_line(result) == (
        "CPU bound: at the faster noop's 1.90 cores, the settle's 825 us of CPU a call "
        "(server 650 + load 175) allow 2303/s, 0.46 x the faster noop"
    )
    idle = bench.Round({"aio": aio}, bench.Figures("settle", 0, 0, 8.0, [], 0.0), settle)
    assert idle.cpu_bound != idle.cpu_bound  # no CPU measured: nan, not a division by zero
