"""The ledger's WAL checkpoints, in a thread of their own while the loop's group commit writes.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, and every call
waiting on that COMMIT waits for the checkpoint too: under the bench's open loop at 2,340
settles/s, 7 of 1,299 COMMITs took 39-51 ms instead of ~1.3, and p99 at 80 % of the peak was
57.9-74.7 ms (`docs/performance.md`, session 13). While a `LoopGroupCommit` runs, the writer's
connection does not checkpoint (`wal_autocheckpoint=0`): this thread runs a PASSIVE checkpoint
on a connection of its own every `EVERY_SECONDS`, beside the writer (WAL lets a writer go on
while a checkpoint copies pages; PASSIVE waits for nobody). Durability is unchanged: every
COMMIT still fsyncs the WAL (synchronous=FULL), and a checkpoint fsyncs the WAL before and the
file after it copies.

**The WAL must start again from its beginning**, or it grows for as long as the writes go on
(measured: 235 MB after 8 s of the bench's closed loop, ~19 KB a settle, every frame appended to
a longer file: the kernel zeroes and allocates each new block, and every page looked up searches
a longer WAL index). SQLite restarts it at the first write of a transaction that began while
every frame was already copied, if no reader still holds a snapshot older than that; a
checkpoint beside a busy writer never catches up with it. So each pass of this thread ends by
asking the writer to catch up (`catch_up_wanted`): after its next COMMIT, still holding the write
locks, the writer checkpoints the few frames written since this thread's pass (`catch_up`), and
the transaction after it starts the WAL from its beginning again. It runs once that batch's
callers have their answers (group_commit.py); the next batch starts after it (2-9 ms measured,
once a second). A reader that keeps a snapshot open across the catch-up
(a long Reconcile, `ledger check` on a live file, readers of other processes that overlap without
a gap) defers the restart to a later pass; the WAL grows meanwhile, and stops growing once there
is a moment without such a reader.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from settlesim.server.ledger.sqlite.files import connect

log = logging.getLogger("settlesim.server.ledger")

# About as often as the automatic checkpoint ran at the bench's rate (10,000 pages, ~1 s at
# 3,000 settles/s), so a page that every batch rewrites is still copied once for many.
EVERY_SECONDS = 1.0
AUTOMATIC_PAGES = 10_000  # the writer's own threshold again once this thread stops (files.connect)


class Checkpointer:
    """PASSIVE checkpoints of `path` every `every` seconds until `stop()`. The ledger's write
    connection stops checkpointing meanwhile (`writer_pages(0)`, then back)."""

    # `every` None: EVERY_SECONDS as it is when the group commit starts (a test sets it).
    def __init__(self, path: Path, writer_pages: Callable[[int], None], every: float | None = None) -> None:
        self._writer_pages, self._every = writer_pages, EVERY_SECONDS if every is None else every
        self._db = connect(path)
        self._stopping = threading.Event()
        self.copied = 0  # the WAL's frames in the file as of the last pass, summed over passes (tests)
        # Set by a pass of this thread, cleared by the writer's catch-up after its next COMMIT.
        self.catch_up_wanted = False
        writer_pages(0)
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; the writer's connection checkpoints by itself again. Twice is once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join()
        self._db.close()
        with contextlib.suppress(sqlite3.ProgrammingError):  # the ledger closed it already: nothing to restore
            self._writer_pages(AUTOMATIC_PAGES)

    def _run(self) -> None:
        while not self._stopping.wait(self._every):
            self.checkpoint()

    def checkpoint(self) -> None:
        """One PASSIVE checkpoint. A failure is logged, not raised: the WAL keeps the pages
        (every one of them committed and fsynced) until a later checkpoint copies them."""
        try:
            _busy, _frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:
            log.warning("ledger checkpoint failed (%s); the WAL keeps its pages until the next one", error)
            return
        self.copied += max(copied, 0)
        self.catch_up_wanted = True

    def catch_up(self, writer: sqlite3.Connection) -> None:
        """On the writer's connection, between its transactions (the COMMIT thread, the write
        locks held): copy what this thread's last pass left, so that the next transaction
        starts the WAL from its beginning. Only when a pass asked for it; a failure is logged:
        the COMMIT before it stands, and the next pass asks again."""
        if not self.catch_up_wanted:
            return
        self.catch_up_wanted = False
        try:
            writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # busy (another pass): the next one asks again
        except Exception as error:  # whatever it was, the batch before it is committed
            log.warning("ledger checkpoint after a COMMIT failed (%s); the WAL keeps its pages", error)
