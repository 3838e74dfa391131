"""`settlesim ledger check` on a SQLite ledger: the file read without changing it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from settlesim.server.ledger.contract import AnswerCheck, CheckReport, LedgerFileError
from settlesim.server.ledger.sqlite import invariants
from settlesim.server.ledger.sqlite.files import open_read_only
from settlesim.server.ledger.sqlite.schema import EMPTY, require_ledger, user_version


def check_file(path: Path | str, answer_check: AnswerCheck | None = None) -> CheckReport:
    """Check the ledger in `path` without changing it: opened read-only (no
    schema, no journal mode switch, no lock file). Raises LedgerFileError, in one
    line, when the file is not a settlesim ledger this code can read (the same
    line a server gives). `answer_check` is a check this package cannot make
    itself: decoding the stored answers (server/stored_answers.py)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise LedgerFileError(EMPTY.format(path=path))
    try:
        db = open_read_only(path)
    except sqlite3.Error as error:
        raise LedgerFileError(f"{path}: cannot open read-only: {error}") from None
    try:
        try:
            db.execute("BEGIN")  # one snapshot for every query, even beside a running server
            version = user_version(db)
            require_ledger(db, path, version)
        except sqlite3.DatabaseError as error:  # "file is not a database" and the like
            raise LedgerFileError(f"{path} is not a settlesim ledger: {error}") from None
        problems = invariants.problems_of(db, answer_check)
        try:
            counts = invariants.counts(db)
            namespaces, owners = invariants.namespaces(db), invariants.owners(db)
        except sqlite3.DatabaseError:
            counts, namespaces, owners = {}, {}, {}  # already among the problems
        return CheckReport(problems, counts, version, namespaces, owners)
    finally:
        db.close()

