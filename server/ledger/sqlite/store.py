"""The embedded SQLite ledger: settlements, yearly running totals and message ids in
one file (WAL, synchronous=FULL: an acknowledged settlement survives a crash), behind
the contract (server/ledger/contract.py's LedgerStore).

The ledger knows no rules. `settle` runs the caller's pure `compute(totals)`
inside the write transaction, so reading this year's totals, settling and
updating the totals are one atomic step: concurrent settles for one person can
never both spend the last of a cap.

The file carries its schema version (schema.py, migrations.py); a server opening an
older ledger upgrades it once, in one write transaction. A ledger is created only
where no file exists; an existing file that is empty, damaged (SQLite's integrity
check at start-up) or whose tables are not those of its version is refused in one
line (LedgerFileError). `check_file` (check.py) reads a ledger without changing it.

Storage failures while serving are classified in errors.py: refusals with a reason
(LEDGER_UNAVAILABLE, LEDGER_DAMAGED), never a bare sqlite3 error, and the ledger's
write health (server/ledger/health.py) follows them.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from settlesim.server.ledger.contract import (
    AnswerCheck,
    AuditAnchor,
    Compute,
    FeeLine,
    LedgerFileError,
    NationalWrites,
    OnSettled,
    ReconcileSums,
    StoredSettlement,
    Visit,
    VoidOutcome,
)
from settlesim.server.ledger.health import WriteHealth
from settlesim.server.ledger.sqlite import jobs, national, rows
from settlesim.server.ledger.sqlite.audit_anchors import audit_anchors, put_anchor, retire_anchor
from settlesim.server.ledger.sqlite.errors import is_damage, storage_refusal
from settlesim.server.ledger.sqlite.files import FULL_CHECK_BYTES, connect, require_intact
from settlesim.server.ledger.sqlite.group_commit import LoopGroupCommit
from settlesim.server.ledger.sqlite.invariants import MAX_INSTITUTION_YEAR_FEN, counts, problems_of
from settlesim.server.ledger.sqlite.migrations import upgrade
from settlesim.server.ledger.sqlite.rows import now
from settlesim.server.ledger.sqlite.running_totals import RunningTotals
from settlesim.server.ledger.sqlite.schema import EMPTY, SCHEMA_VERSION, require_ledger, user_version
from settlesim.server.ledger.sqlite.writer import WriterThread, _Job
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Reason, Refusal

log = logging.getLogger("settlesim.server")


class SqliteLedger(WriterThread):
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
    MAX_INSTITUTION_YEAR_FEN = MAX_INSTITUTION_YEAR_FEN  # (server/ledger/sqlite/invariants.py)
    FULL_CHECK_BYTES = FULL_CHECK_BYTES  # start-up: integrity_check up to it, quick_check above

    def __init__(self, path: Path | str, *, integrity_check: bool = True) -> None:
        """Open the ledger at `path`, creating it only where no file exists. An
        existing file is refused (LedgerFileError) when it is empty, is not a
        settlesim ledger, its tables are not those of its user_version, or
        (`integrity_check`) SQLite finds it damaged (see files.require_intact)."""
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
        self._health = WriteHealth(self._probe, storage_refusal)
        # The writer waits for other processes' write locks itself (_begin): SQLite's
        # own busy handler sleeps 1, 2, 5 ... 100 ms, which wrecks latency when
        # several server processes share the file.
        self._db.execute("PRAGMA busy_timeout=0")
        self._read_lock = threading.Lock()
        self._reader = connect(self.path)
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
        self.shared = False  # serve --processes: other processes write it too (server/app.py)
        self.running = RunningTotals()  # the writer's copy of the totals (off when shared)
        self._batch_now: str | None = None  # created_at of the batch being run (_stamp)
        self._writer = threading.Thread(target=self._write_batches, name="ledger-writer", daemon=True)
        self._writer.start()

    def _open(self, integrity_check: bool) -> int | None:
        """Connect, create or check, and upgrade; the version upgraded from."""
        with self._across_processes():  # one process creates a new file; the others find it made
            new = not self.path.exists()
            if not new and self.path.stat().st_size == 0:
                raise LedgerFileError(EMPTY.format(path=self.path))
            if new:
                self._db = connect(self.path)
                return self._upgrade()
        # Looked at before anything changes it (not even the journal mode).
        with closing(sqlite3.connect(self.path, isolation_level=None, timeout=30)) as db:
            db.execute("PRAGMA query_only=1")
            db.execute("BEGIN")  # one snapshot, even beside other processes writing
            require_ledger(db, self.path, user_version(db))
            if integrity_check:
                require_intact(db, self.path, self.FULL_CHECK_BYTES)
            db.execute("COMMIT")
        self._db = connect(self.path)
        return self._upgrade()

    # --- schema versions ---------------------------------------------------------------------

    def _upgrade(self) -> int | None:
        """Create a new ledger, or bring an older one to SCHEMA_VERSION, in one write
        transaction. Processes opening the file at once queue on the write lock and
        read the version again inside it: exactly one of them upgrades."""
        if user_version(self._db) == SCHEMA_VERSION:
            return None  # the common case: no write lock taken
        with self._write() as db:
            return upgrade(db, self.path)

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

    # --- storage health (server/ledger/health.py, errors.py) -------------------------------------------

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

    def _stamp(self) -> str:
        """created_at of a row: the loop's group commit stamps a whole transaction at
        once (one clock reading and one format per batch instead of per row)."""
        return self._batch_now or now()

    def _loop_commit(self) -> LoopGroupCommit:
        """The group commit of the running event loop (made on first use)."""
        committer = self._loop_committer
        if committer is None:
            with self._closing:
                if self._closed:
                    raise sqlite3.ProgrammingError("the ledger is closed")
                committer = self._loop_committer = LoopGroupCommit(self, asyncio.get_running_loop())
        return committer

    def queue_depth(self) -> int:
        """Writes waiting for the writer thread or the loop's group commit (approximate)."""
        waiting = self._loop_committer.queue_depth if self._loop_committer is not None else 0
        return self._queue.qsize() + waiting

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
        compute: Compute,
        on_settled: OnSettled | None = None,
    ) -> tuple[StoredSettlement, bool]:
        """Commit a settlement once per msgid of the institution. Returns (settlement, replayed).
        `on_settled(writes, stored)` writes what a door keeps with a new settlement, in its
        transaction (a Refusal there refuses the settlement)."""
        return self._group(
            jobs.settle_job(
                self,
                session,
                msgid,
                institution_code,
                request_hash,
                person_no,
                disease_code,
                year,
                compute,
                on_settled,
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
        compute: Compute,
        on_settled: OnSettled | None = None,
    ) -> tuple[StoredSettlement, bool]:
        """`settle` for the server's event loop: the loop's group commit (group_commit.py)."""
        return await self._loop_commit().run(
            jobs.settle_job(
                self,
                session,
                msgid,
                institution_code,
                request_hash,
                person_no,
                disease_code,
                year,
                compute,
                on_settled,
            )
        )

    # --- sandboxes (server/sandboxes.py) --------------------------------------------------------

    def session_group(self, session: str) -> frozenset[str] | None:
        """The institutions `session` belongs to, or None when nobody has written in it."""
        with self._read() as db:
            row = db.execute("SELECT institutions FROM sessions WHERE session = ?", (session,)).fetchone()
        return None if row is None else frozenset(row[0].split(","))

    def open_session(self, session: str, institutions: frozenset[str]) -> frozenset[str]:
        """Record `session` as `institutions`' unless someone opened it first; the group it has."""
        return self._group(jobs.open_session_job(self, session, institutions))

    async def open_session_async(self, session: str, institutions: frozenset[str]) -> frozenset[str]:
        """`open_session` for the server's event loop: the loop's group commit."""
        return await self._loop_commit().run(jobs.open_session_job(self, session, institutions))

    def yearly_totals(self, session: str, person_no: str, disease_code: str, year: int) -> YearlyTotals:
        with self._read() as db:
            return rows.totals(db, session, person_no, disease_code, year)

    # --- undo: reverse (2208) and void (2601) -----------------------------------------------

    def reverse(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> tuple[StoredSettlement, bool]:
        """Reverse a settlement by id and restore the yearly totals, once."""
        return self._group(
            jobs.reverse_job(self, session, msgid, institution_code, request_hash, settlement_id)
        )

    async def reverse_async(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> tuple[StoredSettlement, bool]:
        return await self._loop_commit().run(
            jobs.reverse_job(self, session, msgid, institution_code, request_hash, settlement_id)
        )

    def void(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> VoidOutcome:
        """Void whatever the institution's `original_msgid` did; if it never
        settled, block it (for this institution only)."""
        return self._group(
            jobs.void_job(self, session, msgid, institution_code, request_hash, original_msgid)
        )

    async def void_async(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> VoidOutcome:
        return await self._loop_commit().run(
            jobs.void_job(self, session, msgid, institution_code, request_hash, original_msgid)
        )

    # --- the national visit flow (server/ledger/sqlite/national.py) ---------------------------

    def national_once(
        self, session: str, institution: str, msgid: str, infno: str, request_hash: str,
        work: Callable[[NationalWrites], dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        return self._group(national.once_job(session, institution, msgid, infno, request_hash, work))

    def national_visit(self, session: str, institution: str, mdtrt_id: str) -> Visit:
        with self._read() as db:
            return national.visit(db, session, institution, mdtrt_id)

    def national_fee_lines(self, session: str, institution: str, mdtrt_id: str) -> list[FeeLine]:
        with self._read() as db:
            return national.fee_lines(db, session, institution, mdtrt_id)

    # --- reads --------------------------------------------------------------------------------

    def get(
        self, session: str, institution_code: str, settlement_id: str = "", msgid: str = ""
    ) -> StoredSettlement:
        with self._read() as db:
            if not settlement_id:
                # The msgid's settle message names its settlement (schema 8: no index on
                # settlements by msgid; `ledger check` holds the two to agree).
                row = db.execute(
                    "SELECT settlement_id FROM messages "
                    "WHERE session = ? AND institution_code = ? AND msgid = ? AND kind = 'settle'",
                    (session, institution_code, msgid),
                ).fetchone()
                if row is None:
                    raise Refusal(
                        Reason.SETTLEMENT_NOT_FOUND, f"no settlement for msgid {msgid}", msgid=msgid
                    )
                settlement_id = row[0]
            return rows.owned(db, session, settlement_id, institution_code)

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
                found = db.execute(
                    f"SELECT * {where} ORDER BY visit_date, created_at, settlement_id", args
                ).fetchall()
                entries = tuple(rows.settlement_of(r) for r in found)
            return ReconcileSums(count, total, fund, patient, entries)

    def session_settlements(self, session: str) -> list[StoredSettlement]:
        """Every settlement of a session, in the order they were made: the end
        state a check run (docs/his-check.md) is graded on."""
        with self._read() as db:
            found = db.execute(
                "SELECT * FROM settlements WHERE session = ? ORDER BY created_at, rowid", (session,)
            ).fetchall()
        return [rows.settlement_of(r) for r in found]

    def settlement_by_id(self, settlement_id: str) -> StoredSettlement | None:
        """Any session's settlement by id (the primary key): the console's settlement page."""
        with self._read() as db:
            row = db.execute("SELECT * FROM settlements WHERE settlement_id = ?", (settlement_id,)).fetchone()
        return None if row is None else rows.settlement_of(row)

    def person_totals(self, session: str, person_no: str) -> list[tuple[str, int, int, int]]:
        """(disease, year, deductible used, fund paid): the primary key's prefix."""
        with self._read() as db:
            return db.execute(
                "SELECT disease_code, year, deductible_used, fund_paid FROM yearly_totals "
                "WHERE session = ? AND person_no = ? ORDER BY year DESC, disease_code",
                (session, person_no),
            ).fetchall()

    # --- invariants ---------------------------------------------------------------------------

    def check(self, answer_check: AnswerCheck | None = None) -> list[str]:
        """Problems with the ledger's invariants; empty when it is sound (see
        invariants.py). `settlesim ledger check` runs the same on a file, read-only:
        `check_file`."""
        with self._read() as db:
            return problems_of(db, answer_check)

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            return counts(db)

    # --- the audit log's anchor (server/audit.py) ---------------------------------------------

    def _anchor_audit(self, db: sqlite3.Connection) -> None:
        """Commit the audit log's head with this transaction: every audit record
        written before a write commits is anchored (docs/security.md)."""
        if self.audit_head is not None:
            path, head = self.audit_head()
            put_anchor(db, path, head, now())

    def _catch_up_checkpoint(self, db: sqlite3.Connection) -> None:
        """After the writer thread's COMMIT, under the write locks: while the loop's group commit
        runs, its checkpoint thread's catch-up (checkpointer.py), so that the WAL starts again
        from its beginning even when only this thread writes (the national visit flow)."""
        committer = self._loop_committer
        if committer is not None:
            committer.catch_up(db)

    def anchor_audit(self) -> None:
        """A write transaction with nothing but the audit log's anchor in it."""
        self._group(lambda db: None)

    def audit_anchor(self, audit_path: str) -> AuditAnchor | None:
        with self._read() as db:
            return audit_anchors(db, audit_path).get(audit_path)

    def retire_audit_anchor(self, audit_path: str) -> None:
        """A new chain starts at `audit_path`: keep the old chain's anchor under
        '<path> retired <time>', where `audit verify --db` still finds it."""

        self._group(lambda db: retire_anchor(db, audit_path, now()))
