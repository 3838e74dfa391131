"""A PostgreSQL ledger's tables for `settlesim ledger copy` (server/ledger/copy.py): read in
one REPEATABLE READ snapshot through server-side cursors, written with COPY in one transaction
(its types are already the copy's: date, timestamptz, bytea)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from settlesim.server.ledger.copy import IN_FORCE, TABLES, Figures
from settlesim.server.ledger.postgres.store import PostgresLedger, redacted

_ORDER = {"settlements": "seq"}  # the order they were made


class PostgresTables:
    def __init__(self, db: psycopg.Connection[Any], name: str) -> None:
        self.db, self.name = db, name

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        order = f" ORDER BY {_ORDER[table]}" if table in _ORDER else ""
        with self.db.cursor(name=f"copy_{table}") as cursor:  # server-side: not all in memory at once
            cursor.execute(f"SELECT {', '.join(TABLES[table])} FROM {table}{order}")
            for row in cursor:
                yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)

    def write(self, table: str, rows: Iterator[tuple[Any, ...]]) -> None:
        copy_in = f"COPY {table} ({', '.join(TABLES[table])}) FROM STDIN"
        with self.db.cursor() as cursor, cursor.copy(copy_in) as copy:
            for row in rows:
                copy.write_row(row)

    def figures(self) -> Figures:
        rows = {t: self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        return Figures(rows, [tuple(r) for r in self.db.execute(IN_FORCE)])


@contextmanager
def source_tables(where: str) -> Iterator[PostgresTables]:
    with psycopg.connect(where, autocommit=True) as db:
        db.read_only, db.isolation_level = True, psycopg.IsolationLevel.REPEATABLE_READ
        with db.transaction():
            yield PostgresTables(db, redacted(where))


@contextmanager
def destination_tables(where: str) -> Iterator[PostgresTables]:
    """The database with the current schema (created if new), filled in one transaction that
    commits only when the body returns."""
    PostgresLedger(where).close()
    with psycopg.connect(where, autocommit=True) as db, db.transaction():
        yield PostgresTables(db, redacted(where))
