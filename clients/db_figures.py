"""The database's own figures for `settlesim bench` on a PostgreSQL ledger: commits
and rows written per second, from the deltas of PostgreSQL's cumulative statistics
(pg_stat_database for the ledger's database, pg_stat_user_tables for its tables).

PostgreSQL's backends flush their statistics at the end of a transaction at most
once a second, so a reading waits FLUSH_SECONDS first: a delta over a run then
holds the run's last second too (and the warm-up's last second, a little, on
the other end). The figures count every transaction on the database, the
benchmark's two readings included (a handful against thousands)."""

from __future__ import annotations

import time
from dataclasses import dataclass

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
    return Snapshot(int(commits), int(rollbacks), int(inserted), int(updated), int(deleted), time.monotonic())


def describe(before: Snapshot, after: Snapshot, seconds: float, requests: int) -> str:
    """One line: commits/s, rows/s (inserted, updated, deleted), per request; `seconds`
    is the measured run's length (not the time between readings, which adds the waits)."""
    commits = after.commits - before.commits
    rows = after.rows() - before.rows()
    per = f", {rows / requests:.1f} rows and {commits / requests:.2f} commits per answered settle" if requests else ""
    return (
        f"  postgresql: {commits / seconds:.0f} commits/s, {(after.rollbacks - before.rollbacks) / seconds:.0f} "
        f"rollbacks/s, {rows / seconds:.0f} rows/s (inserted {(after.inserted - before.inserted) / seconds:.0f}, "
        f"updated {(after.updated - before.updated) / seconds:.0f}, deleted "
        f"{(after.deleted - before.deleted) / seconds:.0f}){per}"
    )
