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

    def __init__(self, path: Path, writer_pages: Callable[[int], None], every: float = EVERY_SECONDS) -> None:
        self._writer_pages, self._every = writer_pages, every
        self._db = connect(path)
        self._stopping = threading.Event()
        self.copied = 0  # WAL frames the checkpoints copied into the file (tests)
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
