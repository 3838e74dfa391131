"""The event loop's group commit (server/ledger/sqlite/group_commit.py): writes that arrive
together share one transaction, and a refused or failing write spoils none of
the others, whether it failed before or after it changed a row."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
from conftest import CANCER_HOSPITAL
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.rules.reasons import Reason, Refusal


def _message(msgid: str):  # type: ignore[no-untyped-def]
    def work(db: sqlite3.Connection) -> str:
        db.execute(
            "INSERT INTO messages VALUES ('', ?, 'blocked', ?, '', '', '2024-01-01T00:00:00')",
            (msgid, CANCER_HOSPITAL),
        )
        return msgid

    return work


def _refused_before_writing(db: sqlite3.Connection) -> None:
    raise Refusal(Reason.MSGID_REUSED, "refused before any write")


def _fails_after_writing(db: sqlite3.Connection) -> None:
    _message("M-HALF")(db)
    raise RuntimeError("a failure after a row was written")


async def _batch(ledger: Ledger) -> list[object]:
    committer = ledger._loop_commit()
    works = [_message("M1"), _refused_before_writing, _fails_after_writing, _message("M2")]
    outcomes = await asyncio.gather(*(committer.run(w) for w in works), return_exceptions=True)
    assert committer.batches == 1  # they arrived together: one transaction
    return outcomes


@pytest.mark.parametrize("loop_factory", ["asyncio", "uvloop"])
def test_a_refused_and_a_half_done_write_spoil_nothing_else_in_their_batch(tmp_path, loop_factory):
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        if loop_factory == "uvloop":
            import uvloop

            outcomes = uvloop.run(_batch(ledger))
        else:
            outcomes = asyncio.run(_batch(ledger))
        assert outcomes[0] == "M1" and outcomes[3] == "M2"
        assert isinstance(outcomes[1], Refusal)
        assert isinstance(outcomes[2], RuntimeError)
        for msgid in ("M1", "M2"):
            assert ledger.find_message("", CANCER_HOSPITAL, msgid) == ("blocked", "", "")
        assert ledger.find_message("", CANCER_HOSPITAL, "M-HALF") is None  # its own row undone
        assert ledger.check() == []
    finally:
        ledger.close()


def test_an_answered_write_is_committed_before_its_answer(tmp_path):
    """The caller resumes only after COMMIT: another connection sees the row then."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def write_then_look() -> list[tuple[str]]:
            await ledger._loop_commit().run(_message("M9"))
            with sqlite3.connect(tmp_path / "ledger.db") as other:
                return other.execute("SELECT msgid FROM messages").fetchall()

        assert asyncio.run(write_then_look()) == [("M9",)]
    finally:
        ledger.close()


def test_a_few_writes_wait_a_moment_for_company(tmp_path):
    """A write that would commit alone waits (up to COMPANY_SECONDS, on a timer) for others to
    share its COMMIT: one that comes a few loop turns later, long after the loop went quiet,
    still joins it. Without the wait they were two transactions (two fsyncs)."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def two_writes() -> int:
            committer = ledger._loop_commit()
            first = asyncio.ensure_future(committer.run(_message("M1")))
            for _ in range(3):  # the loop goes quiet: without the wait, M1's batch starts here
                await asyncio.sleep(0)
            await asyncio.gather(first, committer.run(_message("M2")))
            return committer.batches

        assert asyncio.run(two_writes()) == 1
    finally:
        ledger.close()


def test_the_next_batch_gathers_while_the_previous_one_commits(tmp_path):
    """A write that arrives while a COMMIT runs is gathered meanwhile, and that COMMIT was its
    wait for company: its batch starts the moment the COMMIT returns. Before, its gathering and
    its company wait began only then (every cycle was gather + SQL + COMMIT end to end); and a
    gathering begun during the COMMIT must not go on waiting for company after it."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def second_write_gap() -> float:
            committer = ledger._loop_commit()
            # A company wait longer than the COMMIT, both far above scheduling noise.
            committer.COMPANY_SECONDS = committer.MAX_WAIT_SECONDS = 0.5
            committing, committed_at = threading.Event(), []
            commit = committer._commit

            def slow_commit(db: sqlite3.Connection) -> None:
                committing.set()
                time.sleep(0.1)
                commit(db)
                committed_at.append(time.monotonic())

            committer._commit = slow_commit  # type: ignore[method-assign]
            ran_at = []

            def second(db: sqlite3.Connection) -> str:
                ran_at.append(time.monotonic())
                return _message("M2")(db)

            first = asyncio.ensure_future(committer.run(_message("M1")))
            while not committing.is_set():
                await asyncio.sleep(0.001)
            await asyncio.gather(first, committer.run(second))
            assert committer.batches == 2
            return ran_at[0] - committed_at[0]

        gap = asyncio.run(second_write_gap())
        assert 0 <= gap < 0.05, f"the second batch started {gap * 1000:.0f} ms after the first COMMIT"
    finally:
        ledger.close()
