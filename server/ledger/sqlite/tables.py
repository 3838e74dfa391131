"""A SQLite ledger's tables for `settlesim ledger copy` (server/ledger/copy.py): read in one
snapshot, or written into a new file in one transaction; dates and times converted between
the file's ISO text and the copy's `date` / UTC `datetime`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from settlesim.server.ledger.copy import DATE_COLUMNS, IN_FORCE, TABLES, TIME_COLUMNS, CopyError, Figures
from settlesim.server.ledger.sqlite.files import open_read_only
from settlesim.server.ledger.sqlite.store import SqliteLedger

_ORDER = {"settlements": "created_at, rowid"}  # the order they were made


def _neutral(column: str, value: Any) -> Any:
    if value is not None and column in TIME_COLUMNS:
        return datetime.fromisoformat(value)
    if value is not None and column in DATE_COLUMNS:
        return date.fromisoformat(value)
    return value


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    return value


class SqliteTables:
    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self.db, self.name = db, name

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        columns = TABLES[table]
        order = f" ORDER BY {_ORDER[table]}" if table in _ORDER else ""
        for row in self.db.execute(f"SELECT {', '.join(columns)} FROM {table}{order}"):
            yield tuple(_neutral(c, v) for c, v in zip(columns, row, strict=True))

    def write(self, table: str, rows: Iterator[tuple[Any, ...]]) -> None:
        columns = TABLES[table]
        self.db.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            (tuple(_text(v) for v in row) for row in rows),
        )

    def figures(self) -> Figures:
        rows = {t: self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        return Figures(rows, [tuple(r) for r in self.db.execute(IN_FORCE)])


@contextmanager
def source_tables(where: str) -> Iterator[SqliteTables]:
    path = Path(where)
    if not path.is_file():
        raise CopyError(f"no ledger at {path}")
    with closing(open_read_only(path)) as db:
        db.execute("BEGIN")  # one snapshot
        yield SqliteTables(db, str(path))


@contextmanager
def destination_tables(where: str) -> Iterator[SqliteTables]:
    """A new file with the current schema, filled in one transaction that commits only when the
    body returns; removed when it does not."""
    path = Path(where)
    if path.exists():
        raise CopyError(f"{path} exists: copy into a new file (or an empty PostgreSQL database)")
    SqliteLedger(path).close()
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTables(db, str(path))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
    except BaseException:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")):
            leftover.unlink(missing_ok=True)
        raise
