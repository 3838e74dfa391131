"""The event loop's group commit (server/ledger/sqlite/group_commit.py): writes that arrive
together share one transaction, and a refused or failing write spoils none of
the others, whether it failed before or after it changed a row."""

from __future__ import annotations

import asyncio
import sqlite3

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



# --- writes of one batch that meet: a retry, a void, a row SQLite refuses ----------------------

PERSON, DISEASE = "63000000000000000001", "M00503"


def _settle(ledger: Ledger, msgid: str, settlement_id: str, fen: int = 1000):  # type: ignore[no-untyped-def]
    """A settle of one class-A line of `fen`, all of it the fund's (no deductible)."""
    from datetime import date

    from settlesim.server.ledger import StoredItem, StoredSettlement
    from settlesim.server.model import YearlyTotals

    line = StoredItem("0001", "A-CONSULT-001", "HIS-1", fen, 1, fen, "A", 0, None, 0, 0, 0, fen)

    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        stored = StoredSettlement(
            settlement_id, "", msgid, CANCER_HOSPITAL, PERSON, DISEASE, date(2024, 6, 1), fen, fen, 0, 0,
            b"answer-" + settlement_id.encode(), full_self_pay=0, over_ceiling=0, pre_self_pay=0, in_scope=fen,
            ratio_bp=10000, items=(line,),
        )  # fmt: skip
        return stored, YearlyTotals(totals.deductible_used, totals.fund_paid + fen)

    return ledger.settle_async("", msgid, CANCER_HOSPITAL, f"h-{msgid}", PERSON, DISEASE, 2024, compute)


def _fund_paid(ledger: Ledger) -> int:
    return ledger.yearly_totals("", PERSON, DISEASE, 2024).fund_paid


def test_a_retry_in_the_same_batch_gets_the_settlement_whose_row_is_not_written_yet(tmp_path):
    """A second settle with the same msgid and request in the same batch (its first has not
    committed yet) is its replay, with the settlement as it reads back from the ledger
    afterwards, and is not applied twice."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def twice() -> list[object]:
            outcomes = await asyncio.gather(_settle(ledger, "M1", "S1"), _settle(ledger, "M1", "S-RETRY"))
            assert ledger._loop_commit().batches == 1
            return outcomes

        (first, new), (again, replayed) = asyncio.run(twice())
        assert (new, replayed) == (False, True)
        assert again == ledger.get("", CANCER_HOSPITAL, "S1") == ledger.get("", CANCER_HOSPITAL, msgid="M1")
        assert first.settlement_id == again.settlement_id == "S1"
        assert _fund_paid(ledger) == 1000 and ledger.counts() == {"settled": 1}
        assert ledger.check() == []
    finally:
        ledger.close()


def test_a_void_in_the_same_batch_finds_the_settlement_it_undoes(tmp_path):
    """A void of a msgid settled earlier in the same batch (not committed yet) undoes that
    settlement."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def settle_then_void() -> object:
            committer = ledger._loop_commit()
            _settled, void = await asyncio.gather(
                _settle(ledger, "M1", "S1"), ledger.void_async("", "V1", CANCER_HOSPITAL, "h-V1", "M1")
            )
            assert committer.batches == 1
            return void

        void = asyncio.run(settle_then_void())
        assert void.settlement is not None and void.settlement.settlement_id == "S1"
        assert ledger.get("", CANCER_HOSPITAL, "S1").status == "voided"
        assert _fund_paid(ledger) == 0 and ledger.check() == []
    finally:
        ledger.close()


@pytest.mark.parametrize("then_void", [False, True], ids=["settles", "settles-then-a-void"])
def test_a_row_that_cannot_be_written_spoils_no_other_write_of_its_batch(tmp_path, then_void):
    """Two settles of one batch that (by a fault of the caller) name the same settlement id:
    SQLite refuses the second one's row (UNIQUE) after its msgid's row was written, so the
    batch runs again with a SAVEPOINT a write; only the second settle fails (LEDGER_UNAVAILABLE:
    SQLite's refusal), and the first one, the other settle and a void after them commit. (A
    rewrite that wrote a batch's rows together at its end once merged the two into one row:
    this test found it.)"""
    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def batch() -> list[object]:
            writes = [_settle(ledger, "M1", "S1"), _settle(ledger, "M2", "S1"), _settle(ledger, "M3", "S3")]
            if then_void:
                writes.append(ledger.void_async("", "V1", CANCER_HOSPITAL, "h-V1", "NEVER-SENT"))
            return await asyncio.gather(*writes, return_exceptions=True)

        outcomes = asyncio.run(batch())
        assert outcomes[0][0].settlement_id == "S1" and outcomes[2][0].settlement_id == "S3"
        assert isinstance(outcomes[1], Refusal) and outcomes[1].reason == Reason.LEDGER_UNAVAILABLE
        assert ledger.find_message("", CANCER_HOSPITAL, "M2") is None  # nothing of it stored
        assert ledger.get("", CANCER_HOSPITAL, msgid="M3").settlement_id == "S3"
        if then_void:
            assert ledger.find_message("", CANCER_HOSPITAL, "V1") == ("void", "h-V1", "-")
        assert _fund_paid(ledger) == 2000 and ledger.check() == []
    finally:
        ledger.close()
