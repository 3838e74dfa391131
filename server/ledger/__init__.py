"""The ledger: its contract (contract.py) and the stores behind it, chosen by `--db`.

`open_ledger(db)` opens a store and `check_ledger(db)` checks one without changing it:
a path (or a `file:` name) is the embedded SQLite ledger (server/ledger/sqlite/); a
`postgresql://` or `postgres://` URL is a PostgreSQL ledger (server/ledger/postgres/,
not in this settlesim yet: refused with LedgerNotAvailable, one line). `_postgres` below
is the one place a PostgreSQL store plugs in. docs/ledger.md "Package layout".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from settlesim.server.ledger.contract import (
    AnswerCheck,
    AuditAnchor,
    CheckReport,
    FeeLine,
    Figures,
    LedgerFileError,
    LedgerNotAvailable,
    LedgerStore,
    NationalWrites,
    ReconcileSums,
    StoredItem,
    StoredSettlement,
    Visit,
    VoidOutcome,
)

__all__ = [
    "AnswerCheck", "AuditAnchor", "CheckReport", "FeeLine", "Figures", "LedgerFileError",
    "LedgerNotAvailable", "LedgerStore", "NationalWrites", "ReconcileSums", "StoredItem",
    "StoredSettlement", "Visit", "VoidOutcome", "check_ledger", "is_database_url", "ledger_location",
    "open_ledger", "read_audit_anchors",
]  # fmt: skip

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(db: str | Path) -> bool:
    """A PostgreSQL URL rather than a file (a Path cannot be one: it folds the '//')."""
    return isinstance(db, str) and db.startswith(_POSTGRES_SCHEMES)


def open_ledger(db: str | Path, **options: Any) -> LedgerStore:
    """The ledger `db` names, opened for serving. `options` are the store's own
    (SQLite: integrity_check)."""
    if is_database_url(db):
        return _postgres(str(db)).open_ledger(str(db), **options)
    from settlesim.server.ledger.sqlite import SqliteLedger

    return SqliteLedger(Path(db), **options)


def check_ledger(db: str | Path, answer_check: AnswerCheck | None = None) -> CheckReport:
    """`settlesim ledger check`: every invariant of the ledger `db` names, read-only."""
    if is_database_url(db):
        return _postgres(str(db)).check_ledger(str(db), answer_check)
    from settlesim.server.ledger.sqlite import check_file

    return check_file(Path(db), answer_check)


def read_audit_anchors(db: str | Path) -> dict[str, AuditAnchor]:
    """Every audit-log anchor the ledger `db` keeps, by audit file path, read-only
    (`settlesim audit verify --db`)."""
    if is_database_url(db):
        return _postgres(str(db)).read_audit_anchors(str(db))
    from settlesim.server.ledger.sqlite import read_audit_anchors as read_file

    return read_file(Path(db))


def ledger_location(value: str) -> str | Path:
    """What `--db` / $SETTLESIM_DB names: a database URL as given, else a file path."""
    return value if is_database_url(value) else Path(value)


def _postgres(url: str) -> Any:
    """The PostgreSQL store's module (server/ledger/postgres/: `open_ledger(url, **options)`
    and `check_ledger(url, answer_check)`), or the refusal while there is none."""
    try:
        from settlesim.server.ledger import postgres  # type: ignore[attr-defined]
    except ImportError:
        raise LedgerNotAvailable(
            f"--db {_redacted(url)}: the PostgreSQL ledger store is not available in this settlesim "
            "yet; use a SQLite ledger file (--db PATH) meanwhile"
        ) from None
    return postgres


def _redacted(url: str) -> str:
    """The URL without its password (it may be printed)."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"
