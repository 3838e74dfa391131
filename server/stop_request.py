"""A stop asked for by a signal (SIGTERM, SIGINT) or by a thread, waited for by another.

A signal handler must not call `threading.Event.set`: Python runs the handler in the
main thread between two bytecodes, so a second signal arriving while the first
handler is inside `set()` runs `set()` again, which waits forever on the lock the
interrupted call holds. `serve --processes 2` hung that way when its parent sent a
child SIGTERM twice. Writing a byte to a pipe holds no lock, so a handler may be
interrupted anywhere; waiting is a `select` on the pipe, which never consumes the byte,
so any number of threads may wait and a stop once asked for stays asked for.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal


class StopRequest:
    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.signum: int | None = None  # the last signal that asked, if a signal did

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a stop is asked for already
            os.write(self._write, b"1")

    def on_signal(self, signum: int, _frame: object = None) -> None:
        """A signal handler (signal.signal(signal.SIGTERM, request.on_signal))."""
        self.signum = signum
        self.set()

    def handle(self, *signums: int) -> StopRequest:
        for signum in signums:
            signal.signal(signum, self.on_signal)
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop was asked for; False if `timeout` seconds passed first."""
        readable, _, _ = select.select([self._read], [], [], timeout)  # a signal: PEP 475 retries it
        return bool(readable)

    def is_set(self) -> bool:
        return self.wait(0)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a stop"
