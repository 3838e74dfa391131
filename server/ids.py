"""Settlement and visit ids (结算ID, 就诊ID): 20 characters, time-ordered.

A prefix letter, 13 hex digits of a strictly increasing microsecond clock, and 6
hex digits drawn once per process: ids made later sort later, so new rows go to
the right-hand end of the settlements' primary-key index (its pages stay in the
cache) instead of a random page each time, and two processes sharing a ledger
(`serve --processes N`) never make the same id (a clash would need the same
microsecond and the same 24 random bits). No system call per id: the random
part is drawn at start-up and again in each forked child.
"""

from __future__ import annotations

import os
import time


class TimeOrderedIds:
    def __init__(self) -> None:
        self._last = 0
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._suffix = os.urandom(3).hex().upper()

    def next(self, prefix: str) -> str:
        now = time.time_ns() // 1000
        self._last = now if now > self._last else self._last + 1
        return f"{prefix}{self._last:013X}{self._suffix}"


IDS = TimeOrderedIds()
