"""The audit log's anchor in a SQLite ledger (server/audit.py, docs/security.md): the
head committed with every write transaction, and read-only reads of it (audit verify --db)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from settlesim.server.ledger.contract import AuditAnchor, LedgerFileError
from settlesim.server.ledger.sqlite.files import open_read_only
from settlesim.server.ledger.sqlite.schema import table_exists


def put_anchor(db: sqlite3.Connection, path: str, head: AuditAnchor, at: str) -> None:
    db.execute(
        "INSERT INTO audit_anchors VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
        "records = excluded.records, size = excluded.size, head = excluded.head, "
        "updated_at = excluded.updated_at",
        (path, head.records, head.size, head.digest, at),
    )


def retire_anchor(db: sqlite3.Connection, audit_path: str, at: str) -> None:
    db.execute(
        "UPDATE audit_anchors SET audit_path = audit_path || ' retired ' || ? WHERE audit_path = ?",
        (at, audit_path),
    )


def read_audit_anchors(path: Path | str) -> dict[str, AuditAnchor]:
    """Every audit anchor in the ledger at `path` (read-only), by audit file path;
    {} for a ledger from before version 3."""
    path = Path(path)
    try:
        db = open_read_only(path)
        try:
            return audit_anchors(db)
        finally:
            db.close()
    except (sqlite3.Error, OSError) as error:
        raise LedgerFileError(f"{path}: cannot read audit anchors: {error}") from None


def read_audit_anchor(path: Path | str, audit_path: Path | str) -> AuditAnchor | None:
    return read_audit_anchors(path).get(str(Path(audit_path).resolve()))


def audit_anchors(db: sqlite3.Connection, audit_path: str | None = None) -> dict[str, AuditAnchor]:
    if not table_exists(db, "audit_anchors"):
        return {}
    where, args = ("WHERE audit_path = ?", (audit_path,)) if audit_path is not None else ("", ())
    return {
        row[0]: AuditAnchor(*row[1:])
        for row in db.execute(f"SELECT audit_path, records, size, head FROM audit_anchors {where}", args)
    }
