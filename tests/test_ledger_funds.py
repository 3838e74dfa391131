"""Schema version 7: the fund breakdown and the personal account in the SQLite ledger — five
settlement columns (pooled_pays, serious_threshold, serious_pays, assistance_pays, account_pays)
and four yearly counters. A version-6 file is upgraded in place; `ledger check` finds every new
counter or column out of step (each check shown failing on a deliberately broken copy)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace
from datetime import date

import pytest
from settlesim.server.ledger import StoredSettlement
from settlesim.server.ledger.sqlite import SCHEMA_VERSION
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.model import YearlyTotals

PERSON, DISEASE, INSTITUTION = "11000000000000000006", "M00503", "H46020000001"
FUND_COLUMNS = ("pooled_pays", "serious_threshold", "serious_pays", "assistance_pays", "account_pays")
COUNTERS = ("serious_threshold_used", "serious_paid", "assistance_paid", "account_paid")


def settle(ledger: Ledger, msgid: str, sid: str, *, funds: bool) -> StoredSettlement:
    """A 30,000-fen visit: with `funds`, pooled 20,000 + serious 3,000 + assistance 1,000 = fund 24,000,
    patient 6,000 of which the account pays 2,500 (threshold met 4,000); without, the version-6 shape
    (fund 24,000 all pooled, no fund columns)."""

    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        stored = StoredSettlement(sid, "", msgid, INSTITUTION, PERSON, DISEASE, date(2025, 4, 1), 30_000, 24_000,
                                  6_000, 0, b"answer")  # fmt: skip
        if not funds:
            return stored, replace(totals, fund_paid=totals.fund_paid + 24_000)
        stored = replace(stored, pooled_pays=20_000, serious_threshold=4_000, serious_pays=3_000,
                         assistance_pays=1_000, account_pays=2_500)  # fmt: skip
        after = replace(
            totals,
            fund_paid=totals.fund_paid + 20_000,
            serious_threshold_used=totals.serious_threshold_used + 4_000,
            serious_paid=totals.serious_paid + 3_000,
            assistance_paid=totals.assistance_paid + 1_000,
            account_paid=totals.account_paid + 2_500,
            account_paid_year=totals.account_paid_year + 2_500,
        )
        return stored, after

    stored, replayed = ledger.settle("", msgid, INSTITUTION, f"h-{msgid}", PERSON, DISEASE, 2025, compute)
    assert not replayed
    return stored


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def test_a_settlement_keeps_its_funds_and_a_reversal_gives_every_counter_back_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        first = settle(ledger, "M1", "S1", funds=True)
        assert (first.pooled_pays, first.serious_pays, first.assistance_pays, first.account_pays) == (
            20_000, 3_000, 1_000, 2_500,
        )  # fmt: skip
        settle(ledger, "M2", "S2", funds=True)
        # two visits: every counter twice; the account's year sum over the person's diseases
        totals = ledger.yearly_totals("", PERSON, DISEASE, 2025)
        assert totals == YearlyTotals(0, 40_000, 8_000, 6_000, 2_000, 5_000, 5_000)
        assert ledger.yearly_totals("", PERSON, "M00504", 2025).account_paid_year == 5_000  # another disease
        assert ledger.get("", INSTITUTION, "S1").account_pays == 2_500  # read back from its row
        ledger.reverse("", "R1", INSTITUTION, "h-R1", "S1")
        after = YearlyTotals(0, 20_000, 4_000, 3_000, 1_000, 2_500, 2_500)  # one visit's counters left
        assert ledger.yearly_totals("", PERSON, DISEASE, 2025) == after
        assert ledger.check() == []
    finally:
        ledger.close()


def test_a_version_6_ledger_gains_the_fund_columns_and_its_settlements_reverse_as_before(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    settle(ledger, "M1", "S1", funds=False)
    ledger.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # make it what version 6 left
        for column in FUND_COLUMNS:
            db.execute(f"ALTER TABLE settlements DROP COLUMN {column}")
        for column in COUNTERS:
            db.execute(f"ALTER TABLE yearly_totals DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 6")
        before = db.execute("SELECT * FROM settlements").fetchall()
    ledger = Ledger(path)
    try:
        assert ledger.upgraded_from == 6 and SCHEMA_VERSION == 10
        with closing(sqlite3.connect(path)) as db:
            assert columns(db, "settlements")[-5:] == list(FUND_COLUMNS)
            assert columns(db, "yearly_totals")[-4:] == list(COUNTERS)
            # every row as it was, the new columns NULL (the settlement's fund was all pooled)
            assert [row[:-5] for row in db.execute("SELECT * FROM settlements")] == before
            assert db.execute("SELECT pooled_pays, account_pays FROM settlements").fetchall() == [(None, None)]
        assert ledger.check() == []
        old = ledger.get("", INSTITUTION, "S1")
        assert (old.pooled_pays, old.pooled) == (None, 24_000)
        # its reversal takes its fund (all pooled) off fund_paid, nothing off the new counters
        ledger.reverse("", "R1", INSTITUTION, "h-R1", "S1")
        assert ledger.yearly_totals("", PERSON, DISEASE, 2025) == YearlyTotals()
        settle(ledger, "M2", "S2", funds=True)  # and a new settlement uses them
        assert ledger.check() == []
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("UPDATE yearly_totals SET account_paid = account_paid + 1",
         "threshold/serious/assistance/account (4000, 3000, 1000, 2501) but settlements in force sum to"),
        ("UPDATE yearly_totals SET serious_paid = serious_paid - 1",
         "threshold/serious/assistance/account (4000, 2999, 1000, 2500)"),
        ("UPDATE yearly_totals SET fund_paid = fund_paid + 4000", "deductible/fund (0, 24000)"),
        ("UPDATE settlements SET serious_pays = 2000",
         "pooled 20000 + serious 2000 + assistance 1000 != fund 24000"),
        ("UPDATE settlements SET account_pays = 6001", "account 6001 outside 0..patient 6000"),
    ],
)  # fmt: skip
def test_ledger_check_finds_each_fund_counter_out_of_step(tmp_path, damage, says):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    settle(ledger, "M1", "S1", funds=True)
    assert ledger.check() == []
    ledger.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(damage)
    ledger = Ledger(path)
    try:
        problems = ledger.check()
        assert any(says in p for p in problems), problems
    finally:
        ledger.close()


def test_the_file_is_not_called_version_7_without_its_columns(tmp_path):
    """tables_version: a file whose header says 7 but whose settlements lack the fund columns is refused."""
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for column in FUND_COLUMNS:
            db.execute(f"ALTER TABLE settlements DROP COLUMN {column}")
    from settlesim.server.ledger.contract import LedgerFileError

    with pytest.raises(LedgerFileError, match="tables are those of version 6"):
        Ledger(path)
