"""SQLite's storage failures, classified in one place: the refusal each travels as.

A write that fails for storage reasons (disk full, I/O error, the writer thread
gone) is refused as UNAVAILABLE / LEDGER_UNAVAILABLE: nothing of it was stored
and the same msgid may be sent again later. A damaged file (SQLITE_CORRUPT,
SQLITE_NOTADB) is DATA_LOSS / LEDGER_DAMAGED, and for good: the ledger takes no
more calls until an operator restores the file (docs/errors.md "Storage
faults"). The call journal (server/journal.py, SQLite too) uses the same.
"""

from __future__ import annotations

import errno
import sqlite3

from settlesim.server.ledger.health import LedgerUnavailable
from settlesim.server.rules.reasons import Reason, Refusal

# SQLite's primary result codes (the low byte of an extended code) and what they mean here.
_CAUSES = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_CANTOPEN: "cannot_open",
    sqlite3.SQLITE_PERM: "permission",
    sqlite3.SQLITE_NOMEM: "out_of_memory",
    sqlite3.SQLITE_PROTOCOL: "busy",
}
_DAMAGE = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def is_storage_failure(error: BaseException) -> bool:
    """An error of the storage, not of the request nor a bug: SQLite's own, an
    OSError (the writers' flock), or the writer thread gone."""
    return isinstance(error, sqlite3.Error | OSError | LedgerUnavailable)


def is_damage(error: BaseException) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DAMAGE


def storage_refusal(error: BaseException, store: str = "") -> Refusal:
    """The refusal a storage failure travels as (see the module docstring).
    `store` names another file than the ledger (the call journal, where check
    runs are kept too): its refusals say so and carry it as metadata `store`."""
    if isinstance(error, Refusal):
        return error
    named = {"store": store} if store else {}
    if is_damage(error):
        return Refusal(
            Reason.LEDGER_DAMAGED,
            f"{store or 'the ledger file'} is damaged ({error}); it takes no more calls until it is restored",
            cause="damaged",
            **named,
        )
    if isinstance(error, LedgerUnavailable):
        cause = "writer_stopped"
    elif isinstance(error, OSError):  # the writers' flock beside the file
        cause = {errno.ENOSPC: "disk_full", errno.EIO: "io_error"}.get(error.errno or 0, "storage_error")
    else:
        code = getattr(error, "sqlite_errorcode", None)
        cause = _CAUSES.get(code & 0xFF, "storage_error") if code is not None else "storage_error"
    if store:
        return Refusal(
            Reason.LEDGER_UNAVAILABLE,
            f"{store} cannot be used now ({cause}: {error}); try again later",
            cause=cause,
            **named,
        )
    return Refusal(
        Reason.LEDGER_UNAVAILABLE,
        f"the ledger cannot store this now ({cause}: {error}); nothing of it was stored: "
        "send it again later with the same msgid",
        cause=cause,
    )
