"""The database's own figures for `settlesim bench` on a PostgreSQL ledger: commits
and rows written per second, from the deltas of PostgreSQL's cumulative statistics
(pg_stat_database for the ledger's database, pg_stat_user_tables for its tables).

PostgreSQL's backends flush their statistics at the end of a transaction at most
once a second, so a reading waits FLUSH_SECONDS first: a delta over a run then
holds the run's last second too (and the warm-up's last second, a little, on
the other end). The figures count every transaction on the database, the
benchmark's two readings included (a handful against thousands).

When the database runs on this machine its CPU is read too (the postmaster, found
as the parent of the reading's own backend, and all its processes): on a shared
machine it is part of what the benchmark's `other` column counts."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

FLUSH_SECONDS = 1.2


def is_postgres(db: str | None) -> bool:
    return bool(db) and str(db).startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class Snapshot:
    commits: int
    rollbacks: int
    inserted: int
    updated: int
    deleted: int
    at: float
    cpu_seconds: float | None = None  # the database server's processes, when they run here

    def rows(self) -> int:
        return self.inserted + self.updated + self.deleted


def snapshot(dsn: str) -> Snapshot:
    """The cumulative counters now (after FLUSH_SECONDS, see the module docstring)."""
    import psycopg  # the PostgreSQL store's dependency, only needed for a PostgreSQL ledger

    time.sleep(FLUSH_SECONDS)
    with psycopg.connect(dsn, autocommit=True) as db:
        commits, rollbacks = db.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()  # type: ignore[misc]
        inserted, updated, deleted = db.execute(
            "SELECT COALESCE(SUM(n_tup_ins), 0), COALESCE(SUM(n_tup_upd), 0), COALESCE(SUM(n_tup_del), 0) "
            "FROM pg_stat_user_tables"
        ).fetchone()  # type: ignore[misc]
        cpu = _server_cpu(db.info.backend_pid)
    return Snapshot(
        int(commits), int(rollbacks), int(inserted), int(updated), int(deleted), time.monotonic(), cpu
    )


def _server_cpu(backend_pid: int) -> float | None:
    """User + system CPU of the PostgreSQL server owning `backend_pid`, if it runs here."""
    try:
        postmaster = psutil.Process(backend_pid).parent()
        if postmaster is None or "postgres" not in postmaster.name():
            return None  # another machine's pid, or not PostgreSQL's
        # Backends that ended were reaped by the postmaster: theirs is in its children_* times.
        own = postmaster.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for process in postmaster.children(recursive=True):
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return None


def describe(before: Snapshot, after: Snapshot, seconds: float, requests: int) -> str:
    """One line: commits/s, rows/s (inserted, updated, deleted), per request; `seconds`
    is the measured run's length (not the time between readings, which adds the waits)."""
    commits = after.commits - before.commits
    rows = after.rows() - before.rows()
    per = f", {rows / requests:.1f} rows and {commits / requests:.2f} commits per answered settle" if requests else ""
    if before.cpu_seconds is not None and after.cpu_seconds is not None and requests:
        per += f"; its CPU {(after.cpu_seconds - before.cpu_seconds) / requests * 1e6:.0f} us per answered settle"
    return (
        f"  postgresql: {commits / seconds:.0f} commits/s, {(after.rollbacks - before.rollbacks) / seconds:.0f} "
        f"rollbacks/s, {rows / seconds:.0f} rows/s (inserted {(after.inserted - before.inserted) / seconds:.0f}, "
        f"updated {(after.updated - before.updated) / seconds:.0f}, deleted "
        f"{(after.deleted - before.deleted) / seconds:.0f}){per}"
    )
