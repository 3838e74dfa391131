"""The ledger's and the call journal's SQLite connections keep a statement's journal in memory
(`PRAGMA temp_store=MEMORY`): a statement that changes many rows inside a transaction (the
group commit's batch statements, the journal writer's batch INSERTs) spilled its statement
journal past 64 KiB into a temporary file that SQLite made, wrote and deleted each time, on the
event loop for the ledger (docs/performance.md, session 14). Real SQLite files; the temporary
files are seen as the process's open descriptors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from settlesim.server.journal import JOURNAL_CHECKPOINT_PAGES, Journal
from settlesim.server.ledger.sqlite.files import connect

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc to see open files"
)


def _temporary_files() -> list[str]:
    """SQLite's temporary files this process holds open (named etilqs_*, deleted at once)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if "etilqs_" in target:
            found.append(target)
    return found


def _a_large_statement_in_a_transaction(db: sqlite3.Connection) -> set[str]:
    """Run one INSERT of 4,000 rows of 200 bytes in a transaction that changed a row before it,
    and return the temporary files that opened meanwhile (not another test's). Rolled back."""
    before = set(_temporary_files())
    db.execute("CREATE TABLE IF NOT EXISTS spill (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
    db.executemany("INSERT INTO spill VALUES (?, ?)", ((f"{i:08d}", b"x" * 200) for i in range(4000)))
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT INTO spill VALUES ('first', x'00')")  # the statement below is not the first
        db.execute("INSERT INTO spill SELECT k || 'z', v FROM spill")
        return set(_temporary_files()) - before
    finally:
        db.execute("ROLLBACK")


def test_the_measurement_sees_a_statement_journal_spilled_to_a_file(tmp_path: Path) -> None:
    # The check below is only worth something if it can see a spill: with SQLite's default
    # (temp_store FILE), the same statement makes a temporary file.
    db = connect(tmp_path / "ledger.db")
    try:
        db.execute("PRAGMA temp_store=FILE")
        assert _a_large_statement_in_a_transaction(db) != set()
    finally:
        db.close()


def test_the_ledgers_connection_keeps_statement_journals_in_memory(tmp_path: Path) -> None:
    db = connect(tmp_path / "ledger.db")
    try:
        assert _a_large_statement_in_a_transaction(db) == set()
    finally:
        db.close()


def test_the_call_journals_connection_keeps_them_in_memory_and_checkpoints_often(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "settlesim.journal.db")
    try:
        db = journal._connect()  # a connection as the journal's writer has it
        try:
            assert _a_large_statement_in_a_transaction(db) == set()
            # Small checkpoints (SQLite's default size), not 40 MB ones that hold up the
            # ledger's COMMITs on the same disk: see JOURNAL_CHECKPOINT_PAGES.
            assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == JOURNAL_CHECKPOINT_PAGES == 1000
        finally:
            db.close()
    finally:
        journal.close()
