"""The Locust kit runs for real: `locust -f loadtests/locustfile.py` headless,
alone and distributed (one master, two workers), against a reference server on
127.0.0.1 with a small generated world, and reports requests with zero
validation failures. Bounded by --run-time and a process timeout; no speed is
asserted (the benchmark prints figures, tests do not time them)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.world_generate import generate_world

LOCUSTFILE = Path(__file__).resolve().parents[1] / "loadtests" / "locustfile.py"
LOCUST = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
TIMEOUT_S = 45


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("load") / "world"
    generate_world(out, 300, seed=3)
    return out


@pytest.fixture
def target(world: Path, tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, world_dir=world, db_path=tmp_path / "ledger.db", max_workers=8))
    yield running
    problems = running.ledger.check()
    running.stop(grace=1)
    assert problems == []  # whatever the load did, the ledger's invariants hold


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(prefix: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(type, name) -> (requests, failures) from Locust's --csv stats file."""
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        return {
            (row["Type"], row["Name"]): (int(row["Request Count"]), int(row["Failure Count"]))
            for row in csv.DictReader(f)
        }


def _assert_validated_load(prefix: Path) -> None:
    stats = _stats(prefix)
    requests, failures = stats[("", "Aggregated")]
    assert requests > 0
    assert failures == 0, Path(f"{prefix}_failures.csv").read_text()
    settled, wrong = stats[("validate", "settle validated")]
    assert settled > 0 and wrong == 0
    assert stats[("grpc", "SettleVisit")][0] > 0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_headless_run_validates_every_answer(target: RunningServer, world: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "single"
    html = tmp_path / "report.html"
    done = subprocess.run(
        [*LOCUST, "--host", target.target, "--world", str(world), "--headless", "-u", "8", "-r", "8",
         "-t", "3s", "--csv", str(prefix), "--html", str(html), "--only-summary"],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_validated_load(prefix)
    assert "settle validated" in html.read_text(encoding="utf-8")


def test_distributed_master_and_two_workers(target: RunningServer, world: Path, tmp_path: Path) -> None:
    port = _free_port()
    prefix = tmp_path / "distributed"
    master = subprocess.Popen(
        [*LOCUST, "--host", target.target, "--world", str(world),
         "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
         "--expect-workers", "2", "--expect-workers-max-wait", "30", "--headless", "-u", "8", "-r", "8",
         "-t", "4s", "--csv", str(prefix), "--only-summary"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            # No --host or --world: the master forwards them with each spawn.
            [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    try:
        _, err = master.communicate(timeout=TIMEOUT_S)
        for worker in workers:
            worker.wait(timeout=15)  # the master tells its workers to quit
    finally:
        for process in (master, *workers):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert master.returncode == 0, err[-3000:]
    assert "2 workers connected" in err  # both workers took part
    _assert_validated_load(prefix)


def test_headless_run_with_bearer_tokens(world: Path, tmp_path: Path) -> None:
    """Against `serve --auth token --sessions` the kit sends each institution's token from the
    world (and keeps its per-user sandboxes, which a token server offers only with --sessions)."""
    config = ServerConfig(
        port=0, world_dir=world, db_path=tmp_path / "ledger.db", max_workers=8, auth="token", allow_sessions=True
    )
    running = start(config)
    try:
        prefix = tmp_path / "token"
        done = subprocess.run(
            [*LOCUST, "--host", running.target, "--world", str(world), "--auth", "token", "--headless",
             "-u", "4", "-r", "4", "-t", "2s", "--csv", str(prefix), "--only-summary"],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        _assert_validated_load(prefix)
    finally:
        running.stop(grace=1)


NATIONAL_LOCUSTFILE = LOCUSTFILE.parent / "national_locustfile.py"


def test_the_national_user_validates_every_visit(world: Path, tmp_path: Path) -> None:
    """The national kit: HIS terminals posting 2201 … 2207 envelopes to the national door."""
    running = start(ServerConfig(port=0, world_dir=world, db_path=tmp_path / "ledger.db", national_port=0))
    try:
        prefix = tmp_path / "national"
        done = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(NATIONAL_LOCUSTFILE),
             "--host", f"http://127.0.0.1:{running.national_port}", "--world", str(world), "--headless",
             "-u", "4", "-r", "4", "-t", "3s", "--csv", str(prefix), "--only-summary"],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        stats = _stats(prefix)
        assert stats[("", "Aggregated")][1] == 0, Path(f"{prefix}_failures.csv").read_text()
        validated, wrong = stats[("validate", "visit validated")]
        assert validated > 0 and wrong == 0
        assert stats[("POST", "2207")][0] == validated  # every settled visit was validated
        problems = running.ledger.check()
    finally:
        running.stop(grace=1)
    assert problems == []
