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


# --- a batch's rows written together at its end (batch_rows.py) ----------------------------------


def _settle_of(ledger: Ledger, msgid: str, disease: str, fen: int, account: int, seen: list[object],
               institution: str = CANCER_HOSPITAL):  # type: ignore[no-untyped-def]  # fmt: skip
    """A settle of one class-A line of `fen`: the personal account pays `account`, the pooled
    fund the rest; `seen` gets the totals its pricing was given."""
    from datetime import date

    from settlesim.server.ledger import StoredItem, StoredSettlement
    from settlesim.server.model import YearlyTotals

    line = StoredItem("0001", "A-CONSULT-001", "HIS-1", fen, 1, fen, "A", 0, None, 0, 0, 0, fen)

    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        seen.append((msgid, totals.fund_paid, totals.account_paid, totals.account_paid_year))
        stored = StoredSettlement(
            f"S-{msgid}", "", msgid, institution, PERSON, disease, date(2024, 6, 1), fen, fen - account, account, 0,
            b"answer", full_self_pay=0, over_ceiling=0, pre_self_pay=0, in_scope=fen, ratio_bp=10000, items=(line,),
            pooled_pays=fen - account, serious_threshold=0, serious_pays=0, assistance_pays=0, account_pays=account,
        )  # fmt: skip
        return stored, YearlyTotals(
            totals.deductible_used, totals.fund_paid + fen - account, account_paid=totals.account_paid + account
        )

    return ledger.settle_async("", msgid, institution, f"h-{msgid}", PERSON, disease, 2024, compute)


def _statements(ledger: Ledger) -> list[str]:
    texts: list[str] = []
    ledger._db.set_trace_callback(texts.append)
    return texts


@pytest.mark.parametrize("shared", [False, True], ids=["one-process", "shared-file"])
def test_settles_of_one_person_in_one_batch_each_price_on_the_totals_the_earlier_ones_left(tmp_path, shared):
    """Four settles of one person, two diseases, in one batch whose totals are written once at
    its end: each is priced on what the earlier ones of the batch left (this disease's pooled
    fund and account, the account over both diseases), the yearly totals and the institution's
    (read in SQL for a file other processes share, `serve --processes N`) end as their sums, and
    each table gets one statement for the batch, not one a settle."""
    other = "M00504"
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.shared = shared
    seen: list[object] = []
    try:

        async def batch() -> None:
            await asyncio.gather(
                _settle_of(ledger, "M1", DISEASE, 1000, 100, seen),
                _settle_of(ledger, "M2", other, 2000, 300, seen),
                _settle_of(ledger, "M3", DISEASE, 500, 50, seen),
                _settle_of(ledger, "M4", other, 100, 0, seen),
            )
            assert ledger._loop_commit().batches == 1

        texts = _statements(ledger)
        asyncio.run(batch())
        # (msgid, this disease's pooled fund, its account, the account over both diseases):
        # M1 first (0s); M2 of the other disease sees M1's account only in the year's sum (100);
        # M3 sees M1's fund 1000 - 100 = 900 and account 100, the year's 100 + 300 = 400;
        # M4 sees M2's 2000 - 300 = 1700 and 300, the year's 400 + 50 = 450.
        assert seen == [("M1", 0, 0, 0), ("M2", 0, 0, 100), ("M3", 900, 100, 400), ("M4", 1700, 300, 450)]
        totals = ledger.yearly_totals("", PERSON, DISEASE, 2024), ledger.yearly_totals("", PERSON, other, 2024)
        assert [(t.fund_paid, t.account_paid) for t in totals] == [(900 + 450, 150), (1700 + 100, 300)]
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            (total,) = db.execute("SELECT total FROM institution_totals WHERE institution_code = ?",
                                  (CANCER_HOSPITAL,)).fetchone()  # fmt: skip
        assert total == 3600  # 1000 + 2000 + 500 + 100
        writes = [t.split(" VALUES")[0] for t in texts if t.startswith("INSERT")]
        assert writes.count("INSERT INTO settlements") == 1 and writes.count("INSERT INTO yearly_totals") == 1
        assert writes.count("INSERT INTO institution_totals") == 1 and writes.count("INSERT INTO messages") == 4
        assert ledger.check() == []
    finally:
        ledger.close()


def test_a_batch_of_any_size_is_stored_whole_and_in_order_by_a_few_statement_texts(tmp_path):
    """Batches of 1 to 70 settles are written by statements of 64, 32, ... 1 rows (sqlite3's
    statement cache keys on the text: a text per row count would miss it), every settlement
    and line stored once, in the order the settles came."""
    ledger = Ledger(tmp_path / "ledger.db")
    seen: list[object] = []
    try:
        texts = _statements(ledger)
        msgids: list[str] = []

        async def batches() -> None:
            for size in (1, 3, 12, 64, 70):
                batch = [f"B{size}-{i:02d}" for i in range(size)]
                msgids.extend(batch)
                before = ledger._loop_commit().batches
                await asyncio.gather(*(_settle_of(ledger, m, DISEASE, 10, 0, seen) for m in batch))
                assert ledger._loop_commit().batches == before + 1

        asyncio.run(batches())
        # The trace has the parameters bound: a statement's rows are its settlement ids.
        rows_a_statement = [t.count("'S-") for t in texts if t.startswith("INSERT INTO settlements")]
        assert set(rows_a_statement) <= {64, 32, 16, 8, 4, 2, 1}
        assert rows_a_statement == [1, 2, 1, 8, 4, 64, 64, 4, 2]  # batches of 1, 3, 12, 64, 70
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            assert [m for (m,) in db.execute("SELECT msgid FROM settlements ORDER BY rowid")] == msgids
            items = db.execute("SELECT settlement_id FROM settlement_items ORDER BY rowid").fetchall()
            assert [s for (s,) in items] == [f"S-{m}" for m in msgids]
        assert _fund_paid(ledger) == 10 * len(msgids) and ledger.check() == []
    finally:
        ledger.close()


def _with_ceilings(msgid: str):  # type: ignore[no-untyped-def]
    """A settlement of three class-A lines (400 + 600 + 700): no price ceiling, one of 0, one of 900."""
    from datetime import date

    from settlesim.server.ledger import StoredItem, StoredSettlement

    lines = tuple(
        StoredItem(f"000{n}", "A-CONSULT-001", f"HIS-{n}", fen, 1, fen, "A", 0, ceiling, 0, 0, 0, fen)
        for n, fen, ceiling in ((1, 400, None), (2, 600, 0), (3, 700, 900))
    )
    return StoredSettlement(
        f"S-{msgid}", "", msgid, CANCER_HOSPITAL, PERSON, DISEASE, date(2024, 6, 1), 1700, 1700, 0, 0,
        b"\x00answer\xff", full_self_pay=0, over_ceiling=0, pre_self_pay=0, in_scope=1700, ratio_bp=10000,
        items=lines,
    )  # fmt: skip


def test_a_batch_stores_a_missing_price_ceiling_as_null_and_the_answer_as_a_blob(tmp_path):
    """The batch's statements bind a missing price ceiling as '' that the statement turns into
    NULL, and the answer as a bytearray (batch_rows.py: sqlite3's adaptation of None and bytes
    is slow): the rows are what a settle written alone stores, NULL, integers and a BLOB."""
    from settlesim.server.model import YearlyTotals

    def compute(msgid: str):  # type: ignore[no-untyped-def]
        return lambda totals: (_with_ceilings(msgid), YearlyTotals(0, totals.fund_paid + 1700))

    def settle(msgid: str):  # type: ignore[no-untyped-def]
        return ledger.settle_async("", msgid, CANCER_HOSPITAL, f"h-{msgid}", PERSON, DISEASE, 2024, compute(msgid))

    ledger = Ledger(tmp_path / "ledger.db")
    try:

        async def batch() -> None:
            await asyncio.gather(settle("M1"), settle("M2"))
            assert ledger._loop_commit().batches == 1

        asyncio.run(batch())
        ledger.settle("", "M3", CANCER_HOSPITAL, "h-M3", PERSON, DISEASE, 2024, compute("M3"))  # the writer thread's
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            stored = db.execute(
                "SELECT price_ceiling, typeof(price_ceiling) FROM settlement_items ORDER BY rowid"
            ).fetchall()
            answers = db.execute("SELECT typeof(answer), answer FROM settlements ORDER BY rowid").fetchall()
        assert stored == [(None, "null"), (0, "integer"), (900, "integer")] * 3  # M1, M2 (the batch) as M3
        assert answers == [("blob", b"\x00answer\xff")] * 3
        assert ledger.check() == []
    finally:
        ledger.close()


def test_a_loop_stopped_while_its_batch_waited_for_another_writer_leaves_the_ledger_closable(tmp_path):
    """With `serve --processes N`, a batch whose write lock another process holds waits for it
    in the COMMIT thread, which hands the batch back to the loop once it has the lock and has
    begun. A drain whose grace ran out stops the loop regardless: the thread then kept the
    locks and an open transaction, and `close()` waited on them for ever. Nothing of such a
    batch was answered, so it is rolled back."""
    import fcntl
    import os
    import threading
    import time

    ledger = Ledger(tmp_path / "ledger.db")
    other_writer = os.open(f"{ledger.path}.lock", os.O_RDWR)  # as another process's ledger opens it
    fcntl.flock(other_writer, fcntl.LOCK_EX)
    async def write_and_wait() -> asyncio.Task[object]:
        write = asyncio.get_running_loop().create_task(ledger._loop_commit().run(_message("M-WAITING")))
        await asyncio.sleep(0.2)  # the batch is in the COMMIT thread, waiting for the lock
        return write

    loop = asyncio.new_event_loop()
    waiting = loop.run_until_complete(write_and_wait())
    assert not waiting.done()
    fcntl.flock(other_writer, fcntl.LOCK_UN)  # it gets the lock, begins, and calls the loop back...
    time.sleep(0.2)  # ... which has stopped
    closed = threading.Thread(target=ledger.close, daemon=True)
    closed.start()
    closed.join(10)
    os.close(other_writer)
    assert not closed.is_alive(), "close() waits on the locks of a batch the loop never ran"
    reopened = Ledger(tmp_path / "ledger.db")
    try:
        assert reopened.find_message("", CANCER_HOSPITAL, "M-WAITING") is None  # never answered
        assert reopened.check() == []
    finally:
        reopened.close()
        waiting.cancel()
        loop.close()
