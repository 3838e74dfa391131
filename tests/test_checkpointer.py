"""The ledger's WAL checkpoints beside the loop's group commit (server/ledger/sqlite/
checkpointer.py): while it runs, no COMMIT of the writer checkpoints; the thread copies the
committed pages into the file instead; when it stops, the writer checkpoints by itself again.
A real SQLite ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import CANCER_HOSPITAL
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.ledger.sqlite.checkpointer import AUTOMATIC_PAGES
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
