"""`settlesim serve --processes 2`: two server processes on one port and one
ledger file stay one platform: a msgid settles once whichever process answers,
and the yearly totals equal the settlements in force."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
from conftest import CANCER_HOSPITAL, ServerProcess
from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger

QINGHAI = "63000000000000000001"  # people/cast.yaml: the 2021 reference case


def test_two_processes_share_port_and_ledger(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = tmp_path / "shared.db"
    served = server_process(db, "--processes", "2")
    assert len(psutil.Process(served.proc.pid).children()) == 2

    # Separate connections (a local subchannel pool each), so SO_REUSEPORT can
    # hand them to different processes.
    def his() -> Hospital:
        channel = grpc.insecure_channel(served.target, options=[("grpc.use_local_subchannel_pool", 1)])
        return Hospital(channel, CANCER_HOSPITAL)

    hospitals = [his() for _ in range(6)]
    msgids = [f"{CANCER_HOSPITAL}20251201000000{n:04d}" for n in range(12)]

    def settle(args: tuple[int, str]) -> str:
        n, msgid = args
        # Every msgid is sent twice, from two different connections.
        answer = hospitals[n % 6].settle(QINGHAI, "M00503", "2025-12-01", [Fee("A-CONSULT-001", 5000)], msgid)
        return answer.settlement.settlement_id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(settle, [(n, m) for n, m in enumerate(msgids + msgids)]))
    for his_ in hospitals:
        his_.close()
    assert ids[:12] == ids[12:]  # the retry got the same settlement, whichever process answered
    assert len(set(ids)) == 12
    assert served.stop() == 0

    ledger = Ledger(db)
    try:
        assert ledger.check() == []
        assert ledger.counts() == {"settled": 12}
    finally:
        ledger.close()


def test_children_stop_when_the_parent_is_killed(server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """SIGKILL of the parent cannot be forwarded; orphaned servers once kept the port open."""
    served = server_process(tmp_path / "orphan.db", "--processes", "2")
    children = psutil.Process(served.proc.pid).children()
    assert len(children) == 2
    served.proc.kill()
    served.proc.wait(10)
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [] and len(gone) == 2


def test_a_burst_of_sigterms_stops_a_child_and_does_not_hang_it(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A child's SIGTERM handler once set a threading.Event: a SIGTERM arriving inside the
    handler of the one before deadlocked the child, which never exited, so neither did
    the server (server/stop_request.py). With that handler this test failed 5 runs in 6."""
    served = server_process(tmp_path / "burst.db", "--processes", "2")
    children = psutil.Process(served.proc.pid).children()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):  # stopped before the last one
            for _ in range(300):
                child.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=15)  # the parent, not this test, reaps them
    assert alive == [], served.log_tail()
