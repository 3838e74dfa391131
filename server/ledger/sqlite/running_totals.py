"""The single writer's own copy of the institutions' running yearly totals
(institution_totals), which every settle reads to bound the institution's year and writes
back: with the copy it reads the row only the first time.

(A person's yearly totals are read in the transaction every time: since schema 7 they
carry the sum of what the personal account paid that year over all the person's diseases,
which a settle of another disease changes.)

It holds only what this process's write connection wrote inside its own transactions, so
it is right exactly while nobody else writes the file:
- it is off for a ledger that other processes share (`serve --processes N`,
  `SqliteLedger.shared`): there the totals are read in the transaction;
- each transaction starts by asking SQLite whether any other connection committed
  since (`PRAGMA data_version`); if one did, the copy is forgotten;
- any rollback (a failed batch, a failed COMMIT, a write rolled back to its
  SAVEPOINT) forgets it, and reverse/void, which subtract in SQL, drop the row they
  touched.

While the loop's group commit runs a batch, `batch` keeps the settles' totals (and rows)
until the batch's end writes them (batch_rows.py); the reads here look there first.
"""

from __future__ import annotations

import sqlite3

from settlesim.server.ledger.contract import StoredSettlement
from settlesim.server.ledger.sqlite import rows
from settlesim.server.ledger.sqlite.batch_rows import BatchRows
from settlesim.server.model import YearlyTotals

PersonKey = tuple[str, str, str, int]  # session, person_no, disease_code, year
InstitutionKey = tuple[str, str, int]  # session, institution_code, year


class RunningTotals:
    MAX_ROWS = 1_000_000  # rows kept before the copy starts again

    def __init__(self) -> None:
        self.enabled = True
        self._institutions: dict[InstitutionKey, int] = {}
        self._data_version: int | None = None
        self.batch: BatchRows | None = None  # the group commit's batch, not yet written

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
        self._institutions.clear()
        self.batch = None  # a rollback took back what it had written; the rest was never written

    def drop_for(self, stored: StoredSettlement) -> None:
        """The row an undone settlement changed in SQL behind the copy's back (reverse, void)."""
        self._institutions.pop((stored.session, stored.institution_code, stored.visit_date.year), None)

    def person(self, db: sqlite3.Connection, key: PersonKey) -> YearlyTotals:
        """Read in the transaction (the personal account's year spans diseases)."""
        if self.batch is not None:
            return self.batch.person(db, key)
        return rows.totals(db, *key)

    def put_person(self, db: sqlite3.Connection, key: PersonKey, totals: YearlyTotals) -> None:
        if self.batch is not None:
            self.batch.put_person(key, totals)
        else:
            rows.put_totals(db, *key, totals)

    def institution(self, db: sqlite3.Connection, key: InstitutionKey) -> int:
        found = self._institutions.get(key) if self.enabled else None
        if found is None and self.batch is not None:
            found = self.batch.institutions.get(key)
        if found is not None:
            return found
        row = db.execute(
            "SELECT total FROM institution_totals WHERE session = ? AND institution_code = ? AND year = ?", key
        ).fetchone()
        return row[0] if row else 0

    def put_institution(self, db: sqlite3.Connection, key: InstitutionKey, total: int) -> None:
        if self.batch is not None:
            self.batch.institutions[key] = total
        else:
            db.execute("INSERT INTO institution_totals VALUES (?, ?, ?, ?)" + rows.INSTITUTION_UPSERT, (*key, total))
        if self.enabled:
            if len(self._institutions) >= self.MAX_ROWS:
                self._institutions.clear()
            self._institutions[key] = total
