"""The single writer's own copy of the running totals it keeps in SQL: each person's
yearly totals per disease (yearly_totals) and each institution's yearly total
(institution_totals). A settle reads both and writes both back; with the copy it
reads neither from SQLite when it has seen the row before.

It holds only what this process's write connection wrote or read inside its own
transactions, so it is right exactly while nobody else writes the file:
- it is off for a ledger that other processes share (`serve --processes N`,
  `SqliteLedger.shared`): there the totals are read in the transaction;
- each transaction starts by asking SQLite whether any other connection committed
  since (`PRAGMA data_version`); if one did, the copy is forgotten;
- any rollback (a failed batch, a failed COMMIT, a write rolled back to its
  SAVEPOINT) forgets it, and reverse/void, which subtract in SQL, drop the rows they
  touched.
"""

from __future__ import annotations

import sqlite3

from settlesim.server.ledger.contract import StoredSettlement
from settlesim.server.ledger.sqlite import rows
from settlesim.server.model import YearlyTotals

PersonKey = tuple[str, str, str, int]  # session, person_no, disease_code, year
InstitutionKey = tuple[str, str, int]  # session, institution_code, year


class RunningTotals:
    MAX_ROWS = 1_000_000  # rows kept before the copy starts again (about 200 MB at most)

    def __init__(self) -> None:
        self.enabled = True
        self._people: dict[PersonKey, YearlyTotals] = {}
        self._institutions: dict[InstitutionKey, int] = {}
        self._data_version: int | None = None

    def begin(self, db: sqlite3.Connection, shared: bool) -> None:
        """At the start of a write transaction (after BEGIN): off for a shared ledger; else
        forget everything if another connection committed since this one last looked."""
        if shared:
            if self.enabled:
                self.enabled = False
                self.forget()
            return
        self.enabled = True
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self.forget()
            self._data_version = version

    def forget(self) -> None:
        self._people.clear()
        self._institutions.clear()

    def drop_for(self, stored: StoredSettlement) -> None:
        """The rows an undone settlement changed in SQL behind the copy's back (reverse, void)."""
        year = stored.visit_date.year
        self._people.pop((stored.session, stored.person_no, stored.disease_code, year), None)
        self._institutions.pop((stored.session, stored.institution_code, year), None)

    def person(self, db: sqlite3.Connection, key: PersonKey) -> YearlyTotals:
        found = self._people.get(key) if self.enabled else None
        return found if found is not None else rows.totals(db, *key)

    def put_person(self, db: sqlite3.Connection, key: PersonKey, totals: YearlyTotals) -> None:
        rows.put_totals(db, *key, totals)
        if self.enabled:
            if len(self._people) >= self.MAX_ROWS:
                self._people.clear()
            self._people[key] = totals

    def institution(self, db: sqlite3.Connection, key: InstitutionKey) -> int:
        found = self._institutions.get(key) if self.enabled else None
        if found is not None:
            return found
        row = db.execute(
            "SELECT total FROM institution_totals WHERE session = ? AND institution_code = ? AND year = ?", key
        ).fetchone()
        return row[0] if row else 0

    def put_institution(self, db: sqlite3.Connection, key: InstitutionKey, total: int) -> None:
        db.execute(
            "INSERT INTO institution_totals VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET total = excluded.total",
            (*key, total),
        )
        if self.enabled:
            if len(self._institutions) >= self.MAX_ROWS:
                self._institutions.clear()
            self._institutions[key] = total
