"""A throw-away PostgreSQL for the tests (fixtures `postgres_server`, `postgres_dsn`).

With `SETTLESIM_TEST_POSTGRES` set (a DSN of a server someone runs, e.g. CI's service
container), the tests use that server: each test that asks gets a database of its own there.
Otherwise the session starts one itself: `initdb` into a temporary directory, then `postgres`
on a free 127.0.0.1 port, fsync and synchronous_commit on, as the unprivileged `postgres` user
(the server refuses to run as root). It is a child of the test run started through
`setpriv --pdeathsig INT`: if the run is killed (even with SIGKILL) the kernel tells the server,
which shuts down fast; the next run removes the data directories such runs left.

Why not pytest-postgresql: it runs `pg_ctl` as the current user (root here, which PostgreSQL
refuses), has no user switch, and its `pg_ctl start` daemon outlives a killed run. Forty lines
of our own do the part we need and a restart in the middle of a test.

Binaries: $SETTLESIM_PG_BIN, else PostgreSQL 15's under /usr/lib/postgresql/15/bin (or another
version's there), else `pg_config --bindir`. Missing binaries fail the tests that need them with what to install
(scripts/test installs them with apt-get): the tests are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

# PostgreSQL 15's (the test machine's), then any other version Debian's packages put there.
BIN_CANDIDATES = (
    "/usr/lib/postgresql/15/bin",
    *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")), reverse=True),
)
USER = "postgres"
PREFIX = "settlesim-pg-"
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, postgres) are needed for the PostgreSQL ledger's tests: "
    "apt-get install postgresql (scripts/test does it when run as root), or set "
    "SETTLESIM_TEST_POSTGRES to the DSN of a server the tests may create databases on"
)


def find_bin_dir() -> Path:
    """The directory of initdb and postgres, or a failure that says what to install."""
    candidates = [os.environ.get("SETTLESIM_PG_BIN", ""), *BIN_CANDIDATES]
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(
                subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
            )
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "postgres").is_file():
            return Path(candidate)
    pytest.fail(INSTALL_HINT, pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_dirs() -> None:
    """Data directories of earlier runs that were killed: their maker (the pid in the name)
    is gone and so is their server (postmaster.pid)."""
    for stale in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        maker = stale.name.removeprefix(PREFIX).split("-")[0]
        if not maker.isdigit() or _alive(int(maker)):
            continue
        with contextlib.suppress(ValueError, OSError, IndexError):
            if _alive(int((stale / "data" / "postmaster.pid").read_text().split()[0])):
                continue
        shutil.rmtree(stale, ignore_errors=True)


class PostgresServer:
    """One PostgreSQL server the tests own: start, stop, restart (same port and data), databases."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        _remove_stale_dirs()
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_user = os.geteuid() == 0
        if self._as_user:  # the server refuses root: everything it touches belongs to `postgres`
            try:
                user = pwd.getpwnam(USER)
            except KeyError:
                why = f"as root the test PostgreSQL runs as user {USER!r}, which does not exist"
                pytest.fail(
                    f"{why}: apt-get install postgresql makes it (or run as another user)", pytrace=False
                )
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        self.start()

    def _command(self, *args: str, pdeathsig: bool = False) -> list[str]:
        if not self._as_user:
            return list(args)
        death = ["--pdeathsig", "INT"] if pdeathsig else []
        return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *death, "--", *args]

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            self._command(str(self.bin_dir / program), *args), capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(f"{program} failed ({done.returncode}): {done.stderr.strip()[-2000:]}", pytrace=False)

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30) -> None:
        """Start the server (fsync and synchronous_commit on, as a real platform runs it) and
        wait until it takes connections."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self._command(
                    str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                    "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=200",
                    "-c", "shared_buffers=32MB",
                    pdeathsig=True,
                ),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-2000:]
                    pytest.fail(f"PostgreSQL did not start (exit {self.proc.poll()}): {tail}", pytrace=False)
                time.sleep(0.05)

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server: `fast` (SIGINT: roll back open transactions, disconnect, checkpoint)
        or `immediate` (SIGQUIT: no checkpoint, crash recovery at the next start)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(
            {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}[mode]
        )
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, down_seconds: float = 0.0, mode: str = "fast") -> None:
        """Stop, stay down `down_seconds`, start again on the same port and data."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (from template0's copy template1); its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class ExternalPostgres:
    """A server someone else runs ($SETTLESIM_TEST_POSTGRES): databases only, never a restart."""

    def __init__(self, dsn: str) -> None:
        self.admin_dsn = dsn
        self._created: list[str] = []

    def dsn(self, database: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.admin_dsn)
        info["dbname"] = database
        return psycopg.conninfo.make_conninfo(**info)

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return self.dsn(name)

    def restart(self, down_seconds: float = 0.0, mode: str = "fast") -> None:
        pytest.fail("a test needs to restart PostgreSQL: unset SETTLESIM_TEST_POSTGRES so the tests run their own",
                    pytrace=False)  # fmt: skip

    def close(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as db:
            for name in self._created:
                db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | ExternalPostgres]:
    """The session's PostgreSQL (see the module docstring); `.restart()` for restarts mid-load."""
    external = os.environ.get("SETTLESIM_TEST_POSTGRES")
    server = ExternalPostgres(external) if external else PostgresServer(find_bin_dir())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer | ExternalPostgres) -> str:
    """The DSN of a new, empty database on the session's PostgreSQL, this test's alone."""
    return postgres_server.create_database()
