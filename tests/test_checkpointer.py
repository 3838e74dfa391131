"""The ledger's WAL checkpoints beside the loop's group commit (server/ledger/sqlite/
checkpointer.py): while it runs, no COMMIT of the writer checkpoints; the thread copies the
committed pages into the file instead; when it stops, the writer checkpoints by itself again.
A real SQLite ledger."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import threading
from pathlib import Path

import pytest
from conftest import CANCER_HOSPITAL
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.ledger.sqlite import checkpointer
from settlesim.server.ledger.sqlite.checkpointer import AUTOMATIC_PAGES
from settlesim.server.ledger.sqlite.group_commit import LoopGroupCommit
from test_group_commit import _message  # a write of one msgid row


def test_the_group_commit_leaves_checkpoints_to_their_thread(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def writes() -> tuple[int, int, int]:
            committer = ledger._loop_commit()
            writer_pages = ledger._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            for n in range(40):  # 40 transactions: each COMMIT appends its pages to the WAL
                await asyncio.gather(*(committer.run(_message(f"M{n}-{k}")) for k in range(5)))
            before = committer._checkpointer.copied
            await asyncio.get_running_loop().run_in_executor(None, committer._checkpointer.checkpoint)
            return writer_pages, before, committer._checkpointer.copied

        writer_pages, before, after = asyncio.run(writes())
        assert writer_pages == 0  # the writer's COMMITs do not checkpoint while the thread runs
        assert after > before  # the thread copied the committed pages into the file
        assert ledger.find_message("", CANCER_HOSPITAL, "M39-4") == ("blocked", "", "")
    finally:
        ledger.close()
    # The group commit stopped with the ledger: a new one checkpoints by itself (SQLite's own).
    again = Ledger(tmp_path / "ledger.db")
    try:
        assert again._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTOMATIC_PAGES
        assert again.check() == []
    finally:
        again.close()


def _wal_restarts(wal: Path) -> int:
    """The WAL header's checkpoint sequence number (bytes 12-16, big-endian), which SQLite
    increments each time it starts the WAL again from its beginning."""
    with wal.open("rb") as file:
        return struct.unpack(">I", file.read(16)[12:16])[0]


@pytest.fixture
def passes_off(monkeypatch):  # type: ignore[no-untyped-def]
    """The checkpoint thread's own passes off: the test runs the one pass it needs."""
    monkeypatch.setattr(checkpointer, "EVERY_SECONDS", 3600.0)


def _pass_during(committer: LoopGroupCommit, msgid: str):  # type: ignore[no-untyped-def]
    """A write that runs a pass of the checkpoint thread inside its own transaction (as under
    load: the writer never waits for a pass), which leaves that write's frames uncopied."""

    def work(db: sqlite3.Connection) -> str:
        committer._checkpointer.checkpoint()
        return _message(msgid)(db)

    return work


def test_the_wal_starts_again_while_writes_go_on(tmp_path: Path, passes_off) -> None:  # type: ignore[no-untyped-def]
    """A pass of the checkpoint thread overlaps a batch (as under load: the writer never waits
    for it), so it leaves that batch's frames uncopied and SQLite would never start the WAL
    again: it grew by ~19 KB a settle for as long as the writes went on. The writer's catch-up
    after its next COMMIT copies them, and the batch after that starts the WAL from its
    beginning: the 20 batches after it overwrite the file instead of growing it. (Without the
    catch-up it grows by their frames.)"""
    ledger = Ledger(tmp_path / "ledger.db")
    wal = tmp_path / "ledger.db-wal"
    try:

        async def writes() -> tuple[int, int]:
            committer = ledger._loop_commit()
            for n in range(40):
                await asyncio.gather(*(committer.run(_message(f"M{n}-{k}")) for k in range(5)))
            await committer.run(_pass_during(committer, "DURING"))
            before, restarts = wal.stat().st_size, _wal_restarts(wal)
            for n in range(20):
                await asyncio.gather(*(committer.run(_message(f"A{n}-{k}")) for k in range(5)))
            assert _wal_restarts(wal) == restarts + 1  # started again, once
            return before, wal.stat().st_size

        before, after = asyncio.run(writes())
        assert before > 40 * 4096  # every batch appended its frames
        assert after <= before  # the batches after wrote over the frames copied
        assert ledger.find_message("", CANCER_HOSPITAL, "A19-4") == ("blocked", "", "")
    finally:
        ledger.close()


def test_the_batchs_callers_are_answered_before_the_catch_up(tmp_path: Path, monkeypatch, passes_off) -> None:  # type: ignore[no-untyped-def]
    """The catch-up (a copy and an fsync, 2-9 ms) runs after the batch's answers are handed to
    the loop, the write locks still held; the next batch begins after it. Here it waits for the
    test: the write is answered meanwhile, and the next one commits once it is let go."""
    ledger = Ledger(tmp_path / "ledger.db")
    let_go, catching_up, caught_up = threading.Event(), threading.Event(), threading.Event()
    try:

        async def writes() -> tuple[bool, bool]:
            committer = ledger._loop_commit()
            real_catch_up = committer.catch_up

            def slow_catch_up(db: sqlite3.Connection) -> None:
                catching_up.set()
                let_go.wait(10)
                real_catch_up(db)
                caught_up.set()

            monkeypatch.setattr(committer, "catch_up", slow_catch_up)
            committer._checkpointer.catch_up_wanted = True
            await asyncio.wait_for(committer.run(_message("ANSWERED")), 5)  # the catch-up is held
            # It starts right after the answer is handed over; it cannot end before let_go.
            started = await asyncio.get_running_loop().run_in_executor(None, catching_up.wait, 5)
            answered_before_it_ended = started and not caught_up.is_set()
            next_write = asyncio.ensure_future(committer.run(_message("NEXT")))
            await asyncio.sleep(0.2)
            next_waited = not next_write.done()  # the locks are the catch-up's until it ends
            let_go.set()
            await asyncio.wait_for(next_write, 5)
            return answered_before_it_ended, next_waited

        answered_before_it_ended, next_waited = asyncio.run(writes())
        assert answered_before_it_ended
        assert next_waited and caught_up.is_set()
        assert ledger.find_message("", CANCER_HOSPITAL, "NEXT") == ("blocked", "", "")
    finally:
        let_go.set()
        ledger.close()


def test_the_wal_starts_again_when_only_the_writer_thread_writes(tmp_path: Path, passes_off) -> None:  # type: ignore[no-untyped-def]
    """The same with the loop's group commit running but every write going through the writer
    thread (the national visit flow's writes do): its COMMIT catches up too. Without that the 20
    writes after the pass grow the WAL."""
    ledger = Ledger(tmp_path / "ledger.db")
    wal = tmp_path / "ledger.db-wal"
    try:

        async def start_the_loops_group_commit() -> LoopGroupCommit:
            committer = ledger._loop_commit()
            await committer.run(_message("LOOP"))
            return committer

        committer = asyncio.run(start_the_loops_group_commit())
        for n in range(40):
            ledger._group(_message(f"W{n}"))
        ledger._group(_pass_during(committer, "DURING"))
        before, restarts = wal.stat().st_size, _wal_restarts(wal)
        for n in range(20):
            ledger._group(_message(f"A{n}"))
        assert before > 40 * 4096
        assert _wal_restarts(wal) == restarts + 1
        assert wal.stat().st_size <= before
        assert ledger.find_message("", CANCER_HOSPITAL, "A19") == ("blocked", "", "")
    finally:
        ledger.close()


def test_a_checkpoint_that_fails_is_logged_and_loses_nothing(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def writes() -> None:
            committer = ledger._loop_commit()
            await committer.run(_message("M1"))
            committer._checkpointer._db.close()  # its connection gone: the next checkpoint fails
            committer._checkpointer.checkpoint()
            await committer.run(_message("M2"))

        asyncio.run(writes())
        assert "ledger checkpoint failed" in caplog.text
        for msgid in ("M1", "M2"):
            assert ledger.find_message("", CANCER_HOSPITAL, msgid) == ("blocked", "", "")
    finally:
        ledger.close()
