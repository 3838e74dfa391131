"""What a drain does with what brings it no work (server/app.py RunningServer.stop).

SIGTERM drains the calls being worked on for up to 5 s (the grace). gRPC's graceful stop also
waits for every stream still open, and so did the drain: a health Watch, or request streams that
never send their body, held every shutdown for the full 5 s, and those streams were then logged
as the clients' MALFORMED_MESSAGE. A request stalled at the national JSON door held the gRPC side
open for its 5 s: health said SERVING and new settles were taken and acknowledged after the
SIGTERM. The server runs in its own process (`settlesim serve`), as an operator runs it.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import grpc
from conftest import CANCER_HOSPITAL
from grpc_health.v1 import health_pb2, health_pb2_grpc
from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.national.app import PATH as NATIONAL_PATH
from settlesim.v1 import settlement_service_pb2 as pb
from test_server_limits import HangingStreams

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
QINGHAI_RULES, TUMOUR = "63000000000000000009", "M00503"  # as tests/test_server_settlement.py


class HealthWatch:
    """A health Watch stream held open, with when each status came (monotonic seconds)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.seen: list[tuple[float, int]] = []
        self.ended = threading.Event()
        self.how: str | None = None  # how the stream ended: "OK", or the status code's name
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.seen, "the Watch answered nothing"

    def _watch(self) -> None:
        try:
            for answer in health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest()):
                self.seen.append((time.monotonic(), answer.status))
            self.how = "OK"
        except grpc.RpcError as error:
            self.how = error.code().name
        finally:
            self.ended.set()

    def not_serving_at(self) -> float | None:
        return next((when for when, status in self.seen if status == NOT_SERVING), None)

    def close(self) -> None:
        self.channel.close()


def _messages(server, logger: str = "settlesim.server") -> list[str]:
    lines = [json.loads(line) for line in server.stderr_path.read_text(encoding="utf-8").splitlines()]
    return [line["message"] for line in lines if line["logger"] == logger]


def _settle_once(server) -> str:
    his = Hospital.connect(server.target, CANCER_HOSPITAL)
    try:
        return his.settle(QINGHAI_RULES, TUMOUR, "2025-10-01", [Fee("A-CONSULT-001", 7000)]).settlement.settlement_id
    finally:
        his.close()


def test_a_health_watch_is_told_not_serving_and_ended_not_waited_for(server_process, tmp_path):
    """Before: NOT_SERVING at once, but the server exited only after 5.2 s (the whole grace),
    waiting for the Watch to end."""
    server = server_process(tmp_path / "ledger.db")
    watch = HealthWatch(server.target)
    assert _settle_once(server)
    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    took = time.monotonic() - began
    assert watch.ended.wait(5) and watch.how == "OK", watch.how  # ended, not cut when the process went
    watch.close()
    assert took < 4.0, f"the drain took {took:.1f} s"  # the grace is 5 s
    assert watch.not_serving_at() is not None and watch.not_serving_at() - began < 1.0
    assert watch.seen[-1][1] == NOT_SERVING
    assert _messages(server)[-2:] == ["received SIGTERM, draining", "stopped"]


def test_streams_that_never_sent_a_body_have_the_grace_and_are_not_logged_as_the_clients_fault(
    server_process, tmp_path
):
    """A call whose request has not come may still bring work (a slow link), so it has the grace
    as any call has; then gRPC ends it. Those were logged as 50 warnings `call refused at the
    door: MALFORMED_MESSAGE`, as if their clients had ended them without a request."""
    server = server_process(tmp_path / "ledger.db")
    attack = HangingStreams(server.target, 50)
    attack.thread.start()
    assert attack.opened.wait(20)
    assert _settle_once(server)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    lines = [json.loads(line) for line in server.stderr_path.read_text(encoding="utf-8").splitlines()]
    drained = lines[[line["message"] for line in lines].index("received SIGTERM, draining") :]
    assert not [line for line in drained if line["level"] == "warning"], drained
    assert sum("refused at the door" in line["message"] for line in drained) == 50  # at info
    attack.thread.join(10)
    assert sum(attack.outcomes.values()) == 50 and not [k for k in attack.outcomes if k[0] == "answered"]


def _stalled_national_request(port: int) -> socket.socket:
    """A POST to the national door that promises 1,000 bytes of body and sends 8."""
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(
        f"POST {NATIONAL_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{\"infno\"".encode()
    )
    return stalled


def test_a_request_stalled_at_the_national_door_does_not_keep_grpc_taking_settles(server_process, tmp_path):
    """Before: health SERVING for 5.2 s after the SIGTERM, and every settle sent meanwhile
    acknowledged (517 at 100 a second in one run)."""
    server = server_process(tmp_path / "ledger.db", "--national-port", "0")
    lines = [server.proc.stdout.readline() for _ in range(2)]  # the console's, the door's
    door = re.search(r"national door on https?://[\d.]+:(\d+)/", lines[-1])
    assert door, lines
    national_port = int(door.group(1))
    stalled = _stalled_national_request(national_port)
    watch = HealthWatch(server.target)
    his = Hospital.connect(server.target, CANCER_HOSPITAL)
    try:
        his.settle(QINGHAI_RULES, TUMOUR, "2025-10-01", [Fee("A-CONSULT-001", 7000)])
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        request = his.settlement_request(QINGHAI_RULES, TUMOUR, "2025-10-02", [Fee("A-CONSULT-001", 7000)])
        try:
            late = his.stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=5)
        except grpc.RpcError as error:
            late = error.code()
        assert late == grpc.StatusCode.UNAVAILABLE, f"a settle 0.5 s after SIGTERM: {late}"
        assert server.proc.wait(20) == 0
    finally:
        his.close()
        stalled.close()
        watch.close()
    assert watch.not_serving_at() is not None and watch.not_serving_at() - began < 1.0
    assert _messages(server)[-1] == "stopped"
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in _messages(server, "uvicorn.error")
