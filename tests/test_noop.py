"""The benchmark's yardstick (server/noop.py) in N processes, as `serve --processes N`
runs the reference server: `settlesim bench --processes 2` holds two reference
processes to two noop ones. A real noop server on a real port; the kernel spreads
connections over the processes (SO_REUSEPORT), which this checks by each child's
own connections."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import grpc
import psutil
import pytest
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc

CONNECTIONS = 16  # all on one of two processes by chance: 2 x 2**-16


@pytest.mark.parametrize("design", ["sync", "aio"])
def test_noop_processes_share_the_port_and_stop_together(design: str) -> None:
    noop = subprocess.Popen(
        [sys.executable, "-m", "settlesim.server.noop", "--port", "0", "--design", design, "--processes", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert noop.stdout is not None
        line = noop.stdout.readline()
        match = re.search(r"serving on ([\d.]+):(\d+) \(2 processes\)", line)
        assert match, line
        target, port = f"{match.group(1)}:{match.group(2)}", int(match.group(2))
        channels = [
            grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]
        for n, channel in enumerate(channels):
            request = pb.SettlementRequest(msgid=f"H1101050000120260101{n:08d}")
            answer = pb_grpc.SettlementServiceStub(channel).SettleVisit(
                pb.SettleVisitRequest(request=request), timeout=10
            )
            assert answer.settlement.msgid == request.msgid
        children = psutil.Process(noop.pid).children()
        assert len(children) == 2
        served = [
            sum(1 for c in child.net_connections("tcp") if c.status == "ESTABLISHED" and c.laddr.port == port)
            for child in children
        ]
        assert all(count > 0 for count in served), served
        assert sum(served) == CONNECTIONS, served
        for channel in channels:
            channel.close()
        noop.send_signal(signal.SIGTERM)
        assert noop.wait(30) == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
    finally:
        if noop.poll() is None:
            noop.kill()
            noop.wait()
