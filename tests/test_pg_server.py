"""The test suite's own PostgreSQL (tests/pg_server.py): it starts, gives each test a database
of its own, and comes back after a restart on the same port with the data kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pg_server
import psycopg
import pytest


def test_each_test_gets_an_empty_database_of_its_own(postgres_server, postgres_dsn) -> None:
    other = postgres_server.create_database()
    assert other != postgres_dsn
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute("CREATE TABLE here (n bigint)")
    with psycopg.connect(other) as db:
        assert db.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'here'").fetchone() == (0,)


def test_the_server_runs_durably_and_not_as_root(postgres_dsn) -> None:
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SHOW fsync").fetchone() == ("on",)
        assert db.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert db.execute("SELECT current_setting('server_version_num')::int >= 130000").fetchone() == (True,)


def test_a_restart_keeps_the_data_and_the_port(postgres_server, postgres_dsn) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute("CREATE TABLE kept (n bigint)")
        db.execute("INSERT INTO kept VALUES (7)")
    postgres_server.restart(down_seconds=0.2)
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT n FROM kept").fetchone() == (7,)


def test_the_server_stops_when_the_test_run_is_killed(tmp_path) -> None:
    """A run killed with SIGKILL cannot tear down: the kernel's parent-death signal stops the server."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import pg_server; "
        "s = pg_server.PostgresServer(pg_server.find_bin_dir()); "
        "print(s.proc.pid, s.data, flush=True); import time; time.sleep(600)"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", script, str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True
    )
    pid, data = run.stdout.readline().split()
    os.kill(int(pid), 0)  # the server runs
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"PostgreSQL {pid} outlived the killed run")
    assert Path(data).exists()  # left behind; the next server removes it (_remove_stale_dirs)
    pg_server._remove_stale_dirs()
    assert not Path(data).exists()


def test_missing_binaries_fail_and_say_what_to_install(monkeypatch, tmp_path) -> None:
    """Never a skip: without a server to start the PostgreSQL tests fail, naming the package."""
    monkeypatch.setattr(pg_server, "BIN_CANDIDATES", ())
    monkeypatch.setenv("SETTLESIM_PG_BIN", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config either
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        pg_server.find_bin_dir()
