"""`settlesim ledger copy --from A --to B`: a ledger moved between stores (SQLite file or
PostgreSQL database, either way) with its figures unchanged, and checked.

The source is only read (one snapshot) and must be sound (`ledger check`) and of the current
schema version; the destination must be new or empty. Every table is copied row by row in one
transaction (settlements in the order they were made), then both ends are checked and their
figures compared: rows per table, and per namespace, institution and visit year the count and
the sums of the settlements in force (what Reconcile answers). Any difference and nothing is
kept at the destination.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg

# The tables of schema version 6 and their columns, named alike in both stores. Settlements go
# in the order they were made (SQLite's rowid, PostgreSQL's seq): the order a check run reads.
TABLES: dict[str, tuple[str, ...]] = {
    "sessions": ("session", "institutions", "created_at"),
    "settlements": (
        "settlement_id", "session", "msgid", "institution_code", "person_no", "disease_code", "visit_date",
        "year", "status", "total", "fund_pays", "patient_pays", "deductible_applied", "undone_by_msgid",
        "created_at", "answer", "full_self_pay", "over_ceiling", "pre_self_pay", "in_scope", "ratio_bp",
    ),
    "settlement_items": (
        "settlement_id", "sequence_no", "catalog_code", "hospital_item_code", "unit_price", "quantity", "amount",
        "catalog_class", "self_pay_share_bp", "price_ceiling", "full_self_pay", "over_ceiling", "pre_self_pay",
        "in_scope",
    ),
    "yearly_totals": ("session", "person_no", "disease_code", "year", "deductible_used", "fund_paid"),
    "institution_totals": ("session", "institution_code", "year", "total"),
    "messages": ("session", "msgid", "kind", "institution_code", "request_hash", "settlement_id", "created_at"),
    "audit_anchors": ("audit_path", "records", "size", "head", "updated_at"),
    "national_visits": (
        "session", "institution_code", "mdtrt_id", "psn_no", "insutype", "begntime", "status", "med_type",
        "dise_codg", "settle_msgid", "created_at",
    ),
    "national_fee_lines": (
        "session", "institution_code", "mdtrt_id", "feedetl_sn", "chrg_bchno", "med_list_codg",
        "medins_list_codg", "pric", "cnt", "amount", "status", "created_at",
    ),
    "national_answers": (
        "session", "institution_code", "msgid", "infno", "request_hash", "output", "created_at",
    ),
}  # fmt: skip
_TIMES = {"created_at", "updated_at"}
_SQLITE_ORDER = {"settlements": "created_at, rowid"}
_PG_ORDER = {"settlements": "seq"}

# Per namespace, institution and visit year: settlements in force, their total, fund and patient.
_FIGURES = (
    "SELECT session, institution_code, year, COUNT(*), SUM(total), SUM(fund_pays), SUM(patient_pays) "
    "FROM settlements WHERE status = 'settled' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


class CopyError(Exception):
    """A copy that was not made (or not kept): one line saying why."""


@dataclass(frozen=True, slots=True)
class Figures:
    rows: dict[str, int]
    in_force: list[tuple[Any, ...]]  # (session, institution, year, count, total, fund, patient)


@dataclass(frozen=True, slots=True)
class CopyReport:
    source: str
    destination: str
    figures: Figures


# --- the two kinds of store, as tables of rows ------------------------------------------------


def _to_postgres(column: str, value: Any) -> Any:
    if value is not None and column in _TIMES:
        return datetime.fromisoformat(value)
    if value is not None and column == "visit_date":
        return date.fromisoformat(value)
    return value


def _to_sqlite(column: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, memoryview):
        return bytes(value)
    return value


class _Store:
    name: str

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        raise NotImplementedError

    def figures(self) -> Figures:
        raise NotImplementedError


class _SqliteStore(_Store):
    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self.db, self.name = db, name

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        order = f" ORDER BY {_SQLITE_ORDER[table]}" if table in _SQLITE_ORDER else ""
        columns = TABLES[table]
        yield from self.db.execute(f"SELECT {', '.join(columns)} FROM {table}{order}")

    def write(self, table: str, rows: Iterator[tuple[Any, ...]]) -> None:
        columns = TABLES[table]
        marks = ", ".join("?" for _ in columns)
        self.db.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            (tuple(_to_sqlite(c, v) for c, v in zip(columns, row, strict=True)) for row in rows),
        )

    def figures(self) -> Figures:
        rows = {t: self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        return Figures(rows, [tuple(r) for r in self.db.execute(_FIGURES)])


class _PostgresStore(_Store):
    def __init__(self, db: psycopg.Connection[Any], name: str) -> None:
        self.db, self.name = db, name

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        order = f" ORDER BY {_PG_ORDER[table]}" if table in _PG_ORDER else ""
        with self.db.cursor(name=f"copy_{table}") as cursor:  # server-side: not all in memory at once
            cursor.execute(f"SELECT {', '.join(TABLES[table])} FROM {table}{order}")
            yield from cursor

    def write(self, table: str, rows: Iterator[tuple[Any, ...]]) -> None:
        columns = TABLES[table]
        with (
            self.db.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(tuple(_to_postgres(c, v) for c, v in zip(columns, row, strict=True)))

    def figures(self) -> Figures:
        rows = {t: self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        in_force = [
            (s, i, y, n, int(total), int(fund), int(patient))
            for s, i, y, n, total, fund, patient in self.db.execute(_FIGURES)
        ]
        return Figures(rows, in_force)


# --- opening each end ---------------------------------------------------------------------------


def _is_postgres(where: str) -> bool:
    return where.startswith(("postgresql://", "postgres://"))


@contextmanager
def _source(where: str) -> Iterator[_Store]:
    """The source in one read-only snapshot."""
    if _is_postgres(where):
        from settlesim.server.ledger.postgres.store import redacted

        with psycopg.connect(where, autocommit=True) as db:
            db.read_only, db.isolation_level = True, psycopg.IsolationLevel.REPEATABLE_READ
            with db.transaction():
                yield _PostgresStore(db, redacted(where))
        return
    from settlesim.server.ledger.sqlite.files import open_read_only

    path = Path(where)
    if not path.is_file():
        raise CopyError(f"no ledger at {path}")
    with closing(open_read_only(path)) as db:
        db.execute("BEGIN")
        yield _SqliteStore(db, str(path))


@contextmanager
def _destination(where: str) -> Iterator[_Store]:
    """The destination, created with the current schema and empty, in one write transaction
    that commits only when the body returns."""
    if _is_postgres(where):
        from settlesim.server.ledger.postgres.store import PostgresLedger, redacted

        PostgresLedger(where).close()  # creates (or upgrades) the schema
        with psycopg.connect(where, autocommit=True) as db, db.transaction():
            store = _PostgresStore(db, redacted(where))
            _require_empty(store)
            yield store
        return
    from settlesim.server.ledger.sqlite import SqliteLedger

    path = Path(where)
    if path.exists():
        raise CopyError(f"{path} exists: copy into a new file (or an empty PostgreSQL database)")
    SqliteLedger(path).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        store = _SqliteStore(db, str(path))
        try:
            yield store
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")):
                leftover.unlink(missing_ok=True)
            raise
        db.execute("COMMIT")


def _require_empty(store: _Store) -> None:
    held = {table: n for table, n in store.figures().rows.items() if n}
    if held:
        listed = ", ".join(f"{n} {table}" for table, n in sorted(held.items()))
        raise CopyError(f"{store.name} is not empty ({listed}): copy into an empty database")


def copy_ledger(source: str, destination: str, check: Any) -> CopyReport:
    """Copy `source` to `destination`; `check(where)` returns a ledger's problems (the
    invariants of `settlesim ledger check`), run on both ends. Raises CopyError."""
    if problems := check(source):
        raise CopyError(
            f"{source} fails its check ({len(problems)} problem(s), first: {problems[0]}); nothing copied"
        )
    with _source(source) as src:
        before = src.figures()
        with _destination(destination) as dst:
            for table in TABLES:
                dst.write(table, src.rows(table))
            after = dst.figures()
            _require_equal(before, after, src.name, dst.name)
    if problems := check(destination):  # committed: say what is wrong with it
        raise CopyError(f"{destination} fails its check after the copy: {problems[0]}")
    return CopyReport(src.name, dst.name, after)


def _require_equal(before: Figures, after: Figures, source: str, destination: str) -> None:
    differences: Sequence[str] = [
        f"{table}: {before.rows[table]} rows at {source}, {after.rows.get(table)} at {destination}"
        for table in TABLES
        if before.rows[table] != after.rows.get(table)
    ]
    if not differences and before.in_force != after.in_force:
        differences = [f"the settlements in force sum differently at {source} and {destination}"]
    if differences:
        raise CopyError(f"the copy differs, nothing kept: {differences[0]}")
