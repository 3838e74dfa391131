"""The no-op platform: the same contract and the same gRPC server set-up as the
reference server, but no rules and no storage. It is the benchmark's yardstick:
whatever the noop server cannot exceed on a machine is the cost of gRPC and
protobuf in Python there, not of settling.

    python -m settlesim.server.noop --port 0     # prints "settlesim noop serving on HOST:PORT"
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from settlesim.server.app import MAX_MESSAGE_BYTES
from settlesim.server.service import add_to_server
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc


def _settlement(request: pb.SettlementRequest, settlement_id: str = "") -> pb.Settlement:
    """An answer of the right shape: the patient pays everything, nothing is kept."""
    total = sum(item.amount_fen for item in request.items)
    return pb.Settlement(
        settlement_id=settlement_id,
        msgid=request.msgid,
        institution_code=request.visit.institution_code,
        person_no=request.visit.person.person_no,
        disease_code=request.visit.disease_code,
        visit_date=request.visit.visit_date,
        status=pb.SETTLEMENT_STATUS_SETTLED if settlement_id else pb.SETTLEMENT_STATUS_UNSPECIFIED,
        totals=pb.SettlementTotals(total_fen=total, patient_pays_fen=total),
    )


class NoopService(pb_grpc.SettlementServiceServicer):
    def VerifyRegistration(self, request: pb.VerifyRegistrationRequest, context: grpc.ServicerContext):
        return pb.VerifyRegistrationResponse(eligible=True, person_no=request.visit.person.person_no)

    def PreSettleVisit(self, request: pb.PreSettleVisitRequest, context: grpc.ServicerContext):
        return pb.PreSettleVisitResponse(settlement=_settlement(request.request))

    def SettleVisit(self, request: pb.SettleVisitRequest, context: grpc.ServicerContext):
        return pb.SettleVisitResponse(settlement=_settlement(request.request, "S" + request.request.msgid[-19:]))

    def ReverseSettlement(self, request: pb.ReverseSettlementRequest, context: grpc.ServicerContext):
        return pb.ReverseSettlementResponse(settlement=pb.Settlement(settlement_id=request.settlement_id))

    def VoidByMessageId(self, request: pb.VoidByMessageIdRequest, context: grpc.ServicerContext):
        return pb.VoidByMessageIdResponse()

    def GetSettlement(self, request: pb.GetSettlementRequest, context: grpc.ServicerContext):
        return pb.GetSettlementResponse(settlement=pb.Settlement(settlement_id=request.settlement_id))

    def Reconcile(self, request: pb.ReconcileRequest, context: grpc.ServicerContext):
        return pb.ReconcileResponse(matched=True)


def start_noop(host: str = "127.0.0.1", port: int = 0, max_workers: int = 16) -> tuple[grpc.Server, int]:
    """Started like app.start: thread pool, message limits, health service."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="noop"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_to_server(NoopService(), server)  # the reference server's handlers and deserializers
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m settlesim.server.noop", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    server, port = start_noop(args.host, args.port, args.workers)
    print(f"settlesim noop serving on {args.host}:{port}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
