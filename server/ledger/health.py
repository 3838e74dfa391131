"""The ledger's write health, whatever the store (its storage failures are classified
by the store: server/ledger/sqlite/errors.py for SQLite).

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

import logging
import threading
from collections.abc import Callable

from settlesim.server.rules.reasons import Reason, Refusal

log = logging.getLogger("settlesim.server")

class LedgerUnavailable(RuntimeError):
    """The writer has stopped: no write can commit any more."""


class WriteHealth:
    """Whether the ledger's writes commit. `failed` after a storage failure,
    `committed` after each successful commit; the listener hears every change.
    While unhealthy, `probe` (a tiny write transaction) runs every PROBE_SECONDS
    on a thread of its own until it succeeds. Damage is final: no probe, no
    recovery without a restart on a restored file."""

    PROBE_SECONDS = 1.0

    def __init__(self, probe: Callable[[], None], classify: Callable[[BaseException], Refusal]) -> None:
        self._probe = probe
        self._classify = classify  # the store's storage_refusal
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
                    refusal = self._classify(error)
                    if refusal.reason is Reason.LEDGER_DAMAGED:
                        self.failed(refusal)
                        return
                    continue
                self.committed()
                return
        finally:
            with self._lock:
                self._prober = None
                again = not self.healthy and self.damage is None and not self._stopped.is_set()
            if again:  # a write failed between the probe's success and here
                self.failed(self._classify(LedgerUnavailable("writes failed again")))

    def _tell(self, healthy: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(healthy)
            except Exception:  # a listener's bug must not stop the ledger
                log.exception("ledger health listener failed")
