"""The ledger's group commit on the server's event loop (`settlesim serve`).

Writes (settle, reverse, void) that arrive together (until the loop has gone a
turn without a new one, and at least 3 ms after the first while they are fewer than
12; at most 5 ms) are run one after another on the loop
inside one IMMEDIATE transaction; its COMMIT (the
fsync, synchronous=FULL) runs in one helper thread, and each caller is answered
only after that COMMIT. While one batch commits, the loop goes on validating and
pricing the next requests, whose writes gather for the next batch (batches are
pipelined: the loop never waits for the disk).

A refused or failing write must not spoil the others. A write refuses before
it changes anything (the ledger's jobs check, then write), so a batch runs
without a SAVEPOINT per write; a write that fails *after* it changed a row
(`total_changes` moved) makes the batch roll back and run again with one
SAVEPOINT per write, as the writer thread of the synchronous API always does.
The settles' own rows and totals wait in the batch and go in together at its end
(batch_rows.py: one statement a table, not six a settle); if those statements
fail, the batch rolls back and runs again the same way, each settle writing its
rows itself.

SQL runs on the loop because it is short (pages in memory; one batch of 6-30
settles takes about a millisecond of CPU) and because a second Python thread
running it would fight the loop for the GIL on every statement. Only what may
wait on something else runs in the helper thread: the COMMIT, and the write
locks when another process holds them (`serve --processes N`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from settlesim.server.ledger.sqlite.batch_rows import BatchRows, BatchWriteFailed
from settlesim.server.ledger.sqlite.checkpointer import Checkpointer
from settlesim.server.ledger.sqlite.errors import is_storage_failure

if TYPE_CHECKING:
    from settlesim.server.ledger.sqlite.store import SqliteLedger

log = logging.getLogger("settlesim.server.ledger")
T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
Done = Callable[[BaseException | None], None]
Afterwards = Callable[[], None] | None  # what the helper does once the loop has the outcome


class _WroteThenFailed(Exception):
    """A job failed after it had changed rows: the batch runs again, one SAVEPOINT a write."""


class CommitThread:
    """The helper thread: runs `task()` and hands `done(error)` to the loop with one
    `call_soon_threadsafe`. Measured against a ThreadPoolExecutor's future chain
    (submit, a concurrent Future wrapped in an asyncio one, two done-callbacks a batch):
    see docs/performance.md. A task may return more work for after `done` is handed over
    (`Afterwards`: the WAL's catch-up, which the batch's callers need not wait for)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._tasks: queue.SimpleQueue[tuple[Callable[[], Afterwards], Done] | None] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="ledger-commit", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], Afterwards], done: Done) -> None:
        if self._stopped:
            raise RuntimeError("the ledger's commit thread has stopped")
        self._tasks.put((task, done))

    def stop(self) -> None:
        self._stopped = True
        self._tasks.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (item := self._tasks.get()) is not None:
            task, done = item
            afterwards: Afterwards = None
            try:
                afterwards = task()
                error: BaseException | None = None
            except BaseException as failure:  # the loop answers every caller of the batch with it
                error = failure
            try:
                self.loop.call_soon_threadsafe(done, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.warning("ledger commit finished after its event loop closed")
            if afterwards is not None:
                try:
                    afterwards()
                except BaseException:  # this thread must go on serving the batches after
                    log.exception("the ledger's work after a COMMIT failed")


class LoopGroupCommit:
    """Group commit for one event loop and one Ledger's write connection."""

    # A batch starts once the loop has gone QUIET_TURNS turns without a new write joining
    # (every request the loop had in hand has reached the ledger), or after MAX_WAIT_SECONDS.
    # Measured (bench's closed loop, 32 calls in flight): a fixed 0.5 ms window made
    # transactions of 2.1 writes on average; waiting for one quiet turn makes 6.9.
    QUIET_TURNS = 1
    MAX_WAIT_SECONDS = 0.005
    MAX_BATCH = 256  # writes per transaction: bounds the latency one batch adds
    # A batch of fewer than SMALL_BATCH writes waits until COMPANY_SECONDS after its first for
    # more: each COMMIT costs its fsync and two thread wake-ups whatever it carries, and the
    # pages a batch shares (index edges, small tables, the header) are written once for all.
    # Measured (closed loop, 4 interleaved rounds): 4 and 2 ms against none: 1,244 -> 1,459
    # settles/s, 746 -> 648 us CPU a settle; open loop at 1,000/s: p50 11.9 -> 9.5 ms, p99 141 ->
    # 54 ms. 12 and 3 ms against 4 and 2 (3 interleaved rounds): 8.4 -> 12.0 writes a COMMIT, the
    # COMMIT thread 74 -> 56 us and the loop 466 -> 418 us a settle (docs/performance.md).
    SMALL_BATCH = 12
    COMPANY_SECONDS = 0.003

    def __init__(self, ledger: SqliteLedger, loop: asyncio.AbstractEventLoop) -> None:
        self.ledger, self.loop = ledger, loop
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._busy = False  # a batch is being collected, run or committed
        self._helper = CommitThread(loop)
        # Checkpoints beside the writer, not inside the COMMIT that crosses SQLite's threshold.
        self._checkpointer = Checkpointer(ledger.path, self._writer_checkpoints)
        self.batches = 0  # figures for the benchmark's notes
        self.writes = 0
        self.largest = 0
        self._began = 0.0
        # The COMMIT thread took the write locks and began for a batch it handed back to the loop,
        # which has not run it yet (`_locked`): if the loop stopped first, `close` undoes it.
        self._handed_back = False

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(db)` in the next group transaction; return once committed."""
        self.ledger._refuse_if_damaged()
        future: asyncio.Future[T] = self.loop.create_future()
        self._pending.append((work, future))
        if not self._busy:
            self._busy = True
            self._gather()
        return await future

    def _gather(self) -> None:
        """Wait for the writes the loop is still working towards, then start the batch."""
        self._since, self._seen, self._quiet = self.loop.time(), len(self._pending), 0
        self.loop.call_soon(self._gathering)

    def _gathering(self) -> None:
        count = len(self._pending)
        self._quiet = self._quiet + 1 if count == self._seen else 0
        self._seen = count
        waited = self.loop.time() - self._since
        if count >= self.MAX_BATCH or waited >= self.MAX_WAIT_SECONDS:
            self._next_batch()
        elif self._quiet >= self.QUIET_TURNS:
            if count < self.SMALL_BATCH and waited < self.COMPANY_SECONDS:
                # Few writes: wait (a timer, not spinning) for company to share the COMMIT with.
                self.loop.call_later(self.COMPANY_SECONDS - waited, self._gathering)
            else:
                self._next_batch()
        else:
            self.loop.call_soon(self._gathering)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def _writer_checkpoints(self, pages: int) -> None:
        with self.ledger._lock:
            self.ledger._db.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")

    def close(self) -> None:
        self._helper.stop()
        if self._handed_back:  # the loop stopped (a drain's grace ran out) before it ran the batch
            log.warning("the loop stopped before its batch ran: rolled back, none of it was answered")
            self._handed_back = False
            self._rollback(self.ledger._db)
            self._unlock()
        self._checkpointer.stop()
        if self.batches:
            log.debug(
                "group commit: %d writes in %d transactions (%.1f per transaction, at most %d)",
                self.writes, self.batches, self.writes / self.batches, self.largest,
            )  # fmt: skip

    # --- one batch: locks, jobs, COMMIT -------------------------------------------------------

    def _next_batch(self) -> None:
        # A caller that has gone (cancelled: the client gave up) has nothing to commit.
        pending = [(w, f) for w, f in self._pending if not f.done()]
        batch, self._pending = pending[: self.MAX_BATCH], pending[self.MAX_BATCH :]
        if not batch:
            self._busy = False
            return
        try:
            locked = self._lock_here()
            if not locked:
                self._helper.submit(self._lock_waiting, lambda error: self._locked(batch, error))
        except BaseException as error:  # e.g. BEGIN failed for another reason than a busy file
            self._answer(batch, [], error)
            return
        if locked:
            self._run(batch)

    def _locked(self, batch: list[tuple[Work, asyncio.Future[Any]]], error: BaseException | None) -> None:
        self._handed_back = False
        if error is not None:  # e.g. another process held the write lock past BEGIN's timeout
            self._answer(batch, [], error)
            return
        self._run(batch)

    def _lock_here(self) -> bool:
        """Take the ledger's write locks and BEGIN without blocking the loop, if free."""
        ledger = self.ledger
        if not ledger._lock.acquire(blocking=False):
            return False
        try:
            fcntl.flock(ledger._writers_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ledger._lock.release()
            return False
        try:
            ledger._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            self._unlock()
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            return False
        return True

    def _lock_waiting(self) -> None:
        """In the helper thread: wait for the locks another thread or process holds, then BEGIN."""
        ledger = self.ledger
        ledger._lock.acquire()
        try:
            fcntl.flock(ledger._writers_lock, fcntl.LOCK_EX)
            try:
                ledger._begin(ledger._db)
            except BaseException:
                fcntl.flock(ledger._writers_lock, fcntl.LOCK_UN)
                raise
        except BaseException:
            ledger._lock.release()
            raise
        self._handed_back = True

    def _unlock(self) -> None:
        fcntl.flock(self.ledger._writers_lock, fcntl.LOCK_UN)
        self.ledger._lock.release()

    def _run(self, batch: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        db = self.ledger._db
        self._began = self.loop.time()
        try:
            self.ledger.running.begin(db, self.ledger.shared)  # the writer's totals still right?
            self.ledger._batch_now = self.ledger._stamp()  # one created_at for the whole batch
            outcomes = self._jobs(db, batch)
            self.ledger._anchor_audit(db)  # the audit log's head commits with the writes
        except BaseException as error:  # the transaction itself failed: nothing is durable
            self._rollback(db)
            self._unlock()
            self._answer(batch, [], error)
            return
        finally:
            self.ledger._batch_now = None
        try:
            self._helper.submit(
                lambda: self._commit(db), lambda error: self._committed(batch, outcomes, error)
            )
        except BaseException as error:  # e.g. the helper was stopped: roll back here
            self._rollback(db)
            self._unlock()
            self._answer(batch, [], error)

    def _jobs(self, db: sqlite3.Connection, batch: list[tuple[Work, asyncio.Future[Any]]]) -> list[Any]:
        """Each job's (ok, value), without SAVEPOINTs unless a job failed after writing or the
        batch's own statements failed. The settles' rows wait in the batch (batch_rows.py) and
        go in at its end, or before a job that may read them."""
        running = self.ledger.running
        kept = running.batch = BatchRows()
        outcomes: list[Any] = []
        try:
            for work, _future in batch:
                if not getattr(work, "keeps_rows", False):
                    kept.write(db)  # reverse, void ...: they read and change the tables in SQL
                changed, settled = db.total_changes, len(kept.settlements)
                try:
                    outcomes.append((True, work(db)))
                except BatchWriteFailed:
                    raise
                except Exception as error:
                    if db.total_changes != changed or len(kept.settlements) != settled:
                        raise _WroteThenFailed from error  # undo it alone: run again with savepoints
                    outcomes.append((False, self._classified(error)))
            kept.write(db)
        except (_WroteThenFailed, BatchWriteFailed):
            if db.in_transaction:  # SQLite rolls back itself after some failures (a full disk)
                db.execute("ROLLBACK")
            running.forget()
            self.ledger._begin(db)
            return self._jobs_with_savepoints(db, batch)
        finally:
            running.batch = None
        return outcomes

    def _classified(self, error: BaseException) -> BaseException:
        """A storage failure becomes its refusal (LEDGER_UNAVAILABLE, LEDGER_DAMAGED) and
        the ledger's write health hears of it (server/ledger/health.py)."""
        return self.ledger._storage_failed(error) if is_storage_failure(error) else error

    def _jobs_with_savepoints(
        self, db: sqlite3.Connection, batch: list[tuple[Work, asyncio.Future[Any]]]
    ) -> list[Any]:
        outcomes: list[Any] = []
        for work, _future in batch:
            db.execute("SAVEPOINT job")
            try:
                outcomes.append((True, work(db)))
            except Exception as error:
                outcomes.append((False, self._classified(error)))
                db.execute("ROLLBACK TO job")
                self.ledger.running.forget()
            db.execute("RELEASE job")
        return outcomes

    def _commit(self, db: sqlite3.Connection) -> Afterwards:
        """In the helper thread: COMMIT (or roll back on failure), then release the locks. When
        the checkpoint thread asked for a catch-up (checkpointer.py), the locks are kept for it
        and released after it, once the batch's callers have their answers: they do not wait
        2-9 ms for it, and the next batch takes the locks through this thread after it."""
        try:
            db.execute("COMMIT")
        except BaseException:
            try:
                self._rollback(db)
            finally:
                self._unlock()
            raise
        if not self._checkpointer.catch_up_wanted:
            self._unlock()
            return None

        def catch_up_then_unlock() -> None:
            try:
                self.catch_up(db)  # never raises: what it cannot do, a later pass asks again
            finally:
                self._unlock()

        return catch_up_then_unlock

    def catch_up(self, db: sqlite3.Connection) -> None:
        """After a COMMIT on the ledger's write connection, the write locks held (this thread's
        or the writer thread's): the WAL starts again from its beginning (checkpointer.py)."""
        self._checkpointer.catch_up(db)

    def _rollback(self, db: sqlite3.Connection) -> None:
        self.ledger.running.forget()  # it held this transaction's writes
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("ROLLBACK failed")

    def _committed(
        self, batch: list[tuple[Work, asyncio.Future[Any]]], outcomes: list[Any], error: BaseException | None
    ) -> None:
        if error is None:
            self.ledger._health.committed()
        if self.ledger.on_commit is not None:
            self.ledger.on_commit(len(batch), self.loop.time() - self._began)
        self._answer(batch, outcomes, error)

    def _answer(
        self, batch: list[tuple[Work, asyncio.Future[Any]]], outcomes: list[Any], error: BaseException | None
    ) -> None:
        """Answer every caller of a finished batch, then start the next one. When the
        transaction failed, each write fails with the storage refusal (a write's own
        refusal stands: it had stored nothing either)."""
        if error is not None:
            error = self._classified(error)
        self.batches += 1
        self.writes += len(batch)
        self.largest = max(self.largest, len(batch))
        for i, (_work, future) in enumerate(batch):
            if future.done():  # the caller gave up meanwhile; its write may have committed
                continue
            if error is not None:
                own = outcomes[i][1] if i < len(outcomes) and not outcomes[i][0] else None
                future.set_exception(own if own is not None and not is_storage_failure(own) else error)
                continue
            ok, value = outcomes[i]
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        # Writes that arrived during this batch's COMMIT go next, with those still on their way.
        if self._pending:
            self._gather()
        else:
            self._busy = False
