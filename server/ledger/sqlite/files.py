"""Opening a SQLite ledger file: the connection a store writes and reads with, the
start-up integrity check, and read-only connections (ledger check, audit verify)."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from settlesim.server.ledger.contract import LedgerFileError

log = logging.getLogger("settlesim.server")

# Start-up: SQLite's full integrity_check up to this file size (~150,000
# settlements, ~2 s), quick_check above (docs/ledger.md "Start-up check").
FULL_CHECK_BYTES = 256 << 20


def switch_to_wal(db: sqlite3.Connection, seconds: float = 30) -> None:
    """PRAGMA journal_mode=WAL. Processes switching a new file to WAL together: SQLite
    refuses all but one at once ("database is locked", no busy wait), so wait for the
    winner here. The ledger's file and the call journal's both need it."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    switch_to_wal(db)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=30000")
    # Statement journals in memory: a batch's statements of many rows (batch_rows.py) spilled
    # theirs past 64 KiB into a temp file made, written and deleted on the loop each time.
    db.execute("PRAGMA temp_store=MEMORY")
    # 64 MiB of pages in SQLite's own cache (the default is 2 MiB): the indexes a
    # settle touches stay in memory instead of being read again through pread.
    db.execute("PRAGMA cache_size=-65536")
    # A checkpoint copies the WAL's pages into the file: every 10,000 pages (40 MiB) rather
    # than SQLite's 1,000, so a page that every batch rewrites (an index's right edge, a
    # running total) is copied once where it was copied ten times. Measured: the commit
    # thread's CPU per settle 99-108 -> 77-88 us (docs/performance.md).
    db.execute("PRAGMA wal_autocheckpoint=10000")
    return db


def require_intact(db: sqlite3.Connection, path: Path, full_check_bytes: int = FULL_CHECK_BYTES) -> None:
    """SQLite's integrity check, at start-up: a damaged file is refused before
    anything is committed into it. PRAGMA integrity_check up to
    `full_check_bytes`, quick_check (no index-to-table cross-check, a few
    times faster) above; docs/ledger.md gives the times."""
    size = path.stat().st_size
    pragma = "integrity_check" if size <= full_check_bytes else "quick_check"
    started = time.monotonic()
    try:
        found = [line for (row,) in db.execute(f"PRAGMA {pragma}(20)") for line in row.splitlines()]
    except sqlite3.DatabaseError as error:  # too damaged for the check to finish
        found = [str(error)]
    found = [line for line in found if line != "ok" and not line.startswith("*** in database")]
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise LedgerFileError(
            f"{path} is damaged: SQLite's {pragma} says {found[0]!r}{more}; restore it from a backup "
            f"(settlesim ledger check --db {path} lists the damage)"
        )
    log.info("ledger %s: %s of %.0f MiB in %.1f s", path, pragma, size / 2**20, time.monotonic() - started)


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection. A WAL ledger with no -wal file beside it (no server
    has it open, none crashed) holds everything in the main file: open it
    immutable, so SQLite creates no -wal/-shm files either. Otherwise read beside
    the server (or recover a crashed one's WAL) as any reader does."""
    with path.open("rb") as f:
        header = f.read(100)
    wal_mode = header.startswith(b"SQLite format 3\x00") and len(header) > 18 and header[18] == 2
    idle = wal_mode and not Path(f"{path}-wal").exists()
    uri = f"file:{quote(str(path.absolute()))}?mode=ro" + ("&immutable=1" if idle else "")
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA query_only=1")
    return db

