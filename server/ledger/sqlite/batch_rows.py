"""A group-commit batch's settle rows, written once a batch instead of once a settle.

The loop's group commit (group_commit.py) runs a batch's settles one after another in one
transaction. Each settle's new rows (its settlement, its fee lines) and the totals it
changes (the person's yearly totals, the institution's yearly total) are kept here and
written when the batch ends, by multi-row statements: one INSERT a table and one UPSERT a
totals table, each total once per key with its last value (the batch's sum), instead of
six statements a settle. sqlite3 gives up the GIL around every statement's step and takes
it back after (executemany once a row): fewer steps, fewer hand-offs with the other
threads, and less per-statement work on the loop (docs/performance.md).

What a settle reads inside the batch sees what the batch's earlier settles kept here: the
person's totals are read in SQL and overlaid with the batch's (`person`), the institution's
total comes from the batch before SQL (`institution`). Anything else that reads or changes
these tables in the transaction (reverse, void, a msgid seen before, a door's own writes,
the end of the batch) has them written first (`write`). A batch whose statements fail is
rolled back and run again as before this module, each settle writing its rows itself inside
a SAVEPOINT of its own (group_commit.py), so a failing write still spoils no other.

Statements of 64, 32, ... 1 rows serve every batch size from sqlite3's statement cache (it
keys on the SQL text): a few dozen texts, not one per row count.
"""

from __future__ import annotations

import sqlite3
from itertools import chain
from typing import Any

from settlesim.server.ledger.contract import StoredSettlement
from settlesim.server.ledger.sqlite import rows
from settlesim.server.model import YearlyTotals

PersonKey = tuple[str, str, str, int]  # session, person_no, disease_code, year
InstitutionKey = tuple[str, str, int]  # session, institution_code, year

ROWS_PER_STATEMENT = 64  # the widest (settlements): 64 x 26 parameters, under SQLite's 32,766
_SIZES = (64, 32, 16, 8, 4, 2, 1)


def _statements(head: str, columns: int, tail: str = "", values: str = "") -> dict[int, str]:
    values = values or "(" + ", ".join("?" * columns) + ")"
    return {size: f"{head} VALUES {', '.join([values] * size)}{tail}" for size in _SIZES}


# CPython 3.11's sqlite3 binds str, int, float and bytearray directly; a None or a bytes goes
# through its adaptation, which looks `__adapt__` up on a type and formats the AttributeError
# it then drops: 3.3-4 k instructions a parameter (callgrind), against 0.8 k for a bytearray.
# So the answer goes in as a bytearray (the same BLOB) and a line's missing price ceiling as ''
# turned into NULL by the statement (a ceiling is an int, never text).
_SETTLEMENTS = _statements("INSERT INTO settlements", 26)
_ITEM = "(?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, ?, ?, ?)"  # the tenth: price_ceiling
_ITEMS = _statements("INSERT INTO settlement_items", 14, values=_ITEM)
_YEARLY = _statements("INSERT INTO yearly_totals", 10, rows.YEARLY_UPSERT)
_INSTITUTIONS = _statements("INSERT INTO institution_totals", 4, rows.INSTITUTION_UPSERT)


def write_rows(db: sqlite3.Connection, statements: dict[int, str], values: list[tuple[Any, ...]]) -> None:
    """`values` (one tuple a row) by statements of 64, 32, ... 1 rows."""
    start, size, left = 0, ROWS_PER_STATEMENT, len(values)
    while left:
        while size > left:
            size //= 2
        db.execute(statements[size], list(chain.from_iterable(values[start : start + size])))
        start += size
        left -= size


class BatchWriteFailed(Exception):
    """The batch's statements failed: the group commit runs the batch again, one SAVEPOINT a write."""


class BatchRows:
    """The rows and totals the batch's settles made so far, not yet in SQL."""

    __slots__ = ("institutions", "items", "people", "settlements")

    def __init__(self) -> None:
        self.settlements: list[tuple[Any, ...]] = []
        self.items: list[tuple[Any, ...]] = []
        # (session, person_no, year) -> disease -> totals: a person's rows of a year, as read
        self.people: dict[tuple[str, str, int], dict[str, YearlyTotals]] = {}
        self.institutions: dict[InstitutionKey, int] = {}

    def add(self, s: StoredSettlement, year: int, created_at: str) -> None:
        self.settlements.append(rows.settlement_values(s, year, created_at, bytearray(s.answer)))
        sid, items = s.settlement_id, self.items
        for item in s.items:
            items.append((sid, *item) if item[8] is not None else (sid, *item[:8], "", *item[9:]))

    def person(self, db: sqlite3.Connection, key: PersonKey) -> YearlyTotals:
        """The person's totals as SQL has them, with the batch's own on top."""
        session, person_no, disease, year = key
        kept = self.people.get((session, person_no, year))
        return rows.totals(db, session, person_no, disease, year, kept)

    def put_person(self, key: PersonKey, totals: YearlyTotals) -> None:
        session, person_no, disease, year = key
        self.people.setdefault((session, person_no, year), {})[disease] = totals

    def write(self, db: sqlite3.Connection) -> None:
        """Everything kept, into SQL (then nothing is kept); BatchWriteFailed if SQLite refused."""
        try:
            self._write(db)
        except sqlite3.Error as error:
            raise BatchWriteFailed(str(error)) from error

    def _write(self, db: sqlite3.Connection) -> None:
        if self.settlements:
            write_rows(db, _SETTLEMENTS, self.settlements)
            self.settlements = []
        if self.items:
            write_rows(db, _ITEMS, self.items)
            self.items = []
        if self.people:
            write_rows(db, _YEARLY, [
                rows.yearly_values(session, person_no, disease, year, totals)
                for (session, person_no, year), diseases in self.people.items()
                for disease, totals in diseases.items()
            ])  # fmt: skip
            self.people = {}
        if self.institutions:
            write_rows(db, _INSTITUTIONS, [(*key, total) for key, total in self.institutions.items()])
            self.institutions = {}
