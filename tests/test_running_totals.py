"""The writer's copy of the institutions' running yearly totals
(server/ledger/sqlite/running_totals.py): a settle does not read back the institution's
total the writer wrote before, nor its msgid, and the copy is forgotten whenever it may be
wrong: another connection committed, a write was rolled back, the ledger is shared by
processes. Each safeguard is also switched off on purpose, to show that the test sees the
stale total it guards against (the institution's yearly bound, lowered to 2,500 fen here,
refuses or lets through a third 1,000-fen settlement)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date
from pathlib import Path

import pytest
from conftest import CANCER_HOSPITAL
from settlesim.server.ledger import StoredItem, StoredSettlement
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.ledger.sqlite.running_totals import RunningTotals
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Reason, Refusal

PERSON, DISEASE, DAY = "63000000000000000001", "M00503", date(2024, 3, 1)
LOOP = asyncio.new_event_loop()  # the ledger's group commit belongs to the loop it first ran on


def _settle(ledger: Ledger, msgid: str, writer: str, on_settled=None) -> YearlyTotals:  # type: ignore[no-untyped-def]
    """Settle 1000 fen (deductible 100, fund 600) for PERSON; the totals compute was given."""
    given: list[YearlyTotals] = []

    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        given.append(totals)
        stored = StoredSettlement(
            f"S-{msgid}", "", msgid, CANCER_HOSPITAL, PERSON, DISEASE, DAY, 1000, 600, 400, 100, b"answer",
            items=(StoredItem("1", "A-CONSULT-001", "", 1000, 1, 1000, "A", 0, None, 0, 0, 0, 1000),),
        )
        return stored, YearlyTotals(totals.deductible_used + 100, totals.fund_paid + 600)

    args = ("", msgid, CANCER_HOSPITAL, f"h-{msgid}", PERSON, DISEASE, DAY.year, compute, on_settled)
    if writer == "loop":
        LOOP.run_until_complete(ledger.settle_async(*args))
    else:
        ledger.settle(*args)
    return given[-1]


def _raise_after_writing(writes: object, stored: StoredSettlement) -> None:
    raise RuntimeError("the door's own write failed after the settlement's rows")


@pytest.fixture
def ledger(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = Ledger(tmp_path / "ledger.db")
    yield opened
    LOOP.run_until_complete(asyncio.sleep(0))
    opened.close()


def _refused(ledger: Ledger, msgid: str, writer: str) -> bool:
    try:
        _settle(ledger, msgid, writer)
    except Refusal as refusal:
        assert refusal.reason == Reason.LEDGER_LIMIT_EXCEEDED
        return True
    return False


@pytest.mark.parametrize("writer", ["loop", "thread"])
def test_a_settle_reads_neither_the_institutions_total_nor_its_msgid(ledger: Ledger, writer: str):
    _settle(ledger, "M1", writer)
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    try:
        assert _settle(ledger, "M2", writer).fund_paid == 600
    finally:
        ledger._db.set_trace_callback(None)
    reads = " ".join(s for s in statements if s.lstrip().upper().startswith("SELECT"))
    assert "institution_totals" not in reads and "messages" not in reads
    assert "yearly_totals" in reads  # the person's totals (and the account's year) are read every time
    written = {s.split()[2] for s in statements if s.startswith("INSERT")}
    assert written == {"messages", "institution_totals", "settlements", "settlement_items", "yearly_totals"}
    assert ledger.check() == []


@pytest.mark.parametrize("safeguard", [True, False])
def test_a_total_another_connection_committed_is_read_again(ledger: Ledger, safeguard: bool, monkeypatch):
    """Another writer of the file (here a plain connection) settled 1,000 fen more for the
    institution: the next transaction sees that another connection committed and forgets."""
    if not safeguard:  # deliberately wrong: never look at data_version
        monkeypatch.setattr(RunningTotals, "begin", lambda self, db, shared: None)
    ledger.MAX_INSTITUTION_YEAR_FEN = 2500
    _settle(ledger, "M1", "loop")
    with sqlite3.connect(ledger.path) as other:
        other.execute("UPDATE institution_totals SET total = total + 1000")
    assert _refused(ledger, "M2", "loop") is safeguard  # 1000 + 1000 + 1000 > 2500


@pytest.mark.parametrize("writer", ["loop", "thread"])
@pytest.mark.parametrize("safeguard", [True, False])
def test_a_total_of_a_write_rolled_back_is_forgotten(ledger: Ledger, writer: str, safeguard: bool, monkeypatch):
    """M2 fails after its rows were written (its door's own write failed): its 1,000 fen are
    rolled back in SQL, so the copy must not keep them either and M3 still fits."""
    if not safeguard:  # deliberately wrong: a rollback forgets nothing
        monkeypatch.setattr(RunningTotals, "forget", lambda self: None)
    ledger.MAX_INSTITUTION_YEAR_FEN = 2500
    _settle(ledger, "M1", writer)
    try:
        _settle(ledger, "M2", writer, on_settled=_raise_after_writing)
        second = "settled"
    except RuntimeError:
        second = "failed"
    except Refusal:  # the stale total refused it (the loop's run again with savepoints)
        second = "refused"
    outcome = (second, _refused(ledger, "M3", writer))
    if safeguard:
        assert outcome == ("failed", False)
        assert ledger.counts() == {"settled": 2}
        assert ledger.check() == []
    else:
        assert outcome != ("failed", False)


@pytest.mark.parametrize("safeguard", [True, False])
def test_a_reverse_drops_the_total_it_changed(ledger: Ledger, safeguard: bool, monkeypatch):
    if not safeguard:  # deliberately wrong: a reverse leaves the copy as it was
        monkeypatch.setattr(RunningTotals, "drop_for", lambda self, stored: None)
    ledger.MAX_INSTITUTION_YEAR_FEN = 2500
    _settle(ledger, "M1", "thread")
    _settle(ledger, "M2", "thread")
    ledger.reverse("", "R1", CANCER_HOSPITAL, "h-R1", "S-M1")
    # M2 alone is in force: M3 fits. (The writer thread, whose SAVEPOINT keeps a refusal as
    # it is; on the loop a refusal after the msgid's row runs the batch again, which forgets.)
    assert _refused(ledger, "M3", "thread") is not safeguard
    if safeguard:
        assert ledger.check() == []


def test_a_shared_ledger_keeps_no_copy(ledger: Ledger):
    """serve --processes N: other processes write the file, so the institution's total is
    read in the transaction every time."""
    ledger.shared = True
    _settle(ledger, "M1", "loop")
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    try:
        _settle(ledger, "M2", "loop")
    finally:
        ledger._db.set_trace_callback(None)
    assert any("FROM institution_totals" in s for s in statements)
    assert not ledger.running.enabled


@pytest.mark.parametrize("writer", ["loop", "thread"])
def test_a_refusal_after_the_msgids_row_leaves_the_msgid_unused(ledger: Ledger, writer: str):
    """The msgid's row goes in before the institution's yearly bound is checked: a settle
    refused there (LEDGER_LIMIT_EXCEEDED) takes its msgid's row back with it, so the same
    msgid settles once there is room, and the running totals count only what is stored."""
    ledger.MAX_INSTITUTION_YEAR_FEN = 1500  # room for one 1000-fen settlement
    _settle(ledger, "M1", writer)
    with pytest.raises(Refusal) as refused:
        _settle(ledger, "M2", writer)
    assert refused.value.reason == Reason.LEDGER_LIMIT_EXCEEDED
    assert ledger.find_message("", CANCER_HOSPITAL, "M2") is None
    ledger.MAX_INSTITUTION_YEAR_FEN = 10**16
    assert _settle(ledger, "M2", writer).fund_paid == 600  # M1's totals alone
    assert ledger.counts() == {"settled": 2}
    assert ledger.check() == []
