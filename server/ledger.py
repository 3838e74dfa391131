"""The durable ledger: settlements, yearly running totals and message ids, in
SQLite (WAL, synchronous=FULL: an acknowledged settlement survives a crash).

The ledger knows no rules. `settle` runs the caller's pure `compute(totals)`
inside the write transaction, so reading this year's totals, settling and
updating the totals are one atomic step: concurrent settles for one person can
never both spend the last of a cap.

Every public call is keyed by a `session` ("" by default): a sandbox namespace
that replay runs use to keep their state apart (see docs/sessions.md). Within a
session, msgids are keyed by the institution that sent them: a msgid is a
sender's message id, so one institution can never block or take another's.

The file carries its schema version (PRAGMA user_version, SCHEMA_VERSION); a
server opening an older ledger upgrades it once, in one write transaction.
A ledger is created only where no file exists; an existing file that is empty,
damaged (SQLite's integrity check at start-up) or whose tables are not those
of its version is refused in one line (LedgerFileError).
`check_file` (`settlesim ledger check`) reads a ledger without changing it.

Storage failures while serving are classified in server/ledger_health.py:
refusals with a reason (LEDGER_UNAVAILABLE, LEDGER_DAMAGED), never a bare
sqlite3 error, and the ledger's write health follows them.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar
from urllib.parse import quote

from settlesim.server.group_commit import LoopGroupCommit
from settlesim.server.ledger_health import (
    LedgerUnavailable,
    WriteHealth,
    is_damage,
    is_storage_failure,
    storage_refusal,
)
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Reason, Refusal

__all__ = ["Ledger", "LedgerFileError", "LedgerUnavailable", "check_file"]

log = logging.getLogger("settlesim.server")

# PRAGMA user_version. 0: msgids keyed by (session, msgid), before versions;
# 1: keyed by (session, institution, msgid); 2: each settlement's figures and fee
# items as rows (a settlement from before 2 has NULL figures and no item rows);
# 3: the audit log's anchor (audit_anchors); 4: institution_totals, the running
# yearly total that bounds every Reconcile sum.
# 5: `sessions`, the institutions each sandbox belongs to (server/sandboxes.py).
# 6: the national door's visit flow (national_visits, national_fee_lines, national_answers).
SCHEMA_VERSION = 6

# Every msgid the platform has seen: settle, reverse, void, and 'blocked' for an
# original msgid voided before it ever settled. A msgid is its sender's message id
# (报文ID): each institution has its own namespace of them. The columns keep the
# order of version 0, only the key changed.
_MESSAGES = """
CREATE TABLE IF NOT EXISTS {table} (
    session          TEXT NOT NULL,
    msgid            TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('settle', 'reverse', 'void', 'blocked')),
    institution_code TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    settlement_id    TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, msgid)
) WITHOUT ROWID"""

# A settlement by its sender's msgid: (session, institution, msgid), all equalities.
_SETTLEMENTS_BY_MSGID = (
    "CREATE INDEX IF NOT EXISTS settlements_by_msgid ON settlements (session, msgid, institution_code)"
)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS settlements (
    settlement_id      TEXT PRIMARY KEY,
    session            TEXT NOT NULL,
    msgid              TEXT NOT NULL,
    institution_code   TEXT NOT NULL,
    person_no          TEXT NOT NULL,
    disease_code       TEXT NOT NULL,
    visit_date         TEXT NOT NULL,
    year               INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('settled', 'reversed', 'voided')),
    total              INTEGER NOT NULL,
    fund_pays          INTEGER NOT NULL,
    patient_pays       INTEGER NOT NULL,
    deductible_applied INTEGER NOT NULL,
    undone_by_msgid    TEXT NOT NULL DEFAULT '',
    created_at         TEXT NOT NULL,
    answer             BLOB NOT NULL,
    -- version 2 (ALTER TABLE appends them, so new files put them last too)
    full_self_pay      INTEGER,
    over_ceiling       INTEGER,
    pre_self_pay       INTEGER,
    in_scope           INTEGER,
    ratio_bp           INTEGER
);
CREATE INDEX IF NOT EXISTS settlements_by_institution
    ON settlements (session, institution_code, visit_date);
{_SETTLEMENTS_BY_MSGID};

CREATE TABLE IF NOT EXISTS yearly_totals (
    session         TEXT NOT NULL,
    person_no       TEXT NOT NULL,
    disease_code    TEXT NOT NULL,
    year            INTEGER NOT NULL,
    deductible_used INTEGER NOT NULL,
    fund_paid       INTEGER NOT NULL,
    PRIMARY KEY (session, person_no, disease_code, year)
) WITHOUT ROWID;
{_MESSAGES.format(table="messages")};

-- 费用明细 as settled (version 2): the fee line and the parts the rules gave it, fen.
CREATE TABLE IF NOT EXISTS settlement_items (
    settlement_id      TEXT NOT NULL,
    sequence_no        TEXT NOT NULL,
    catalog_code       TEXT NOT NULL,
    hospital_item_code TEXT NOT NULL,
    unit_price         INTEGER NOT NULL,
    quantity           INTEGER NOT NULL,
    amount             INTEGER NOT NULL,
    catalog_class      TEXT NOT NULL,
    self_pay_share_bp  INTEGER NOT NULL,
    price_ceiling      INTEGER,
    full_self_pay      INTEGER NOT NULL,
    over_ceiling       INTEGER NOT NULL,
    pre_self_pay       INTEGER NOT NULL,
    in_scope           INTEGER NOT NULL,
    PRIMARY KEY (settlement_id, sequence_no)
) WITHOUT ROWID;

-- The audit log's head as of the last commit (version 3, server/audit.py): records,
-- bytes and the digest of its last record. audit_path is the file's absolute path,
-- renamed '<path> retired <time>' when a new chain is started there (--audit-new-chain).
CREATE TABLE IF NOT EXISTS audit_anchors (
    audit_path TEXT PRIMARY KEY,
    records    INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    head       TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;

-- version 4: the total of an institution's settlements in force per visit year,
-- kept in the settle transaction and bounded (Ledger.MAX_INSTITUTION_YEAR_FEN) so that
-- no Reconcile sum can overflow.
CREATE TABLE IF NOT EXISTS institution_totals (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    year             INTEGER NOT NULL,
    total            INTEGER NOT NULL,
    PRIMARY KEY (session, institution_code, year)
) WITHOUT ROWID;

-- version 5: each x-settlesim-session sandbox and the institutions it belongs to (sorted codes,
-- comma-separated), recorded by its first write.
CREATE TABLE IF NOT EXISTS sessions (
    session      TEXT PRIMARY KEY,
    institutions TEXT NOT NULL,
    created_at   TEXT NOT NULL
) WITHOUT ROWID;

-- version 6: the national door's visit flow (server/national/visits.py). A 2201
-- visit (就诊, mdtrt_id) and what 2203 told of it: settle_msgid is the 2207 msgid of
-- its latest settlement (written in that settlement's transaction).
CREATE TABLE IF NOT EXISTS national_visits (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    mdtrt_id         TEXT NOT NULL,
    psn_no           TEXT NOT NULL,
    insutype         TEXT NOT NULL,
    begntime         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('registered', 'cancelled')),
    med_type         TEXT NOT NULL DEFAULT '',
    dise_codg        TEXT NOT NULL DEFAULT '',
    settle_msgid     TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, mdtrt_id)
) WITHOUT ROWID;
-- 2204 fee lines (费用明细) as uploaded, money in fen (2205 marks them cancelled).
CREATE TABLE IF NOT EXISTS national_fee_lines (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    mdtrt_id         TEXT NOT NULL,
    feedetl_sn       TEXT NOT NULL,
    chrg_bchno       TEXT NOT NULL,
    med_list_codg    TEXT NOT NULL,
    medins_list_codg TEXT NOT NULL,
    pric             INTEGER NOT NULL,
    cnt              INTEGER NOT NULL,
    amount           INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('uploaded', 'cancelled')),
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, mdtrt_id, feedetl_sn)
) WITHOUT ROWID;
-- The answer each national visit-flow msgid (2201-2205) got: a retry with the same
-- msgid and request gets it again (the money calls use messages, as gRPC does).
CREATE TABLE IF NOT EXISTS national_answers (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    msgid            TEXT NOT NULL,
    infno            TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    output           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, msgid)
) WITHOUT ROWID;
"""
_INSTITUTION_TOTALS_FROM_SETTLEMENTS = (
    "INSERT INTO institution_totals SELECT session, institution_code, year, SUM(total) FROM settlements "
    "WHERE status = 'settled' GROUP BY session, institution_code, year"
)
_FIGURE_COLUMNS = ("full_self_pay", "over_ceiling", "pre_self_pay", "in_scope", "ratio_bp")

# The columns `settlesim ledger check` needs before it calls a file a ledger.
_LEDGER_COLUMNS = {
    "settlements": {
        "settlement_id", "session", "msgid", "institution_code", "person_no", "disease_code",
        "visit_date", "year", "status", "total", "fund_pays", "patient_pays", "deductible_applied",
        "undone_by_msgid",
    },
    "yearly_totals": {"session", "person_no", "disease_code", "year", "deductible_used", "fund_paid"},
    "messages": {"session", "msgid", "kind", "institution_code", "request_hash", "settlement_id"},
}  # fmt: skip


class LedgerFileError(Exception):
    """A file that is not a settlesim ledger this version can use (empty, not a
    database, damaged, tables missing or not those of its version, or a schema
    newer than this code)."""


class StoredItem(NamedTuple):
    """费用明细 as settled: a fee line and the parts the rules gave it, fen. A
    tuple: its fields are the row of settlement_items after the settlement id."""

    sequence_no: str
    catalog_code: str
    hospital_item_code: str
    unit_price: int
    quantity: int
    amount: int
    catalog_class: str  # A, B, C or not_listed
    self_pay_share_bp: int
    price_ceiling: int | None
    full_self_pay: int
    over_ceiling: int
    pre_self_pay: int
    in_scope: int


@dataclass(frozen=True, slots=True)
class StoredSettlement:
    """A settlement as the ledger keeps it. `answer` is the caller's encoded
    answer (opaque bytes here), returned as-is to a retry. The figures and
    `items` are also rows, for operators' SQL and `ledger check`; reads do not
    load the items (the answer has them). Settlements made before schema
    version 2 have None figures and no item rows."""

    settlement_id: str
    session: str
    msgid: str
    institution_code: str
    person_no: str
    disease_code: str
    visit_date: date
    total: int
    fund_pays: int
    patient_pays: int
    deductible_applied: int
    answer: bytes = b""
    status: str = "settled"
    undone_by_msgid: str = ""
    full_self_pay: int | None = None
    over_ceiling: int | None = None
    pre_self_pay: int | None = None
    in_scope: int | None = None
    ratio_bp: int | None = None
    items: tuple[StoredItem, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditAnchor:
    """The head of an audit log's chain: how many records, how many bytes up to
    the end of the last one, and that record's digest (GENESIS when none)."""

    records: int
    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class ReconcileSums:
    count: int
    total: int
    fund_pays: int
    patient_pays: int
    entries: tuple[StoredSettlement, ...] = ()


@dataclass(frozen=True, slots=True)
class VoidOutcome:
    settlement: StoredSettlement | None  # None: nothing had settled; the msgid is now blocked
    replayed: bool


T = TypeVar("T")
# A check `ledger check` runs beside the ledger's own: problems found, one line each.
ExtraCheck = Callable[[sqlite3.Connection], list[str]]


class _Job(Generic[T]):
    """One write waiting for the group transaction, and its outcome."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], T]) -> None:
        self.work = work
        self.done = threading.Lock()  # held until the outcome is known: cheaper than an Event
        self.done.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _table_exists(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def _tables_version(db: sqlite3.Connection) -> int | None:
    """The schema version the ledger's tables are, whatever user_version says;
    None when none of them exists."""
    if not any(_table_exists(db, table) for table in _LEDGER_COLUMNS):
        return None
    if _table_exists(db, "national_visits"):
        return 6
    if _table_exists(db, "sessions"):
        return 5
    if _table_exists(db, "institution_totals"):
        return 4
    if _table_exists(db, "audit_anchors"):
        return 3
    columns = {row[1] for row in db.execute("PRAGMA table_info(settlements)")}
    if _table_exists(db, "settlement_items") or "full_self_pay" in columns:
        return 2
    key = {row[1] for row in db.execute("PRAGMA table_info(messages)") if row[5]}
    return 1 if "institution_code" in key else 0


_EMPTY = (
    "{path} is not a settlesim ledger: it is empty (0 bytes); if it held settlements, restore it "
    "from a backup; to start a new ledger, delete it"
)


def _require_intact(db: sqlite3.Connection, path: Path) -> None:
    """SQLite's integrity check, at start-up: a damaged file is refused before
    anything is committed into it. PRAGMA integrity_check up to
    Ledger.FULL_CHECK_BYTES, quick_check (no index-to-table cross-check, a few
    times faster) above; docs/ledger.md gives the times."""
    size = path.stat().st_size
    pragma = "integrity_check" if size <= Ledger.FULL_CHECK_BYTES else "quick_check"
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


def _statements(script: str) -> list[str]:
    """The statements of a script, to run one by one inside a transaction
    (sqlite3's executescript would COMMIT first)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _rekey_messages(db: sqlite3.Connection) -> None:
    """Version 0 -> 1: messages keyed by (session, institution_code, msgid)
    instead of (session, msgid). Called inside the upgrade's write transaction:
    a failure anywhere rolls all of it back. Every row is copied (the new key is
    the old one plus a column, so no two rows can collide); the counts are
    compared before the old table goes."""
    db.execute(_MESSAGES.format(table="messages_rekeyed").replace(" IF NOT EXISTS", ""))
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
    # (session, msgid): the upgrade makes it again with the institution
    db.execute("DROP INDEX IF EXISTS settlements_by_msgid")


def _own_used_sessions(db: sqlite3.Connection) -> None:
    """Version 4 -> 5: a session used before belongs to the institutions whose messages it holds."""
    groups: dict[str, list[str]] = {}
    for session, institution in db.execute(
        "SELECT DISTINCT session, institution_code FROM messages WHERE session != '' ORDER BY 1, 2"
    ):
        groups.setdefault(session, []).append(institution)
    db.executemany(
        "INSERT INTO sessions VALUES (?, ?, ?)", [(s, ",".join(g), _now()) for s, g in groups.items()]
    )


class Ledger:
    """One SQLite database, thread-safe, with group commit.

    Writes (settle, reverse, void) go to one writer thread. It takes every write
    waiting, runs each in its own SAVEPOINT inside one IMMEDIATE transaction
    (a refused or failing write rolls back to its savepoint and cannot spoil
    the others), COMMITs once with synchronous=FULL, and only then answers the
    callers: every acknowledged write is durable, and one fsync serves many.
    Reads use a second connection in a read transaction of their own (WAL lets
    them run beside the writer and see only committed data). Several processes
    may share the file: their writers take turns on an flock beside it (and
    SQLite's own locking would serialise them anyway)."""

    MAX_BATCH = 256  # writes per transaction: bounds the latency one batch adds
    # Reconcile entries per answer: ~100 bytes each keeps an answer far below the
    # 4 MiB send limit (docs/errors.md "Limits").
    MAX_RECONCILE_ENTRIES = 10_000
    # Sums the ledger keeps are bounded so that nothing it accepts can overflow
    # what it computes later (SQLite INTEGER and protobuf int64: 2^63-1 = 9.2e18).
    # A visit is at most validation.MAX_VISIT_TOTAL_FEN (1e10); a person's yearly
    # fund and deductible (one yearly_totals row) at most:
    MAX_PERSON_YEAR_FEN = 10**12  # 10,000,000,000 yuan
    # An institution's settlements in force in one visit year at most this; a
    # Reconcile spans at most the 111 years 1990..2100, so its sums are at most
    # 111 × 1e16 = 1.1e18 (fund and patient are each at most the total).
    MAX_INSTITUTION_YEAR_FEN = 10**16
    # Start-up: SQLite's full integrity_check up to this file size (~150,000
    # settlements, ~2 s), quick_check above (docs/ledger.md "Start-up check").
    FULL_CHECK_BYTES = 256 << 20
    WRITER_CHECK_SECONDS = 0.5  # a caller waiting this long checks that the writer thread lives

    def __init__(self, path: Path | str, *, integrity_check: bool = True) -> None:
        """Open the ledger at `path`, creating it only where no file exists. An
        existing file is refused (LedgerFileError) when it is empty, is not a
        settlesim ledger, its tables are not those of its user_version, or
        (`integrity_check`) SQLite finds it damaged (see `_require_intact`)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        # Writers in every process on this file queue on one advisory lock, which
        # the kernel hands over the moment it is released (no polling).
        self._writers_lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # The schema version this process upgraded the file from; None when it was current.
            self.upgraded_from: int | None = self._open(integrity_check)
        except BaseException as error:
            if self._db is not None:
                self._db.close()
            os.close(self._writers_lock)
            if isinstance(error, sqlite3.DatabaseError):  # "file is not a database" and the like
                raise LedgerFileError(f"{self.path} is not a settlesim ledger: {error}") from None
            raise
        self._health = WriteHealth(self._probe)
        # The writer waits for other processes' write locks itself (_begin): SQLite's
        # own busy handler sleeps 1, 2, 5 ... 100 ms, which wrecks latency when
        # several server processes share the file.
        self._db.execute("PRAGMA busy_timeout=0")
        self._read_lock = threading.Lock()
        self._reader = self._connect()
        self._reader.execute("PRAGMA query_only=1")
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Lock()
        self._writer_failure: BaseException | None = None
        # The audit log's (absolute path, head), committed with every write (_anchor_audit).
        self.audit_head: Callable[[], tuple[str, AuditAnchor]] | None = None
        # Told (writes, seconds) after each group commit: the metrics (server/metrics.py).
        self.on_commit: Callable[[int, float], None] | None = None
        self._loop_committer: LoopGroupCommit | None = None
        self._batch_now: str | None = None  # created_at of the batch being run (_stamp)
        self._writer = threading.Thread(target=self._write_batches, name="ledger-writer", daemon=True)
        self._writer.start()

    def _open(self, integrity_check: bool) -> int | None:
        """Connect, create or check, and upgrade; the version upgraded from."""
        with self._across_processes():  # one process creates a new file; the others find it made
            new = not self.path.exists()
            if not new and self.path.stat().st_size == 0:
                raise LedgerFileError(_EMPTY.format(path=self.path))
            if new:
                self._db = self._connect()
                return self._upgrade()
        # Looked at before anything changes it (not even the journal mode).
        with closing(sqlite3.connect(self.path, isolation_level=None, timeout=30)) as db:
            db.execute("PRAGMA query_only=1")
            db.execute("BEGIN")  # one snapshot, even beside other processes writing
            _require_ledger(db, self.path, _user_version(db))
            if integrity_check:
                _require_intact(db, self.path)
            db.execute("COMMIT")
        self._db = self._connect()
        return self._upgrade()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        # Processes switching a new file to WAL together: SQLite refuses all but one
        # at once ("database is locked", no busy wait), so wait for the winner here.
        deadline = time.monotonic() + 30
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        # 64 MiB of pages in SQLite's own cache (the default is 2 MiB): the indexes a
        # settle touches stay in memory instead of being read again through pread.
        db.execute("PRAGMA cache_size=-65536")
        return db

    # --- schema versions ---------------------------------------------------------------------

    def _upgrade(self) -> int | None:
        """Create a new ledger, or bring an older one to SCHEMA_VERSION, in one write
        transaction. Processes opening the file at once queue on the write lock and
        read the version again inside it: exactly one of them upgrades."""
        if _user_version(self._db) == SCHEMA_VERSION:
            return None  # the common case: no write lock taken
        with self._write() as db:
            version = _user_version(db)
            if version == SCHEMA_VERSION:
                return None  # another process did it while this one waited
            if version > SCHEMA_VERSION:
                raise LedgerFileError(
                    f"{self.path}: ledger schema version {version} is newer than this settlesim "
                    f"knows ({SCHEMA_VERSION}); upgrade settlesim"
                )
            if version < 1 and _table_exists(db, "messages"):
                _rekey_messages(db)
            if version < 2 and _table_exists(db, "settlements"):
                for column in _FIGURE_COLUMNS:  # NULL for the settlements made before
                    db.execute(f"ALTER TABLE settlements ADD COLUMN {column} INTEGER")
            for statement in _statements(SCHEMA):  # what is missing; CREATE ... IF NOT EXISTS
                db.execute(statement)
            if version < 4:  # the running totals of the settlements already there
                db.execute(_INSTITUTION_TOTALS_FROM_SETTLEMENTS)
            if version < 5:
                _own_used_sessions(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return version

    def close(self) -> None:
        """Finish the writes already queued, then close."""
        with self._closing:
            stop, self._closed = not self._closed, True
            if stop:
                self._queue.put(None)
        self._writer.join()
        self._health.close()
        if self._loop_committer is not None:  # its callers have been answered (the server drained)
            self._loop_committer.close()
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()
            if self._writers_lock >= 0:  # close() may be called twice
                os.close(self._writers_lock)
                self._writers_lock = -1

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on error."""
        with self._lock, self._across_processes():
            self._begin(self._db)
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _across_processes(self) -> Iterator[None]:
        fcntl.flock(self._writers_lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writers_lock, fcntl.LOCK_UN)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot of committed data. A storage
        failure leaves as a refusal (LEDGER_UNAVAILABLE, or LEDGER_DAMAGED, after
        which the ledger answers nothing more)."""
        with self._read_lock:
            self._refuse_if_damaged()
            try:
                self._reader.execute("BEGIN")
                try:
                    yield self._reader
                finally:
                    self._reader.execute("COMMIT")
            except sqlite3.Error as error:
                raise self._storage_failed(error) from error

    # --- storage health (server/ledger_health.py) -------------------------------------------

    def watch_health(self, listener: Callable[[bool], None]) -> None:
        """`listener(False)` when writes start failing for storage reasons,
        `listener(True)` once one commits again (the gRPC health service)."""
        self._health.listen(listener)

    def _storage_failed(self, error: BaseException) -> Refusal:
        """Classify a storage failure; the write health hears of it."""
        refusal = storage_refusal(error)
        if refusal.reason is Reason.LEDGER_DAMAGED or is_damage(error):
            log.error("ledger %s is damaged: %s", self.path, error)
        self._health.failed(refusal)
        return refusal

    def _refuse_if_damaged(self) -> None:
        if self._health.damage is not None:
            raise self._health.damage

    def _probe(self) -> None:
        """The smallest write transaction: rewrite the header's user_version (one
        page into the WAL, fsynced at COMMIT)."""
        with self._write() as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- group commit ---------------------------------------------------------------------

    def _group(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(db)` in the next group transaction; return once committed."""
        job = _Job(work)
        with self._closing:  # no write can slip in behind the writer's stop mark
            if self._closed:
                raise sqlite3.ProgrammingError("the ledger is closed")
            self._refuse_if_damaged()
            if not self._writer.is_alive():  # nobody would ever answer: fail now, not hang
                raise self._storage_failed(self._writer_gone())
            self._queue.put(job)
        # Released by the writer after COMMIT. The timeout only matters when no answer
        # comes for a while: then check that the writer still lives.
        if not job.done.acquire(timeout=self.WRITER_CHECK_SECONDS):
            self._wait_for_writer(job)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _stamp(self) -> str:
        """created_at of a row: the loop's group commit stamps a whole transaction at
        once (one clock reading and one format per batch instead of per row)."""
        return self._batch_now or _now()

    def _loop_commit(self) -> LoopGroupCommit:
        """The group commit of the running event loop (made on first use)."""
        committer = self._loop_committer
        if committer is None:
            with self._closing:
                if self._closed:
                    raise sqlite3.ProgrammingError("the ledger is closed")
                committer = self._loop_committer = LoopGroupCommit(self, asyncio.get_running_loop())
        return committer

    def _wait_for_writer(self, job: _Job[Any]) -> None:
        while not job.done.acquire(timeout=self.WRITER_CHECK_SECONDS):
            if not self._writer.is_alive():
                if job.done.acquire(blocking=False):  # answered just before it stopped
                    return
                # Whether this write committed is unknown: a retry with the same msgid
                # on a restarted server answers it.
                raise self._storage_failed(self._writer_gone())

    def _writer_gone(self) -> LedgerUnavailable:
        why = f": {self._writer_failure!r}" if self._writer_failure is not None else ""
        return LedgerUnavailable(f"the ledger writer has stopped{why}; no write can commit until a restart")

    def _write_batches(self) -> None:
        try:
            self._serve_batches()
        except BaseException as error:  # the thread dies; callers see _writer_gone()
            self._writer_failure = error
            raise

    def _serve_batches(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            try:
                self._commit(batch)
            except BaseException as error:  # e.g. the flock failed: fail the batch, keep serving
                failure = self._storage_failed(error) if is_storage_failure(error) else error
                for job in batch:
                    if not job.done.locked():
                        continue  # already answered
                    job.error = job.error or failure
                    job.done.release()

    def queue_depth(self) -> int:
        """Writes waiting for the writer thread or the loop's group commit (approximate)."""
        waiting = self._loop_committer.queue_depth if self._loop_committer is not None else 0
        return self._queue.qsize() + waiting

    def _commit(self, batch: list[_Job[Any]]) -> None:
        began = time.perf_counter()
        with self._lock, self._across_processes():
            db = self._db
            try:
                self._begin(db)
                for job in batch:
                    db.execute("SAVEPOINT job")
                    try:
                        job.result = job.work(db)
                    except BaseException as error:  # the caller gets it; the batch goes on
                        job.error = self._storage_failed(error) if is_storage_failure(error) else error
                        db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                self._anchor_audit(db)
                db.execute("COMMIT")
            except BaseException as error:  # nothing of this batch is durable: say so to everyone
                self._fail_batch(db, batch, error)
            else:
                self._health.committed()
        for job in batch:
            job.done.release()
        if self.on_commit is not None:
            self.on_commit(len(batch), time.perf_counter() - began)

    def _fail_batch(self, db: sqlite3.Connection, batch: list[_Job[Any]], error: BaseException) -> None:
        """A group transaction that did not commit: every job of it fails with the
        storage refusal (a job's own refusal stands: it had stored nothing either)."""
        failure = self._storage_failed(error) if is_storage_failure(error) else error
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:  # SQLite may have rolled back already; nothing was committed either way
            pass
        for job in batch:
            if job.error is None or is_storage_failure(job.error):
                job.error = failure

    @staticmethod
    def _begin(db: sqlite3.Connection, timeout: float = 30.0) -> None:
        """BEGIN IMMEDIATE, retrying every 0.1-2 ms while another process writes."""
        deadline, pause = time.monotonic() + timeout, 0.0001
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    # --- settle ---------------------------------------------------------------------------

    def settle(
        self,
        session: str,
        msgid: str,
        institution_code: str,
        request_hash: str,
        person_no: str,
        disease_code: str,
        year: int,
        compute: Callable[[YearlyTotals], tuple[StoredSettlement, YearlyTotals]],
        on_settled: Callable[[sqlite3.Connection, StoredSettlement], None] | None = None,
    ) -> tuple[StoredSettlement, bool]:
        """Commit a settlement once per msgid of the institution. Returns (settlement, replayed).
        `on_settled(db, stored)` writes what a door keeps with a new settlement, in its
        transaction (a Refusal there refuses the settlement)."""
        return self._group(
            self._settle_job(
                session, msgid, institution_code, request_hash, person_no, disease_code, year, compute, on_settled
            )
        )

    async def settle_async(
        self,
        session: str,
        msgid: str,
        institution_code: str,
        request_hash: str,
        person_no: str,
        disease_code: str,
        year: int,
        compute: Callable[[YearlyTotals], tuple[StoredSettlement, YearlyTotals]],
        on_settled: Callable[[sqlite3.Connection, StoredSettlement], None] | None = None,
    ) -> tuple[StoredSettlement, bool]:
        """`settle` for the server's event loop: the loop's group commit (server/group_commit.py)."""
        return await self._loop_commit().run(
            self._settle_job(
                session, msgid, institution_code, request_hash, person_no, disease_code, year, compute, on_settled
            )
        )

    def _settle_job(
        self,
        session: str,
        msgid: str,
        institution_code: str,
        request_hash: str,
        person_no: str,
        disease_code: str,
        year: int,
        compute: Callable[[YearlyTotals], tuple[StoredSettlement, YearlyTotals]],
        on_settled: Callable[[sqlite3.Connection, StoredSettlement], None] | None = None,
    ) -> Callable[[sqlite3.Connection], tuple[StoredSettlement, bool]]:
        def job(db: sqlite3.Connection) -> tuple[StoredSettlement, bool]:
            seen = db.execute(
                "SELECT kind, request_hash, settlement_id FROM messages "
                "WHERE session = ? AND institution_code = ? AND msgid = ?",
                (session, institution_code, msgid),
            ).fetchone()
            if seen is not None:
                kind, seen_hash, settlement_id = seen
                if kind == "blocked":
                    raise Refusal(
                        Reason.MSGID_VOIDED, f"msgid {msgid} was voided and cannot settle", msgid=msgid
                    )
                if kind == "settle" and seen_hash == request_hash:
                    return self._get(db, session, settlement_id), True
                raise Refusal(
                    Reason.MSGID_REUSED,
                    f"msgid {msgid} was already used for a different request",
                    msgid=msgid,
                )
            totals = self._totals(db, session, person_no, disease_code, year)
            stored, after = compute(totals)
            if stored.session != session:
                stored = replace(stored, session=session)
            self._add_to_institution_year(db, stored, year, after)  # refuses before anything is stored
            self._insert(db, stored, year, self._stamp())
            db.execute(
                "INSERT INTO messages VALUES (?, ?, 'settle', ?, ?, ?, ?)",
                (session, msgid, institution_code, request_hash, stored.settlement_id, self._stamp()),
            )
            self._put_totals(db, session, person_no, disease_code, year, after)
            if on_settled is not None:
                on_settled(db, stored)
            return stored, False

        return job

    # --- sandboxes (server/sandboxes.py) --------------------------------------------------------

    def session_group(self, session: str) -> frozenset[str] | None:
        """The institutions `session` belongs to, or None when nobody has written in it."""
        with self._read() as db:
            row = db.execute("SELECT institutions FROM sessions WHERE session = ?", (session,)).fetchone()
        return None if row is None else frozenset(row[0].split(","))

    def open_session(self, session: str, institutions: frozenset[str]) -> frozenset[str]:
        """Record `session` as `institutions`' unless someone opened it first; the group it has."""
        return self._group(self._open_session_job(session, institutions))

    async def open_session_async(self, session: str, institutions: frozenset[str]) -> frozenset[str]:
        """`open_session` for the server's event loop: the loop's group commit."""
        return await self._loop_commit().run(self._open_session_job(session, institutions))

    def _open_session_job(
        self, session: str, institutions: frozenset[str]
    ) -> Callable[[sqlite3.Connection], frozenset[str]]:
        def job(db: sqlite3.Connection) -> frozenset[str]:
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (session, ",".join(sorted(institutions)), self._stamp()),
            )
            (group,) = db.execute("SELECT institutions FROM sessions WHERE session = ?", (session,)).fetchone()
            return frozenset(group.split(","))

        return job

    def yearly_totals(self, session: str, person_no: str, disease_code: str, year: int) -> YearlyTotals:
        with self._read() as db:
            return self._totals(db, session, person_no, disease_code, year)

    # --- undo: reverse (2208) and void (2601) -----------------------------------------------

    def reverse(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> tuple[StoredSettlement, bool]:
        """Reverse a settlement by id and restore the yearly totals, once."""
        return self._group(self._reverse_job(session, msgid, institution_code, request_hash, settlement_id))

    async def reverse_async(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> tuple[StoredSettlement, bool]:
        return await self._loop_commit().run(
            self._reverse_job(session, msgid, institution_code, request_hash, settlement_id)
        )

    def _reverse_job(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> Callable[[sqlite3.Connection], tuple[StoredSettlement, bool]]:
        def job(db: sqlite3.Connection) -> tuple[StoredSettlement, bool]:
            replay = self._replay(db, session, msgid, "reverse", institution_code, request_hash)
            if replay is not None:
                return self._get(db, session, replay), True
            stored = self._owned(db, session, settlement_id, institution_code)
            undone = self._undo(db, stored, "reversed", msgid)
            db.execute(
                "INSERT INTO messages VALUES (?, ?, 'reverse', ?, ?, ?, ?)",
                (session, msgid, institution_code, request_hash, settlement_id, self._stamp()),
            )
            return undone, False

        return job

    def void(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> VoidOutcome:
        """Void whatever the institution's `original_msgid` did; if it never
        settled, block it (for this institution only)."""
        return self._group(self._void_job(session, msgid, institution_code, request_hash, original_msgid))

    async def void_async(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> VoidOutcome:
        return await self._loop_commit().run(
            self._void_job(session, msgid, institution_code, request_hash, original_msgid)
        )

    def _void_job(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> Callable[[sqlite3.Connection], VoidOutcome]:
        def job(db: sqlite3.Connection) -> VoidOutcome:
            replay = self._replay(db, session, msgid, "void", institution_code, request_hash)
            if replay is not None:
                return VoidOutcome(self._get(db, session, replay) if replay != "-" else None, True)
            original = db.execute(
                "SELECT kind, settlement_id FROM messages "
                "WHERE session = ? AND institution_code = ? AND msgid = ?",
                (session, institution_code, original_msgid),
            ).fetchone()
            voided: StoredSettlement | None = None
            if original is None:  # never sent by this institution (another's msgid is not its own)
                db.execute(
                    "INSERT INTO messages VALUES (?, ?, 'blocked', ?, '', '', ?)",
                    (session, original_msgid, institution_code, self._stamp()),
                )
            else:
                kind, settlement_id = original
                if kind == "settle":
                    voided = self._undo(db, self._get(db, session, settlement_id), "voided", msgid)
                elif kind != "blocked":
                    raise Refusal(
                        Reason.FIELD_INVALID,
                        f"msgid {original_msgid} is a {kind}; only settlements can be voided",
                        field="original_msgid",
                    )
            db.execute(
                "INSERT INTO messages VALUES (?, ?, 'void', ?, ?, ?, ?)",
                (
                    session,
                    msgid,
                    institution_code,
                    request_hash,
                    voided.settlement_id if voided else "-",
                    self._stamp(),
                ),
            )
            return VoidOutcome(voided, False)

        return job

    # --- a door's own state (server/national/visits.py) ---------------------------------------

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(db)` in the next group transaction (its own savepoint); return once committed."""
        return self._group(work)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on committed data."""
        with self._read() as db:
            yield db

    # --- reads --------------------------------------------------------------------------------

    def get(
        self, session: str, institution_code: str, settlement_id: str = "", msgid: str = ""
    ) -> StoredSettlement:
        with self._read() as db:
            if not settlement_id:
                row = db.execute(
                    "SELECT settlement_id FROM settlements "
                    "WHERE session = ? AND msgid = ? AND institution_code = ?",
                    (session, msgid, institution_code),
                ).fetchone()
                if row is None:
                    raise Refusal(
                        Reason.SETTLEMENT_NOT_FOUND, f"no settlement for msgid {msgid}", msgid=msgid
                    )
                settlement_id = row[0]
            return self._owned(db, session, settlement_id, institution_code)

    def find_message(self, session: str, institution_code: str, msgid: str) -> tuple[str, str, str] | None:
        """(kind, request_hash, settlement_id) of a msgid the institution sent
        (committed data), or None. kind is settle, reverse, void or blocked (a
        msgid voided before it settled); settlement_id is "" for blocked and "-"
        for a void that found nothing to undo."""
        with self._read() as db:
            row = db.execute(
                "SELECT kind, request_hash, settlement_id FROM messages "
                "WHERE session = ? AND institution_code = ? AND msgid = ?",
                (session, institution_code, msgid),
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def reconcile(
        self, session: str, institution_code: str, start: date, end: date, with_entries: bool
    ) -> ReconcileSums:
        """对账: settlements in force (not reversed or voided) by visit date."""
        with self._read() as db:
            where = (
                "FROM settlements WHERE session = ? AND institution_code = ? AND status = 'settled' "
                "AND visit_date BETWEEN ? AND ?"
            )
            args = (session, institution_code, start.isoformat(), end.isoformat())
            count, total, fund, patient = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(total), 0), COALESCE(SUM(fund_pays), 0), "
                f"COALESCE(SUM(patient_pays), 0) {where}",
                args,
            ).fetchone()
            entries: tuple[StoredSettlement, ...] = ()
            if with_entries and count > self.MAX_RECONCILE_ENTRIES:
                raise Refusal(
                    Reason.TOO_MANY_ENTRIES,
                    f"{count} settlements from {start} to {end}; entries are listed for at most "
                    f"{self.MAX_RECONCILE_ENTRIES}: ask for the sums alone or a shorter period",
                    count=str(count),
                )
            if with_entries:
                rows = db.execute(f"SELECT * {where} ORDER BY visit_date, created_at, settlement_id", args).fetchall()
                entries = tuple(self._row(r) for r in rows)
            return ReconcileSums(count, total, fund, patient, entries)

    def session_settlements(self, session: str) -> list[StoredSettlement]:
        """Every settlement of a session, in the order they were made: the end
        state a check run (docs/his-check.md) is graded on."""
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM settlements WHERE session = ? ORDER BY created_at, rowid", (session,)
            ).fetchall()
        return [self._row(r) for r in rows]

    # --- invariants ---------------------------------------------------------------------------

    def check(self, more_checks: Sequence[ExtraCheck] = ()) -> list[str]:
        """Problems with the ledger's invariants; empty when it is sound (see
        `_problems`). `settlesim ledger check` runs the same on a file, read-only:
        `check_file`."""
        with self._read() as db:
            return _problems(db, more_checks)

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            return _counts(db)

    # --- the audit log's anchor (server/audit.py) ---------------------------------------------

    def _anchor_audit(self, db: sqlite3.Connection) -> None:
        """Commit the audit log's head with this transaction: every audit record
        written before a write commits is anchored (docs/security.md)."""
        if self.audit_head is not None:
            path, head = self.audit_head()
            db.execute(
                "INSERT INTO audit_anchors VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "records = excluded.records, size = excluded.size, head = excluded.head, "
                "updated_at = excluded.updated_at",
                (path, head.records, head.size, head.digest, _now()),
            )

    def anchor_audit(self) -> None:
        """A write transaction with nothing but the audit log's anchor in it."""
        self._group(lambda db: None)

    def audit_anchor(self, audit_path: str) -> AuditAnchor | None:
        with self._read() as db:
            return _audit_anchors(db, audit_path).get(audit_path)

    def retire_audit_anchor(self, audit_path: str) -> None:
        """A new chain starts at `audit_path`: keep the old chain's anchor under
        '<path> retired <time>', where `audit verify --db` still finds it."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE audit_anchors SET audit_path = audit_path || ' retired ' || ? WHERE audit_path = ?",
                (_now(), audit_path),
            )

        self._group(job)

    # --- internals ----------------------------------------------------------------------------

    def _replay(
        self, db: sqlite3.Connection, session: str, msgid: str, kind: str, institution: str, request_hash: str
    ) -> str | None:
        """The settlement id a repeated identical call answered, or None if new."""
        seen = db.execute(
            "SELECT kind, request_hash, settlement_id FROM messages "
            "WHERE session = ? AND institution_code = ? AND msgid = ?",
            (session, institution, msgid),
        ).fetchone()
        if seen is None:
            return None
        if seen[0] == kind and seen[1] == request_hash:
            return seen[2]
        raise Refusal(
            Reason.MSGID_REUSED, f"msgid {msgid} was already used for a different request", msgid=msgid
        )

    def _owned(
        self, db: sqlite3.Connection, session: str, settlement_id: str, institution_code: str
    ) -> StoredSettlement:
        stored = self._get(db, session, settlement_id)
        if stored.institution_code != institution_code:
            raise Refusal(
                Reason.INSTITUTION_NOT_CALLER,
                f"settlement {settlement_id} belongs to another institution",
                settlement_id=settlement_id,
            )
        return stored

    def _undo(
        self, db: sqlite3.Connection, stored: StoredSettlement, status: str, by: str
    ) -> StoredSettlement:
        if stored.status != "settled":
            reason = Reason.ALREADY_REVERSED if stored.status == "reversed" else Reason.ALREADY_VOIDED
            raise Refusal(
                reason,
                f"settlement {stored.settlement_id} is already {stored.status}",
                settlement_id=stored.settlement_id,
            )
        db.execute(
            "UPDATE settlements SET status = ?, undone_by_msgid = ? WHERE settlement_id = ?",
            (status, by, stored.settlement_id),
        )
        db.execute(
            "UPDATE institution_totals SET total = total - ? WHERE session = ? AND institution_code = ? "
            "AND year = ?",
            (stored.total, stored.session, stored.institution_code, stored.visit_date.year),
        )
        db.execute(
            "UPDATE yearly_totals SET deductible_used = deductible_used - ?, fund_paid = fund_paid - ? "
            "WHERE session = ? AND person_no = ? AND disease_code = ? AND year = ?",
            (
                stored.deductible_applied,
                stored.fund_pays,
                stored.session,
                stored.person_no,
                stored.disease_code,
                stored.visit_date.year,
            ),
        )
        return replace(stored, status=status, undone_by_msgid=by)

    def _add_to_institution_year(
        self, db: sqlite3.Connection, stored: StoredSettlement, year: int, after: YearlyTotals
    ) -> None:
        """Refuse a settlement that would take the person's yearly totals or the
        institution's yearly total past its limit (LEDGER_LIMIT_EXCEEDED); else add
        it to the institution's yearly total."""
        if max(after.fund_paid, after.deductible_used) > self.MAX_PERSON_YEAR_FEN:
            raise Refusal(
                Reason.LEDGER_LIMIT_EXCEEDED,
                f"this settlement would take {stored.person_no}'s {year} fund for {stored.disease_code} "
                f"to {after.fund_paid} fen, over the platform's limit of {self.MAX_PERSON_YEAR_FEN} "
                "fen a person, disease and year; nothing was stored",
                limit="person_year_fund",
                person_no=stored.person_no,
            )
        row = db.execute(
            "SELECT total FROM institution_totals WHERE session = ? AND institution_code = ? AND year = ?",
            (stored.session, stored.institution_code, year),
        ).fetchone()
        total = (row[0] if row else 0) + stored.total
        if total > self.MAX_INSTITUTION_YEAR_FEN:
            raise Refusal(
                Reason.LEDGER_LIMIT_EXCEEDED,
                f"this settlement would take {stored.institution_code}'s settlements of {year} to "
                f"{total} fen, over the platform's limit of {self.MAX_INSTITUTION_YEAR_FEN} fen an "
                "institution and year; nothing was stored",
                limit="institution_year_total",
                institution_code=stored.institution_code,
            )
        db.execute(
            "INSERT INTO institution_totals VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET total = excluded.total",
            (stored.session, stored.institution_code, year, total),
        )

    @staticmethod
    def _totals(
        db: sqlite3.Connection, session: str, person_no: str, disease: str, year: int
    ) -> YearlyTotals:
        row = db.execute(
            "SELECT deductible_used, fund_paid FROM yearly_totals "
            "WHERE session = ? AND person_no = ? AND disease_code = ? AND year = ?",
            (session, person_no, disease, year),
        ).fetchone()
        return YearlyTotals(*row) if row else YearlyTotals()

    @staticmethod
    def _put_totals(
        db: sqlite3.Connection, session: str, person_no: str, disease: str, year: int, totals: YearlyTotals
    ) -> None:
        db.execute(
            "INSERT INTO yearly_totals VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "deductible_used = excluded.deductible_used, fund_paid = excluded.fund_paid",
            (session, person_no, disease, year, totals.deductible_used, totals.fund_paid),
        )

    @staticmethod
    def _insert(db: sqlite3.Connection, s: StoredSettlement, year: int, created_at: str) -> None:
        db.execute(
            "INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.settlement_id,
                s.session,
                s.msgid,
                s.institution_code,
                s.person_no,
                s.disease_code,
                s.visit_date.isoformat(),
                year,
                s.status,
                s.total,
                s.fund_pays,
                s.patient_pays,
                s.deductible_applied,
                s.undone_by_msgid,
                created_at,
                s.answer,
                s.full_self_pay,
                s.over_ceiling,
                s.pre_self_pay,
                s.in_scope,
                s.ratio_bp,
            ),
        )
        db.executemany(
            "INSERT INTO settlement_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.settlement_id, *item) for item in s.items],
        )

    def _get(self, db: sqlite3.Connection, session: str, settlement_id: str) -> StoredSettlement:
        row = db.execute(
            "SELECT * FROM settlements WHERE session = ? AND settlement_id = ?", (session, settlement_id)
        ).fetchone()
        if row is None:
            raise Refusal(
                Reason.SETTLEMENT_NOT_FOUND,
                f"no settlement {settlement_id}",
                settlement_id=settlement_id,
            )
        return self._row(row)

    @staticmethod
    def _row(row: tuple[Any, ...]) -> StoredSettlement:
        (
            sid,
            session,
            msgid,
            inst,
            person,
            disease,
            visit,
            _year,
            status,
            total,
            fund,
            patient,
            ded,
            by,
            _at,
            doc,
            full_self_pay,
            over_ceiling,
            pre_self_pay,
            in_scope,
            ratio_bp,
        ) = row
        return StoredSettlement(
            settlement_id=sid,
            session=session,
            msgid=msgid,
            institution_code=inst,
            person_no=person,
            disease_code=disease,
            visit_date=date.fromisoformat(visit),
            total=total,
            fund_pays=fund,
            patient_pays=patient,
            deductible_applied=ded,
            answer=doc,
            status=status,
            undone_by_msgid=by,
            full_self_pay=full_self_pay,
            over_ceiling=over_ceiling,
            pre_self_pay=pre_self_pay,
            in_scope=in_scope,
            ratio_bp=ratio_bp,
        )


def _item_problems(db: sqlite3.Connection) -> list[str]:
    """A settlement's figures are its items' parts added up: each item's parts
    make its amount, the amounts make the total, and the items' full self-pay,
    over-ceiling, pre-self-pay and in-scope parts make the settlement's. A
    settlement with figures (schema version 2 on) has item rows."""
    problems = [
        f"settlement {sid} item {seq}: parts {full} + {over} + {pre} + {scope} != amount {amount}"
        for sid, seq, amount, full, over, pre, scope in db.execute(
            "SELECT settlement_id, sequence_no, amount, full_self_pay, over_ceiling, pre_self_pay, in_scope "
            "FROM settlement_items WHERE full_self_pay + over_ceiling + pre_self_pay + in_scope != amount "
            "OR amount != unit_price * quantity OR min(full_self_pay, over_ceiling, pre_self_pay, in_scope) < 0"
        )
    ]
    sums = (
        "SELECT s.settlement_id, s.total, s.full_self_pay, s.over_ceiling, s.pre_self_pay, s.in_scope, "
        "COUNT(i.sequence_no), SUM(i.amount), SUM(i.full_self_pay), SUM(i.over_ceiling), "
        "SUM(i.pre_self_pay), SUM(i.in_scope) FROM settlements s LEFT JOIN settlement_items i "
        "ON i.settlement_id = s.settlement_id WHERE s.full_self_pay IS NOT NULL GROUP BY s.settlement_id"
    )
    for sid, total, full, over, pre, scope, count, *items in db.execute(sums):
        if count == 0:
            problems.append(f"settlement {sid} has figures but no item rows")
        elif tuple(items) != (total, full, over, pre, scope):
            problems.append(
                f"settlement {sid}: total/full/over/pre/in-scope {(total, full, over, pre, scope)} "
                f"but its items sum to {tuple(items)}"
            )
    problems += [
        f"item rows of settlement {sid}, which does not exist"
        for (sid,) in db.execute(
            "SELECT DISTINCT i.settlement_id FROM settlement_items i LEFT JOIN settlements s "
            "ON s.settlement_id = i.settlement_id WHERE s.settlement_id IS NULL"
        )
    ]
    return problems


# --- checking a ledger (settlesim ledger check) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    """Settlements of one namespace, or of several (the sandboxes added up): counts by status and
    the money of those in force (fen)."""

    sessions: int = 0  # how many sandboxes these figures add up (0: the real ledger)
    counts: dict[str, int] = field(default_factory=dict)
    in_force: int = 0
    total: int = 0
    fund_pays: int = 0
    patient_pays: int = 0

    def plus(self, other: Figures) -> Figures:
        counts = dict(self.counts)
        for status, n in other.counts.items():
            counts[status] = counts.get(status, 0) + n
        return Figures(
            self.sessions + max(other.sessions, 1), counts, self.in_force + other.in_force,
            self.total + other.total, self.fund_pays + other.fund_pays, self.patient_pays + other.patient_pays,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class CheckReport:
    problems: list[str]
    counts: dict[str, int]  # settlements by status, every namespace
    schema_version: int
    # The real ledger (namespace "") and each sandbox apart; a session's owners (version 5 on).
    namespaces: dict[str, Figures] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    @property
    def real(self) -> Figures:
        return self.namespaces.get("", Figures())

    @property
    def sandboxes(self) -> Figures:
        total = Figures()
        for session, figures in self.namespaces.items():
            if session:
                total = total.plus(figures)
        return total


def check_file(path: Path | str, more_checks: Sequence[ExtraCheck] = ()) -> CheckReport:
    """Check the ledger in `path` without changing it: opened read-only (no
    schema, no journal mode switch, no lock file). Raises LedgerFileError, in one
    line, when the file is not a settlesim ledger this code can read (the same
    line a server gives). `more_checks` are checks this module cannot make
    itself, such as decoding the stored answers (server/stored_answers.py)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise LedgerFileError(_EMPTY.format(path=path))
    try:
        db = _open_read_only(path)
    except sqlite3.Error as error:
        raise LedgerFileError(f"{path}: cannot open read-only: {error}") from None
    try:
        try:
            db.execute("BEGIN")  # one snapshot for every query, even beside a running server
            version = _user_version(db)
            _require_ledger(db, path, version)
        except sqlite3.DatabaseError as error:  # "file is not a database" and the like
            raise LedgerFileError(f"{path} is not a settlesim ledger: {error}") from None
        problems = _problems(db, more_checks)
        try:
            counts, namespaces, owners = _counts(db), _namespaces(db), _owners(db)
        except sqlite3.DatabaseError:
            counts, namespaces, owners = {}, {}, {}  # already among the problems
        return CheckReport(problems, counts, version, namespaces, owners)
    finally:
        db.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
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


def _require_ledger(db: sqlite3.Connection, path: Path, version: int) -> None:
    """A settlesim ledger whose tables are those of its user_version (a server
    and `ledger check` refuse anything else with the same line)."""
    if version > SCHEMA_VERSION:
        present = _tables_version(db)
        hint = (
            f" (its tables are those of version {present}: if no newer settlesim wrote it, "
            "its header is damaged)"
            if present is not None
            else ""
        )
        raise LedgerFileError(
            f"{path}: its header says schema user_version {version}, newer than this settlesim "
            f"knows ({SCHEMA_VERSION}); upgrade settlesim{hint}"
        )
    for table, columns in _LEDGER_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise LedgerFileError(f"{path} is not a settlesim ledger: it has no table {table}")
        if missing := columns - have:
            raise LedgerFileError(
                f"{path} is not a settlesim ledger: table {table} has no column {', '.join(sorted(missing))}"
            )
    present = _tables_version(db)
    if present != version:
        raise LedgerFileError(
            f"{path}: its header says schema user_version {version} but its tables are those of "
            f"version {present}: the header was changed or damaged; restore the file from a backup "
            f"(or, if you know its tables are sound, set PRAGMA user_version = {present})"
        )


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT status, COUNT(*) FROM settlements GROUP BY status").fetchall())


def _namespaces(db: sqlite3.Connection) -> dict[str, Figures]:
    """Figures per namespace: the real ledger ("", always there) and every sandbox that holds
    anything (a settlement, a message or an owner)."""
    rows: dict[str, list[tuple[str, int, int, int, int]]] = {"": []}
    used = "SELECT session FROM messages"
    if _table_exists(db, "sessions"):
        used += " UNION SELECT session FROM sessions"
    for (session,) in db.execute(used):
        rows.setdefault(session, [])
    for session, status, n, total, fund, patient in db.execute(
        "SELECT session, status, COUNT(*), SUM(total), SUM(fund_pays), SUM(patient_pays) "
        "FROM settlements GROUP BY 1, 2"
    ):
        rows.setdefault(session, []).append((status, n, total, fund, patient))
    figures = {}
    for session, statuses in rows.items():
        in_force = [r for r in statuses if r[0] == "settled"] or [("settled", 0, 0, 0, 0)]
        _, n, total, fund, patient = in_force[0]
        counts = {status: count for status, count, *_ in statuses}
        figures[session] = Figures(1 if session else 0, counts, n, total, fund, patient)
    return figures


def _owners(db: sqlite3.Connection) -> dict[str, str]:
    if not _table_exists(db, "sessions"):
        return {}
    return dict(db.execute("SELECT session, institutions FROM sessions").fetchall())


def _problems(db: sqlite3.Connection, more_checks: Sequence[ExtraCheck] = ()) -> list[str]:
    """SQLite's own quick_check, then the ledger's invariants. A file SQLite finds
    damaged may fail the invariant queries themselves: that is one more problem."""
    try:
        problems = [
            f"sqlite quick_check: {line}"
            for (answer,) in db.execute("PRAGMA quick_check").fetchall()
            for line in answer.splitlines()
            if line != "ok" and not line.startswith("*** in database")
        ]
    except sqlite3.DatabaseError as error:  # too damaged for quick_check to finish
        problems = [f"sqlite quick_check: {error}"]
    try:
        problems += _totals_problems(db) + _message_problems(db) + _money_problems(db)
        if _table_exists(db, "sessions"):  # schema version 5 on
            problems += _session_problems(db)
        if _table_exists(db, "settlement_items"):  # schema version 2 on
            problems += _item_problems(db)
        if _table_exists(db, "institution_totals"):  # schema version 4 on
            problems += _institution_totals_problems(db)
        if _table_exists(db, "national_visits"):  # schema version 6 on
            problems += _national_visit_problems(db)
        for check in more_checks:
            problems += check(db)
    except sqlite3.DatabaseError as error:
        problems.append(f"the invariants could not be read: {error}")
    return problems


def _totals_problems(db: sqlite3.Connection) -> list[str]:
    """Yearly totals equal the sum of the settlements in force, and are never negative."""
    problems = []
    expected = {
        (s, p, d, y): (ded, fund)
        for s, p, d, y, ded, fund in db.execute(
            "SELECT session, person_no, disease_code, year, SUM(deductible_applied), SUM(fund_pays) "
            "FROM settlements WHERE status = 'settled' GROUP BY 1, 2, 3, 4"
        )
    }
    actual = {
        (s, p, d, y): (ded, fund)
        for s, p, d, y, ded, fund in db.execute(
            "SELECT session, person_no, disease_code, year, deductible_used, fund_paid FROM yearly_totals"
        )
    }
    for key in sorted(set(expected) | set(actual)):
        want, have = expected.get(key, (0, 0)), actual.get(key, (0, 0))
        if want != have:
            problems.append(
                f"yearly totals {key}: deductible/fund {have} but settlements in force sum to {want}"
            )
        if have[0] < 0 or have[1] < 0:
            problems.append(f"yearly totals {key}: deductible/fund {have} is negative")
    return problems


def _institution_totals_problems(db: sqlite3.Connection) -> list[str]:
    """(version 4) Each institution's yearly total equals the sum of its settlements
    in force and lies within 0..Ledger.MAX_INSTITUTION_YEAR_FEN."""
    expected = dict(
        ((s, i, y), total)
        for s, i, y, total in db.execute(
            "SELECT session, institution_code, year, SUM(total) FROM settlements "
            "WHERE status = 'settled' GROUP BY 1, 2, 3"
        )
    )
    actual = dict(
        ((s, i, y), total)
        for s, i, y, total in db.execute("SELECT session, institution_code, year, total FROM institution_totals")
    )
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want, have = expected.get(key, 0), actual.get(key, 0)
        if want != have:
            problems.append(f"institution totals {key}: total {have} but settlements in force sum to {want}")
        if not 0 <= have <= Ledger.MAX_INSTITUTION_YEAR_FEN:
            problems.append(f"institution totals {key}: total {have} outside 0..{Ledger.MAX_INSTITUTION_YEAR_FEN}")
    return problems


def _national_visit_problems(db: sqlite3.Connection) -> list[str]:
    """(version 6) The national visit flow: every fee line belongs to a visit, every
    linked visit's 2207 msgid is a settlement of that visit's person and institution,
    and no two visits hold the same settlement."""
    problems = [
        f"national fee line {sn} of visit {mdtrt_id} ({session!r}, {institution}): no such visit"
        for session, institution, mdtrt_id, sn in db.execute(
            "SELECT f.session, f.institution_code, f.mdtrt_id, f.feedetl_sn FROM national_fee_lines f "
            "LEFT JOIN national_visits v USING (session, institution_code, mdtrt_id) WHERE v.mdtrt_id IS NULL"
        )
    ]
    problems += [
        f"national visit {mdtrt_id} ({session!r}, {institution}): its settlement msgid {msgid} is "
        + ("not a settlement" if person is None else f"person {person}'s, the visit is {psn_no}'s")
        for session, institution, mdtrt_id, msgid, psn_no, person in db.execute(
            "SELECT v.session, v.institution_code, v.mdtrt_id, v.settle_msgid, v.psn_no, s.person_no "
            "FROM national_visits v LEFT JOIN settlements s ON s.session = v.session "
            "AND s.institution_code = v.institution_code AND s.msgid = v.settle_msgid "
            "WHERE v.settle_msgid != '' AND (s.person_no IS NULL OR s.person_no != v.psn_no)"
        )
    ]
    problems += [
        f"national settlement msgid {msgid} ({session!r}, {institution}) is linked to {count} visits"
        for session, institution, msgid, count in db.execute(
            "SELECT session, institution_code, settle_msgid, COUNT(*) FROM national_visits "
            "WHERE settle_msgid != '' GROUP BY 1, 2, 3 HAVING COUNT(*) > 1"
        )
    ]
    return problems


def _message_problems(db: sqlite3.Connection) -> list[str]:
    """Settlements and messages agree, each msgid in its sender's namespace: one
    settlement per (institution, settle msgid), every settlement has its settle
    message, every acknowledged settle still has its own settlement, every undone
    settlement names the reversal or void that undid it, and every reversal or
    void undid the settlement it names."""
    problems = [
        f"msgid {msgid} of {institution} has {count} settlements"
        for institution, msgid, count in db.execute(
            "SELECT institution_code, msgid, COUNT(*) FROM settlements "
            "GROUP BY session, institution_code, msgid HAVING COUNT(*) > 1"
        )
    ]
    problems += [
        f"settlement {settlement_id} has no settle message {msgid!r} from {institution}"
        for settlement_id, msgid, institution in db.execute(
            "SELECT s.settlement_id, s.msgid, s.institution_code FROM settlements s LEFT JOIN messages m "
            "ON m.session = s.session AND m.institution_code = s.institution_code AND m.msgid = s.msgid "
            "AND m.kind = 'settle' AND m.settlement_id = s.settlement_id WHERE m.msgid IS NULL"
        )
    ]
    problems += [
        f"settle msgid {msgid} of {institution} answered settlement {settlement_id}, which is "
        + ("missing" if owner is None else f"msgid {other!r} of {owner}")
        for msgid, institution, settlement_id, other, owner in db.execute(
            "SELECT m.msgid, m.institution_code, m.settlement_id, s.msgid, s.institution_code "
            "FROM messages m LEFT JOIN settlements s "
            "ON s.session = m.session AND s.settlement_id = m.settlement_id "
            "WHERE m.kind = 'settle' AND (s.settlement_id IS NULL "
            "OR s.msgid != m.msgid OR s.institution_code != m.institution_code)"
        )
    ]
    problems += [
        f"settlement {settlement_id} is {status} but no {status[:-1]} message {by!r} undid it"
        for settlement_id, status, by in db.execute(
            "SELECT s.settlement_id, s.status, s.undone_by_msgid FROM settlements s LEFT JOIN messages m "
            "ON m.session = s.session AND m.institution_code = s.institution_code "
            "AND m.msgid = s.undone_by_msgid AND m.settlement_id = s.settlement_id "
            "AND m.kind = CASE s.status WHEN 'reversed' THEN 'reverse' ELSE 'void' END "
            "WHERE s.status != 'settled' AND m.msgid IS NULL"
        )
    ]
    for kind, msgid, institution, settlement_id, status, by, owner in db.execute(
        "SELECT m.kind, m.msgid, m.institution_code, m.settlement_id, s.status, s.undone_by_msgid, "
        "s.institution_code FROM messages m LEFT JOIN settlements s "
        "ON s.session = m.session AND s.settlement_id = m.settlement_id "
        "WHERE m.kind IN ('reverse', 'void') AND m.settlement_id NOT IN ('', '-') AND (s.settlement_id IS NULL "
        "OR s.status != CASE m.kind WHEN 'reverse' THEN 'reversed' ELSE 'voided' END "
        "OR s.undone_by_msgid != m.msgid OR s.institution_code != m.institution_code)"
    ):
        if status is None:
            state = "missing"
        elif status == "settled":
            state = "still settled"
        else:
            state = f"{status} by msgid {by!r} of {owner}"
        problems.append(
            f"{kind} msgid {msgid} of {institution} undid settlement {settlement_id}, which is {state}"
        )
    return problems


def _session_problems(db: sqlite3.Connection) -> list[str]:
    """Every sandbox that holds messages has its owners recorded, and holds messages only of them."""
    owners = _owners(db)
    used: dict[str, set[str]] = {}
    for session, institution in db.execute(
        "SELECT DISTINCT session, institution_code FROM messages WHERE session != ''"
    ):
        used.setdefault(session, set()).add(institution)
    problems = []
    for session, institutions in sorted(used.items()):
        if session not in owners:
            problems.append(f"session {session} has no owner, yet holds messages of {', '.join(sorted(institutions))}")
        elif outsiders := institutions - set(owners[session].split(",")):
            problems.append(
                f"session {session} belongs to {owners[session]} but holds messages of {', '.join(sorted(outsiders))}"
            )
    return problems


def _money_problems(db: sqlite3.Connection) -> list[str]:
    """Each settlement's money adds up, its deductible lies within its total, and
    it sits in its visit's year."""
    problems = [
        f"settlement {settlement_id}: fund {fund} + patient {patient} != total {total}"
        for settlement_id, total, fund, patient in db.execute(
            "SELECT settlement_id, total, fund_pays, patient_pays FROM settlements "
            "WHERE fund_pays + patient_pays != total OR fund_pays < 0 OR patient_pays < 0"
        )
    ]
    problems += [
        f"settlement {settlement_id}: year {year} is not the year of visit {visit}"
        for settlement_id, year, visit in db.execute(
            "SELECT settlement_id, year, visit_date FROM settlements "
            "WHERE year != CAST(substr(visit_date, 1, 4) AS INTEGER)"
        )
    ]
    problems += [
        f"settlement {settlement_id}: deductible {deductible} outside 0..total {total}"
        for settlement_id, deductible, total in db.execute(
            "SELECT settlement_id, deductible_applied, total FROM settlements "
            "WHERE deductible_applied < 0 OR deductible_applied > total"
        )
    ]
    return problems


# --- the audit log's anchor, read-only (settlesim audit verify --db) -------------------------------


def read_audit_anchors(path: Path | str) -> dict[str, AuditAnchor]:
    """Every audit anchor in the ledger at `path` (read-only), by audit file path;
    {} for a ledger from before version 3."""
    path = Path(path)
    try:
        db = _open_read_only(path)
        try:
            return _audit_anchors(db)
        finally:
            db.close()
    except (sqlite3.Error, OSError) as error:
        raise LedgerFileError(f"{path}: cannot read audit anchors: {error}") from None


def read_audit_anchor(path: Path | str, audit_path: Path | str) -> AuditAnchor | None:
    return read_audit_anchors(path).get(str(Path(audit_path).resolve()))


def _audit_anchors(db: sqlite3.Connection, audit_path: str | None = None) -> dict[str, AuditAnchor]:
    if not _table_exists(db, "audit_anchors"):
        return {}
    where, args = ("WHERE audit_path = ?", (audit_path,)) if audit_path is not None else ("", ())
    return {
        row[0]: AuditAnchor(*row[1:])
        for row in db.execute(f"SELECT audit_path, records, size, head FROM audit_anchors {where}", args)
    }
