"""The SQLite ledger's writer thread: the group commit of the callers that are not on the
server's event loop (the loop has its own: group_commit.py).

Writes (settle, reverse, void ...) go to one writer thread. It takes every write
waiting, runs each in its own SAVEPOINT inside one IMMEDIATE transaction (a refused or
failing write rolls back to its savepoint and cannot spoil the others), COMMITs once
with synchronous=FULL, and only then answers the callers: every acknowledged write is
durable, and one fsync serves many. A writer that dies fails its callers at once
(LEDGER_UNAVAILABLE), never leaves them waiting.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from settlesim.server.ledger.health import LedgerUnavailable, WriteHealth
from settlesim.server.ledger.sqlite.errors import is_storage_failure
from settlesim.server.ledger.sqlite.running_totals import RunningTotals

T = TypeVar("T")


class _Job(Generic[T]):
    """One write waiting for the group transaction, and its outcome."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], T]) -> None:
        self.work = work
        self.done = threading.Lock()  # held until the outcome is known: cheaper than an Event
        self.done.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None


class WriterThread:
    """The writer thread's side of SqliteLedger (a mixin: the store owns the connection,
    the locks and the queue it reads, below)."""

    MAX_BATCH = 256  # writes per transaction: bounds the latency one batch adds
    WRITER_CHECK_SECONDS = 0.5  # a caller waiting this long checks that the writer thread lives

    _db: sqlite3.Connection
    _lock: threading.Lock
    _closing: threading.Lock
    _closed: bool
    _queue: queue.SimpleQueue[_Job[Any] | None]
    _writer: threading.Thread
    _writer_failure: BaseException | None
    _health: WriteHealth
    on_commit: Callable[[int, float], None] | None
    running: RunningTotals
    shared: bool

    # and from the store: _across_processes(), _refuse_if_damaged(), _storage_failed(error),
    # _anchor_audit(db), _catch_up_checkpoint(db)

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

    def _commit(self, batch: list[_Job[Any]]) -> None:
        began = time.perf_counter()
        with self._lock, self._across_processes():
            db = self._db
            try:
                self._begin(db)
                self.running.begin(db, self.shared)  # the writer's totals still right?
                for job in batch:
                    db.execute("SAVEPOINT job")
                    try:
                        job.result = job.work(db)
                    except BaseException as error:  # the caller gets it; the batch goes on
                        job.error = self._storage_failed(error) if is_storage_failure(error) else error
                        db.execute("ROLLBACK TO job")
                        self.running.forget()
                    db.execute("RELEASE job")
                self._anchor_audit(db)
                db.execute("COMMIT")
            except BaseException as error:  # nothing of this batch is durable: say so to everyone
                self._fail_batch(db, batch, error)
            else:
                self._health.committed()
                self._catch_up_checkpoint(db)
        for job in batch:
            job.done.release()
        if self.on_commit is not None:
            self.on_commit(len(batch), time.perf_counter() - began)

    def _fail_batch(self, db: sqlite3.Connection, batch: list[_Job[Any]], error: BaseException) -> None:
        """A group transaction that did not commit: every job of it fails with the
        storage refusal (a job's own refusal stands: it had stored nothing either)."""
        failure = self._storage_failed(error) if is_storage_failure(error) else error
        self.running.forget()  # it held this transaction's writes
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
