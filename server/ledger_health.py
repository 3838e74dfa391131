"""Storage failures of the ledger, classified in one place, and its write health.

A write that fails for storage reasons (disk full, I/O error, the writer thread
gone) is refused as UNAVAILABLE / LEDGER_UNAVAILABLE: nothing of it was stored
and the same msgid may be sent again later. A damaged file (SQLITE_CORRUPT,
SQLITE_NOTADB) is DATA_LOSS / LEDGER_DAMAGED, and for good: the ledger takes no
more calls until an operator restores the file (docs/errors.md "Storage
faults").

`WriteHealth` says whether writes commit, to a listener (the gRPC health
service: NOT_SERVING after a storage failure, SERVING after the next commit).
Clients may stop sending while the server is NOT_SERVING, so while it is
unhealthy a probe (a tiny write transaction) runs every PROBE_SECONDS to find
out when writes work again.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from collections.abc import Callable

from settlesim.server.rules.reasons import Reason, Refusal

log = logging.getLogger("settlesim.server")

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


class LedgerUnavailable(RuntimeError):
    """The writer thread has stopped: no write can commit any more."""


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


class WriteHealth:
    """Whether the ledger's writes commit. `failed` after a storage failure,
    `committed` after each successful commit; the listener hears every change.
    While unhealthy, `probe` (a tiny write transaction) runs every PROBE_SECONDS
    on a thread of its own until it succeeds. Damage is final: no probe, no
    recovery without a restart on a restored file."""

    PROBE_SECONDS = 1.0

    def __init__(self, probe: Callable[[], None]) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []
        self.healthy = True
        self.damage: Refusal | None = None
        self._prober: threading.Thread | None = None
        self._stopped = threading.Event()

    def listen(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(healthy)` on every change (and now, if already unhealthy)."""
        with self._lock:
            self._listeners.append(listener)
            healthy = self.healthy
        if not healthy:
            listener(False)

    def committed(self) -> None:
        if self.healthy:  # the hot path: one attribute read
            return
        with self._lock:
            if self.healthy or self.damage is not None:
                return
            self.healthy = True
        log.warning("ledger writes commit again: serving")
        self._tell(True)

    def failed(self, refusal: Refusal) -> None:
        with self._lock:
            if refusal.reason is Reason.LEDGER_DAMAGED and self.damage is None:
                self.damage = refusal
            was, self.healthy = self.healthy, False
            if self.damage is None and self._prober is None and not self._stopped.is_set():
                self._prober = threading.Thread(
                    target=self._probe_until_healthy, name="ledger-probe", daemon=True
                )
                self._prober.start()
        if was:
            log.error("ledger writes fail (%s): not serving", refusal.message)
            self._tell(False)

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            prober = self._prober
        if prober is not None:
            prober.join()

    def _probe_until_healthy(self) -> None:
        try:
            while not self._stopped.wait(self.PROBE_SECONDS):
                if self.healthy or self.damage is not None:
                    return
                try:
                    self._probe()
                except Exception as error:  # still failing: try again in a while
                    if is_damage(error):
                        self.failed(storage_refusal(error))
                        return
                    continue
                self.committed()
                return
        finally:
            with self._lock:
                self._prober = None
                again = not self.healthy and self.damage is None and not self._stopped.is_set()
            if again:  # a write failed between the probe's success and here
                self.failed(storage_refusal(LedgerUnavailable("writes failed again")))

    def _tell(self, healthy: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(healthy)
            except Exception:  # a listener's bug must not stop the ledger
                log.exception("ledger health listener failed")
