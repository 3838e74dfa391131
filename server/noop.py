"""The no-op platform: the same contract and the same gRPC server set-up as the
reference server, but no rules and no storage. It is the benchmark's yardstick:
whatever the noop server cannot exceed on a machine is the cost of gRPC and
protobuf in Python there, not of settling.

It comes in both server designs, so the benchmark can hold the reference server
to the faster of them: `sync` (grpc.server, a pool of request threads, the
design `settlesim serve` had before it moved to one event loop) and `aio`
(grpc.aio on uvloop, as `settlesim serve` runs now).

    python -m settlesim.server.noop --port 0              # "settlesim noop serving on HOST:PORT"
    python -m settlesim.server.noop --port 0 --design aio
    python -m settlesim.server.noop --port 0 --design aio --processes 2   # as `serve --processes 2`

With `--processes N` it runs N noop servers on one port (SO_REUSEPORT: the kernel
spreads the connections over them), so `settlesim bench --processes N` holds N
reference server processes to N noop ones, not to one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from settlesim.server.app import run_loop, server_options
from settlesim.server.grpc_accepts import AcceptLoops
from settlesim.server.parent_death import STOP_WITH_PARENT, stop_with_parent
from settlesim.server.service import OFTEN_ACCEPTED, GenericOnly, add_to_server
from settlesim.server.stop_request import StopRequest
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


class AioNoopService(pb_grpc.SettlementServiceServicer):
    """The same answers from coroutines, for the grpc.aio server."""

    async def VerifyRegistration(self, request: pb.VerifyRegistrationRequest, context: object):
        return pb.VerifyRegistrationResponse(eligible=True, person_no=request.visit.person.person_no)

    async def PreSettleVisit(self, request: pb.PreSettleVisitRequest, context: object):
        return pb.PreSettleVisitResponse(settlement=_settlement(request.request))

    async def SettleVisit(self, request: pb.SettleVisitRequest, context: object):
        return pb.SettleVisitResponse(settlement=_settlement(request.request, "S" + request.request.msgid[-19:]))

    async def ReverseSettlement(self, request: pb.ReverseSettlementRequest, context: object):
        return pb.ReverseSettlementResponse(settlement=pb.Settlement(settlement_id=request.settlement_id))

    async def VoidByMessageId(self, request: pb.VoidByMessageIdRequest, context: object):
        return pb.VoidByMessageIdResponse()

    async def GetSettlement(self, request: pb.GetSettlementRequest, context: object):
        return pb.GetSettlementResponse(settlement=pb.Settlement(settlement_id=request.settlement_id))

    async def Reconcile(self, request: pb.ReconcileRequest, context: object):
        return pb.ReconcileResponse(matched=True)


async def serve_aio_noop(
    host: str, port: int, ready: Callable[[int], None], reuse_port: bool = False
) -> None:
    """Started like app.start: one event loop, the same options, handlers and
    health service; runs until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=server_options(reuse_port))
    adding = GenericOnly(server, OFTEN_ACCEPTED)  # as app.start adds its services
    add_to_server(AioNoopService(), adding)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, adding)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    accepts = AcceptLoops.start(server, adding.registered)  # as app.start: more requests for SettleVisit
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    ready(bound)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await server.stop(1)
    del accepts  # kept until here: the loop holds its tasks only weakly


def start_noop(
    host: str = "127.0.0.1", port: int = 0, max_workers: int = 16, reuse_port: bool = False
) -> tuple[grpc.Server, int]:
    """The sync design: a thread pool, the same message limits, health service."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="noop"),
        options=server_options(reuse_port),
    )
    add_to_server(NoopService(), server)  # the reference server's handlers and deserializers
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, bound


def serve_processes(args: argparse.Namespace) -> int:
    """`args.processes` noop servers on one port, each its own process (started, not forked:
    nothing of gRPC crosses a fork); stops them all on SIGTERM or SIGINT."""
    from settlesim.server.processes import _reserve

    reserved = _reserve(args.host, args.port)  # fixes the port, even port 0, for the children
    port = reserved.getsockname()[1]
    command = [sys.executable, "-m", "settlesim.server.noop", "--host", args.host, "--port", str(port),
               "--design", args.design, "--workers", str(args.workers), "--reuse-port"]  # fmt: skip
    stopped = StopRequest().handle(signal.SIGTERM, signal.SIGINT)  # before the children: they are stopped
    env = {**os.environ, STOP_WITH_PARENT: str(os.getpid())}  # and stop by themselves if this one is killed
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(args.processes)]
    try:
        for child in children:  # each says "serving on" once it listens
            assert child.stdout is not None
            if "serving on" not in child.stdout.readline():
                raise RuntimeError(f"a noop server process exited with {child.wait()}")
        reserved.close()
        print(f"settlesim noop serving on {args.host}:{port} ({args.processes} processes)", flush=True)
        while not stopped.wait(0.5):
            if any(child.poll() is not None for child in children):
                return 1
        return 0
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m settlesim.server.noop", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16, help="request threads of the sync design")
    parser.add_argument("--design", choices=("sync", "aio"), default="sync")
    parser.add_argument("--processes", type=int, default=1, help="noop servers sharing the port (SO_REUSEPORT)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # one of --processes N
    args = parser.parse_args(argv)
    stop_with_parent()  # a benchmark's noop: SIGTERM when the bench exits (server/parent_death.py)
    if args.processes > 1:
        return serve_processes(args)
    if args.design == "aio":
        announce = lambda bound: print(f"settlesim noop serving on {args.host}:{bound}", flush=True)  # noqa: E731
        run_loop(serve_aio_noop(args.host, args.port, announce, args.reuse_port))
        return 0
    server, port = start_noop(args.host, args.port, args.workers, args.reuse_port)
    print(f"settlesim noop serving on {args.host}:{port}", flush=True)
    StopRequest().handle(signal.SIGTERM, signal.SIGINT).wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
