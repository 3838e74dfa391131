"""The PostgreSQL ledger (`--db postgresql://...`): several `settlesim serve` replicas on one
database are one platform (docs/ledger.md "PostgreSQL").

schema.py (the tables, versioned and migrated at start-up), store.py (PostgresLedger: the
contract's LedgerStore on psycopg 3 and its pool), rows.py (a settlement's row), national.py
(the national visit flow's rows), errors.py (failures as refusals), check.py (`ledger check`),
copy.py (`ledger copy` between any two stores). The factory server/ledger/__init__.py calls
the three functions below.
"""

from __future__ import annotations

from typing import Any

from settlesim.server.ledger.contract import AnswerCheck, AuditAnchor, CheckReport, LedgerFileError
from settlesim.server.ledger.postgres.check import check_database
from settlesim.server.ledger.postgres.schema import SCHEMA_VERSION
from settlesim.server.ledger.postgres.store import PostgresLedger, redacted

__all__ = ["SCHEMA_VERSION", "PostgresLedger", "check_ledger", "open_ledger", "read_audit_anchors"]


def open_ledger(url: str, **options: Any) -> PostgresLedger:
    """The store for serving. `integrity_check` (SQLite's start-up check) has no meaning on a
    database server (its own checksums and tools check it) and is accepted and ignored."""
    options.pop("integrity_check", None)
    return PostgresLedger(url, **options)


def check_ledger(url: str, answer_check: AnswerCheck | None = None) -> CheckReport:
    return check_database(url, answer_check)


def read_audit_anchors(url: str) -> dict[str, AuditAnchor]:
    """Every audit anchor in the ledger, read-only (`settlesim audit verify --db URL`)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as db:
            rows = db.execute("SELECT audit_path, records, size, head FROM audit_anchors").fetchall()
    except psycopg.Error as error:
        raise LedgerFileError(f"{redacted(url)}: cannot read audit anchors: {error}") from None
    return {path: AuditAnchor(*rest) for path, *rest in rows}
