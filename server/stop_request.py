"""A stop asked for by a signal (SIGTERM, SIGINT) or by a thread, waited for by another.

A signal handler must not call `threading.Event.set`: Python runs the handler in the
main thread between two bytecodes, so a second signal arriving while the first
handler is inside `set()` runs `set()` again, which waits forever on the lock the
interrupted call holds. `serve --processes 2` hung that way when its parent sent a
child SIGTERM twice. Writing a byte to a pipe holds no lock, so a handler may be
interrupted anywhere; waiting is a `select` on the pipe, which never consumes the byte,
so any number of threads may wait and a stop once asked for stays asked for.

The kernel may hand a signal sent to the process to any of its threads (gRPC's, the
ledger's), and Python runs the handler only in the main thread, when it next runs bytecode:
a main thread blocked in `select` never did, and `settlesim serve` ignored a SIGTERM so
(once in a CI run; tests/test_stop_request.py sends one to another thread). `handle` gives
the process a wakeup fd, which Python's C-level handler writes to from whichever thread took
the signal; the main thread's wait watches it too, and each wake-up lets the handler run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time


class StopRequest:
    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.signum: int | None = None  # the last signal that asked, if a signal did
        self._wakeup: int | None = None  # the read end of the wakeup fd, once `handle` set one

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a stop is asked for already
            os.write(self._write, b"1")

    def on_signal(self, signum: int, _frame: object = None) -> None:
        """A signal handler (signal.signal(signal.SIGTERM, request.on_signal))."""
        self.signum = signum
        self.set()

    def handle(self, *signums: int) -> StopRequest:
        """Run `on_signal` for `signums` (from the main thread, as signal.signal requires). The
        process's wakeup fd becomes this request's: no event loop may handle signals in the
        main thread meanwhile (asyncio's sets its own)."""
        for signum in signums:
            signal.signal(signum, self.on_signal)
        if self._wakeup is None:
            self._wakeup, wakeup_write = os.pipe()
            os.set_blocking(self._wakeup, False)
            os.set_blocking(wakeup_write, False)
            previous = signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
            if previous != -1:  # an event loop's in this thread: it would no longer see its signals
                logging.getLogger("settlesim.server").warning("a wakeup fd was set already; replaced")
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop was asked for; False if `timeout` seconds passed first."""
        watched = [self._read]
        wakeup = self._wakeup if threading.current_thread() is threading.main_thread() else None
        if wakeup is not None:
            watched.append(wakeup)  # only the main thread runs handlers: only it is woken
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if until is None else max(0.0, until - time.monotonic())
            readable, _, _ = select.select(watched, [], [], left)  # a signal here: PEP 475 retries
            if self._read in readable:
                return True
            if not readable:
                return False
            # Another thread took a signal: its handler runs as this thread goes on, before the
            # next select, which then sees the stop if the handler asked for one.
            assert wakeup is not None  # only it can have been readable
            with contextlib.suppress(BlockingIOError):
                os.read(wakeup, 512)

    def is_set(self) -> bool:
        return self.wait(0)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a stop"
