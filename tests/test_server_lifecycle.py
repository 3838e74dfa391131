"""The server as an operator runs it: a separate process, health, reflection,
graceful shutdown, and a ledger that survives restarts."""

from __future__ import annotations

import subprocess
import sys

import grpc
from conftest import CANCER_HOSPITAL
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from settlesim.clients.hospital import Fee, Hospital
from settlesim.v1 import settlement_service_pb2 as pb

QINGHAI = "63000000000000000001"


def test_ledger_survives_restart_and_retry_still_replays(server_process, tmp_path):
    """Reference case figures (see test_server_settlement): fund 12963, patient 5000."""
    db = tmp_path / "restart.db"
    first = server_process(db)
    his = Hospital.connect(first.target, CANCER_HOSPITAL)
    request = his.settlement_request(
        QINGHAI, "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
    )
    settled = his.settle_request(request)
    his.close()
    assert first.stop() == 0  # SIGTERM drains and exits cleanly

    second = server_process(db)
    his = Hospital.connect(second.target, CANCER_HOSPITAL)
    stored = his.get(settled.settlement.settlement_id)
    assert stored.totals.fund_pays_fen == 12963 and stored.totals.patient_pays_fen == 5000
    again = his.settle_request(request)
    assert again.replayed and again.settlement.settlement_id == settled.settlement.settlement_id
    his.close()
    check = subprocess.run(
        [sys.executable, "-m", "settlesim", "ledger", "check", "--db", str(db)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout
    assert "1 settled" in check.stdout


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        service = pb.DESCRIPTOR.services_by_name["SettlementService"].full_name
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"settlesim.v1.SettlementService", "grpc.health.v1.Health"} <= names


def test_sigint_drains_and_logs_are_json_lines_with_their_ids(tmp_path):
    """Ctrl-C (SIGINT) stops the stub cleanly (exit 0), like SIGTERM; every log
    line is one JSON object, and a settle's ids are keys of their own."""
    import json
    import os
    import re
    import signal
    import time

    log_file = tmp_path / "serve.log"
    with log_file.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(tmp_path / "l.db")],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            port = re.search(r"serving on [\d.]+:(\d+)", proc.stdout.readline())
            assert port, "no start-up line"
            his = Hospital.connect(f"127.0.0.1:{port.group(1)}", CANCER_HOSPITAL)
            settled = his.settle(QINGHAI, "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000)])
            his.close()
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    lines = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    settle = next(entry for entry in lines if entry.get("rpc") == "SettleVisit")
    assert settle["settlement_id"] == settled.settlement.settlement_id
    # 5000 fen in scope all go to the unused 5000-fen Qinghai deductible: fund 0
    assert settle["msgid"] == settled.settlement.msgid and settle["fund_pays_fen"] == 0
    assert [entry["message"] for entry in lines][-2:] == ["received SIGINT, draining", "stopped"]


def test_a_sigterm_that_another_thread_takes_still_drains(server_process, tmp_path):
    """The kernel may hand `kill PID` to any thread of the process (gRPC's, the ledger's): here
    one of them is sent SIGTERM (tgkill) after a settle. The server drains and exits 0, as for a
    SIGTERM the main thread takes; once it slept on and the test waited 20 s in vain."""
    import ctypes
    import json
    import os
    import signal

    server = server_process(tmp_path / "ledger.db")
    his = Hospital.connect(server.target, CANCER_HOSPITAL)
    his.settle(QINGHAI, "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000)])
    his.close()
    pid = server.proc.pid
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    assert others, "the server runs threads besides its main one"
    libc = ctypes.CDLL(None, use_errno=True)  # the oldest of them: started with the server, lives to its end
    assert libc.tgkill(pid, others[0], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
    assert server.proc.wait(20) == 0
    last = [json.loads(line)["message"] for line in server.log_tail(2).splitlines()]
    assert last == ["received SIGTERM, draining", "stopped"]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_sigterm_as_soon_as_health_says_serving_still_drains(tmp_path):
    """Health answers SERVING, and calls are taken, as soon as gRPC listens: a SIGTERM then must
    drain like any other. The handlers were installed only after the start-up lines, and a
    SIGTERM in between killed the server (exit -15, no drain) in 3 of 6 runs and, in this test's
    3 rounds with the console starting after gRPC, in at least one round of every run."""
    import json
    import os
    import signal
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for round_no in range(3):
        port = _free_port()
        log_file = tmp_path / f"serve-{round_no}.log"
        with log_file.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "settlesim", "serve", "--port", str(port), "--console-port", "0",
                 "--db", str(tmp_path / f"l{round_no}.db")],
                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_reconnect_backoff_ms", 10)]) as ch:
                health = health_pb2_grpc.HealthStub(ch)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
                        if answer.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        time.sleep(0.001)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, f"round {round_no}: {log_file.read_text()[-500:]}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        last = [json.loads(line)["message"] for line in log_file.read_text(encoding="utf-8").splitlines()][-2:]
        assert last == ["received SIGTERM, draining", "stopped"]
