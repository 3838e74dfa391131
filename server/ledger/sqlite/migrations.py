"""Upgrading an older SQLite ledger to SCHEMA_VERSION, in the caller's one write
transaction (a failure anywhere rolls all of it back)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from settlesim.server.ledger.contract import LedgerFileError
from settlesim.server.ledger.sqlite.rows import now
from settlesim.server.ledger.sqlite.schema import (
    COUNTER_COLUMNS,
    FIGURE_COLUMNS,
    FUND_COLUMNS,
    IN_LIST_CHECKS,
    INSTITUTION_TOTALS_FROM_SETTLEMENTS,
    MESSAGES,
    SCHEMA,
    SCHEMA_VERSION,
    SETTLEMENT_ITEMS,
    in_list_checks,
    statements,
    table_exists,
    user_version,
    without_rowid,
)


def upgrade(db: sqlite3.Connection, path: Path) -> int | None:
    """Inside a write transaction: create what is missing and bring the file to
    SCHEMA_VERSION; the version upgraded from, or None when another process already did."""
    version = user_version(db)
    if version == SCHEMA_VERSION:
        return None  # another process did it while this one waited
    if version > SCHEMA_VERSION:
        raise LedgerFileError(
            f"{path}: ledger schema version {version} is newer than this settlesim "
            f"knows ({SCHEMA_VERSION}); upgrade settlesim"
        )
    if version < 1 and table_exists(db, "messages"):
        _rekey_messages(db)
    if version < 2 and table_exists(db, "settlements"):
        for column in FIGURE_COLUMNS:  # NULL for the settlements made before
            db.execute(f"ALTER TABLE settlements ADD COLUMN {column} INTEGER")
    if version < 7:
        _add_fund_columns(db)
    if version < 9:  # rowid tables: a settle's rows append beside its batch's
        for table, layout in (("messages", MESSAGES), ("settlement_items", SETTLEMENT_ITEMS)):
            if without_rowid(db, table):
                _rebuild(db, table, layout)
    for statement in statements(SCHEMA):  # what is missing; CREATE ... IF NOT EXISTS
        db.execute(statement)
    if version < 4:  # the running totals of the settlements already there
        db.execute(INSTITUTION_TOTALS_FROM_SETTLEMENTS)
    if version < 5:
        _own_used_sessions(db)
    if version < 8:  # a settlement is found by its msgid through messages' key
        db.execute("DROP INDEX IF EXISTS settlements_by_msgid")
    if version < 10:  # CHECKs without IN lists (tables made above already have them)
        _checks_without_in_lists(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return version


def _add_fund_columns(db: sqlite3.Connection) -> None:
    """Version 6 -> 7: the settlements' fund columns (NULL: before the fund breakdown the pooled
    fund was every fund) and the yearly counters (0), where the tables lack them."""
    for table, columns, kind in (
        ("settlements", FUND_COLUMNS, "INTEGER"),
        ("yearly_totals", COUNTER_COLUMNS, "INTEGER NOT NULL DEFAULT 0"),
    ):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if have and column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _rekey_messages(db: sqlite3.Connection) -> None:
    """Version 0 -> 1: messages keyed by (session, institution_code, msgid)
    instead of (session, msgid). Called inside the upgrade's write transaction:
    a failure anywhere rolls all of it back. Every row is copied (the new key is
    the old one plus a column, so no two rows can collide); the counts are
    compared before the old table goes."""
    db.execute(MESSAGES.format(table="messages_rekeyed").replace(" IF NOT EXISTS", ""))
    db.execute(
        "INSERT INTO messages_rekeyed (session, msgid, kind, institution_code, request_hash, "
        "settlement_id, created_at) SELECT session, msgid, kind, institution_code, request_hash, "
        "settlement_id, created_at FROM messages"
    )
    (before,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
    (after,) = db.execute("SELECT COUNT(*) FROM messages_rekeyed").fetchone()
    if before != after:  # cannot happen; never drop a message if it somehow did
        raise LedgerFileError(f"re-keying messages copied {after} of {before} rows; nothing was changed")
    db.execute("DROP TABLE messages")
    db.execute("ALTER TABLE messages_rekeyed RENAME TO messages")


def _rebuild(db: sqlite3.Connection, table: str, layout: str) -> None:
    """Version 8 -> 9: `table` made again as `layout` says (a rowid table), every row copied
    in the order of its old key; the counts are compared before the old table goes. Inside
    the upgrade's write transaction: a failure anywhere rolls all of it back."""
    columns = ", ".join(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
    db.execute(layout.format(table=f"{table}_v9").replace(" IF NOT EXISTS", ""))
    db.execute(f"INSERT INTO {table}_v9 ({columns}) SELECT {columns} FROM {table}")
    (before,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    (after,) = db.execute(f"SELECT COUNT(*) FROM {table}_v9").fetchone()
    if before != after:  # cannot happen; never drop a row if it somehow did
        raise LedgerFileError(f"rebuilding {table} copied {after} of {before} rows; nothing was changed")
    db.execute(f"DROP TABLE {table}")
    db.execute(f"ALTER TABLE {table}_v9 RENAME TO {table}")


def _checks_without_in_lists(db: sqlite3.Connection) -> None:
    """Version 9 -> 10: messages' and settlements' CHECKs written as comparisons joined by OR
    (IN_LIST_CHECKS), the same constraint. SQLite keeps a table's CHECKs only in its CREATE
    statement in sqlite_master, and for a change that leaves every stored row as it is (a
    CHECK the rows already meet) its documented way is to edit that statement in place
    (writable_schema) and bump the schema cookie, which makes every connection read the
    schema again: no table is copied (settlements holds every answer: 1.7 GiB for a million).
    Inside the upgrade's write transaction: a failure rolls the edit back with the rest."""
    tables = in_list_checks(db)
    if not tables:
        return
    (cookie,) = db.execute("PRAGMA schema_version").fetchone()
    db.execute("PRAGMA writable_schema = ON")
    try:
        for table in tables:
            before, after = IN_LIST_CHECKS[table]
            db.execute(
                "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = ?",
                (before, after, table),
            )
        db.execute(f"PRAGMA schema_version = {cookie + 1}")
    finally:
        db.execute("PRAGMA writable_schema = RESET")
    if left := in_list_checks(db):  # cannot happen; never commit a schema half edited
        raise LedgerFileError(f"rewriting the CHECKs of {', '.join(left)} failed; nothing was changed")


def _own_used_sessions(db: sqlite3.Connection) -> None:
    """Version 4 -> 5: a session used before belongs to the institutions whose messages it holds."""
    groups: dict[str, list[str]] = {}
    for session, institution in db.execute(
        "SELECT DISTINCT session, institution_code FROM messages WHERE session != '' ORDER BY 1, 2"
    ):
        groups.setdefault(session, []).append(institution)
    db.executemany(
        "INSERT INTO sessions VALUES (?, ?, ?)", [(s, ",".join(g), now()) for s, g in groups.items()]
    )

