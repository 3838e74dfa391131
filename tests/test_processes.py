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


def test_a_sigterm_while_the_children_start_stops_them_all_drained(tmp_path: Path) -> None:
    """The parent installed its handlers only once both children said they were up: a SIGTERM
    before that killed it (exit -15, in 6 runs of 6 once its children existed), unforwarded, and
    a child then failed writing to it. Now the signal waits, blocked, until each process has its
    handlers: the parent forwards it and every child drains once it is up."""
    import os
    import subprocess
    import sys
    import time

    log_file = tmp_path / "serve.log"
    with log_file.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--processes", "2",
             "--db", str(tmp_path / "l.db")],
            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_file.read_text()[-800:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_file.read_text()
    assert log.count("received SIGTERM, draining") == 2 and "failed" not in log, log[-800:]
