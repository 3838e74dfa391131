"""PostgreSQL's storage failures, classified in one place: the refusal each travels as
(docs/errors.md "Storage faults").

The database unreachable (no pooled connection within the store's wait), a connection lost,
the server shutting down or starting up, a disk full, conflicts left after the store's
retries: UNAVAILABLE / LEDGER_UNAVAILABLE with a `cause`: nothing of the call was stored and
the same msgid may be sent again. PostgreSQL reporting corrupted data or an index (XX001,
XX002) is DATA_LOSS / LEDGER_DAMAGED, and for good, as SQLite's damage is.
"""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout
from settlesim.server.ledger.health import LedgerUnavailable
from settlesim.server.rules.reasons import Reason, Refusal

# SQLSTATEs by code, then by class (their first two characters), and what they mean here.
_CAUSES = {
    "57P01": "admin_shutdown",  # the server is shutting down (pg_ctl stop, a restart)
    "57P02": "crash_shutdown",
    "57P03": "starting_up",  # cannot_connect_now: recovery or start-up in progress
    "40001": "serialization",  # retried by the store first; this is what is left
    "40P01": "deadlock",
    "53100": "disk_full",
    "58030": "io_error",
    "25006": "read_only",  # a hot standby, or default_transaction_read_only
    "55P03": "busy",  # lock_not_available
    "57014": "timeout",  # statement_timeout, or cancelled
}
_CLASSES = {
    "08": "connection_lost",
    "53": "out_of_resources",
    "58": "io_error",
    "40": "serialization",
    "23": "constraint",  # the schema refused a row: a store's bug, never the request's
}
_DAMAGE = {"XX001", "XX002"}  # data_corrupted, index_corrupted


def is_damage(error: BaseException) -> bool:
    return isinstance(error, psycopg.Error) and error.sqlstate in _DAMAGE


def cause_of(error: BaseException) -> str:
    """The `cause` of a PostgreSQL failure; a lost or refused connection has no SQLSTATE."""
    if isinstance(error, PoolTimeout):  # no connection came within the store's wait
        return "unreachable"
    if isinstance(error, PoolClosed | LedgerUnavailable):
        return "closed"
    state = getattr(error, "sqlstate", None)
    if state:
        return _CAUSES.get(state) or _CLASSES.get(state[:2], "storage_error")
    return "connection_lost"


def storage_refusal(error: BaseException, *, maybe_stored: bool = False) -> Refusal:
    """The refusal a storage failure travels as (a Refusal stays itself). `maybe_stored`: the
    connection was lost while the write may have been committing, and the database could not be
    asked again; whether it committed is unknown, and the same msgid sent again answers it."""
    if isinstance(error, Refusal):
        return error
    if is_damage(error):
        return Refusal(
            Reason.LEDGER_DAMAGED,
            f"the ledger database reports damage ({error}); it takes no more calls until it is restored",
            cause="damaged",
        )
    cause = cause_of(error)
    detail = first_line(error)
    if maybe_stored:
        return Refusal(
            Reason.LEDGER_UNAVAILABLE,
            f"the ledger database went away while this was committing ({cause}: {detail}); whether it "
            "was stored is unknown: send it again later with the same msgid, which settles it once",
            cause=cause,
        )
    return Refusal(
        Reason.LEDGER_UNAVAILABLE,
        f"the ledger cannot store this now ({cause}: {detail}); nothing of it was stored: "
        "send it again later with the same msgid",
        cause=cause,
    )


def first_line(error: BaseException) -> str:
    """psycopg's messages run over several lines (hints, the server's address): the first."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
