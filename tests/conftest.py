"""Fixtures: a real reference server on a free port with a throw-away ledger,
and mock hospitals talking to it over real gRPC."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The throw-away PostgreSQL (tests/pg_server.py): `postgres_server` (the session's, with
# .restart()) and `postgres_dsn` (a new database per test).
from pg_server import postgres_dsn, postgres_server  # noqa: F401  (fixtures)
from settlesim.clients.hospital import Hospital
from settlesim.clients.rejections import Rejection, rejection_of
from settlesim.clients.secure import connect
from settlesim.server.app import RunningServer, ServerConfig, start

CANCER_HOSPITAL = "H11010500001"  # 中国医学科学院肿瘤医院
FUWAI = "H11010200002"  # 中国医学科学院阜外医院
SANYA_NAMED = "H46020000001"
SANYA_OTHER = "H46020000002"
SANYA_UNDESIGNATED = "H46020000003"
SANYA_UNCONNECTED = "H46020000004"
DATONG_HOME = "H14020000001"


def refused(call: Callable[[], object]) -> Rejection:
    """The refusal `call` must end in: its code, ErrorInfo reason and violations."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return rejection_of(caught.value)


def settlesim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The `settlesim` command line in a process of its own, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "settlesim", *args], capture_output=True, text=True, timeout=timeout
    )


def ledger_check(db: Path) -> subprocess.CompletedProcess[str]:
    """`settlesim ledger check --db DB`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "settlesim", "ledger", "check", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=8))
    yield running
    running.stop(grace=1)


@pytest.fixture
def hospital(server: RunningServer) -> Iterator[Callable[..., Hospital]]:
    opened: list[Hospital] = []

    def make(institution_code: str = CANCER_HOSPITAL, **kwargs: object) -> Hospital:
        his = Hospital.connect(server.target, institution_code, **kwargs)
        opened.append(his)
        return his

    yield make
    for his in opened:
        his.close()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start reference servers with the given settings (security, sessions, audit ...); the ledger
    is tmp_path/ledger.db unless `db_path` says otherwise."""
    started: list[RunningServer] = []

    def make(**settings: object) -> RunningServer:
        settings.setdefault("db_path", tmp_path / "ledger.db")
        running = start(ServerConfig(port=0, max_workers=4, **settings))  # type: ignore[arg-type]
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop(grace=1)


@pytest.fixture
def client() -> Iterator[Callable[..., Hospital]]:
    """Mock hospitals over plain gRPC or TLS, with a token or a certificate (clients/secure.py)."""
    opened: list[Hospital] = []

    def make(target: str, institution: str = CANCER_HOSPITAL, **kwargs: object) -> Hospital:
        his = connect(target, institution, **kwargs)
        opened.append(his)
        return his

    yield make
    for his in opened:
        his.close()


class ServerProcess:
    """`settlesim serve` in its own process, for restarts and crashes."""

    def __init__(
        self, db: Path, *extra: str, credentials: grpc.ChannelCredentials | None = None, log_dir: Path | None = None
    ) -> None:
        self.db, self.extra, self.credentials = db, extra, credentials  # credentials: a TLS server
        self.log_dir = log_dir  # the test's tmp_path (pytest keeps the last few); else the temp dir
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self, timeout: float = 30) -> ServerProcess:
        # The server's log goes to a file, so that a server that exits at start says why
        # in the test's failure (it once went to /dev/null). Not beside the ledger: `db`
        # may be a PostgreSQL DSN.
        descriptor, name = tempfile.mkstemp(prefix="settlesim-serve-", suffix=".log", dir=self.log_dir)
        self.stderr_path = Path(name)
        with os.fdopen(descriptor, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(self.db), *self.extra],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if match := re.search(r"serving on [\d.]+:(\d+)", line):
                self.port = int(match.group(1))
                break
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
        else:
            raise TimeoutError(f"server did not start:\n{self.log_tail()}")
        channel = (
            grpc.secure_channel(self.target, self.credentials)
            if self.credentials is not None
            else grpc.insecure_channel(self.target)
        )
        with channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(db: Path | None = None, *extra: str, credentials: grpc.ChannelCredentials | None = None) -> ServerProcess:
        process = ServerProcess(db or tmp_path / "ledger.db", *extra, credentials=credentials, log_dir=tmp_path).start()
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
