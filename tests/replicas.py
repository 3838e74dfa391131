"""Several `settlesim serve` replicas on one ledger, for the multi-replica tests:
each a real process on its own port, with its own console whose /metrics counts the
calls that replica answered (so a test sees where a round_robin client's calls went).

`STORES` are the ledgers the tests run on: a SQLite file shared by the replicas on
this host (as `serve --processes` shares one) and, once the PostgreSQL store is in,
a PostgreSQL database (tests/pg_server.py)."""

from __future__ import annotations

import base64
import re
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

STORES = ["sqlite", "postgresql"]


class Replica(ServerProcess):
    """`settlesim serve` on a free port with its console (and /metrics) on another;
    a server that demands identity gets the console only with a password
    (`console_token`, sent as HTTP Basic)."""

    console = ""

    def __init__(self, db: str, *extra: str, credentials=None, console_token: str = "") -> None:  # type: ignore[no-untyped-def]
        console = ["--console-port", "0"]
        self.console_token = console_token
        if console_token:
            token_file = Path(tempfile.mkdtemp(prefix="replica-console-")) / "token"
            token_file.write_text(console_token + "\n")
            console += ["--console-token-file", str(token_file)]
        super().__init__(db, *extra, *console, credentials=credentials)  # type: ignore[arg-type]

    def start(self, timeout: float = 30) -> Replica:
        super().start(timeout)
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed right after "serving on"
        match = re.search(r"console on (http://[\d.]+:\d+)", line)
        assert match, line
        self.console = match.group(1)
        return self

    def calls(self, rpc: str = "SettleVisit", code: str = "OK") -> int:
        """Calls of `rpc` this replica answered with `code`, as its /metrics counts them."""
        request = urllib.request.Request(f"{self.console}/metrics")
        if self.console_token:
            login = base64.b64encode(f"test:{self.console_token}".encode()).decode()
            request.add_header("Authorization", f"Basic {login}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
        return int(
            sum(
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "settlesim_calls"
                for sample in family.samples
                if sample.name == "settlesim_calls_total"
                and sample.labels.get("rpc") == rpc
                and sample.labels.get("code") == code
            )
        )

    def calls_reach(self, at_least: int, rpc: str = "SettleVisit", code: str = "OK", wait: float = 10) -> int:
        """The count once it reaches `at_least` (metrics are counted by the journal's
        writer thread, a moment after the answer), or the last count after `wait` s."""
        deadline = time.monotonic() + wait
        while (n := self.calls(rpc, code)) < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
        return n


def targets(*replicas: Replica) -> str:
    """The list a client takes to spread over the replicas (clients/channels.py)."""
    return ",".join(r.target for r in replicas)


@pytest.fixture(name="ledger_db", params=STORES)
def ledger_db_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One ledger for the replicas of a test: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    # A PostgreSQL ledger's call journal lives in the user data dir: here, the test's own.
    request.getfixturevalue("monkeypatch").setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return request.getfixturevalue("postgres_dsn")


@pytest.fixture(name="replicas")
def replicas_fixture(ledger_db: str) -> Iterator[Callable[..., list[Replica]]]:
    """Start `n` replicas on the test's ledger (extra `serve` arguments for all);
    they are killed at the end if a test has not stopped them."""
    started: list[Replica] = []

    def make(n: int = 2, *extra: str, credentials=None, console_token: str = "") -> list[Replica]:  # type: ignore[no-untyped-def]
        made = [
            Replica(ledger_db, *extra, credentials=credentials, console_token=console_token).start()
            for _ in range(n)
        ]
        started.extend(made)
        return made

    yield make
    for replica in started:
        if replica.proc and replica.proc.poll() is None:
            replica.proc.kill()
            replica.proc.wait()
