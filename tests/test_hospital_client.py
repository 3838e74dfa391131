"""The mock hospital's msgids: national format, never repeated within a process."""

from __future__ import annotations

import re
import threading
from datetime import datetime

from settlesim.clients.hospital import MsgidFactory


def test_msgid_has_the_national_format():
    msgid = MsgidFactory("H11010500001", clock=lambda: datetime(2021, 12, 9, 10, 30, 5))()
    assert re.fullmatch(r"H11010500001202112091030050\d{3}", msgid)
    assert len(msgid) == 12 + 14 + 4


def test_two_factories_for_one_institution_never_repeat_a_msgid():
    """Two HIS objects for one institution created in the same second once handed out equal msgids."""
    first, second = MsgidFactory("H99000000001"), MsgidFactory("H99000000001")
    seen: list[str] = []
    lock = threading.Lock()

    def take(factory: MsgidFactory) -> None:
        for _ in range(3000):
            msgid = factory()
            with lock:
                seen.append(msgid)

    threads = [threading.Thread(target=take, args=(f,)) for f in (first, second, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 12000
