"""Starting and stopping the reference platform: a real gRPC server with the
standard health and reflection services, structured logs and graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from settlesim.server import auth, platform, reflection_v1
from settlesim.server.audit import AuditInterceptor, AuditLog, open_audit_log
from settlesim.server.door import settlement_handlers
from settlesim.server.faults import FaultInterceptor, FaultPlan, after_call
from settlesim.server.grpc_accepts import AcceptLoops
from settlesim.server.health_service import DrainingHealth
from settlesim.server.his_check_service import HisCheckService
from settlesim.server.http_server import DRAIN_SECONDS, HttpServer, start_http
from settlesim.server.journal import KEEP_CALLS, Journal, JournalInterceptor, journal_path
from settlesim.server.ledger import LedgerStore, open_ledger
from settlesim.server.limits import MAX_CONCURRENT_CALLS, REQUEST_BODY_SECONDS, CallLimits
from settlesim.server.metrics import Metrics
from settlesim.server.model import World
from settlesim.server.national import identity as national_identity
from settlesim.server.national.app import PATH as NATIONAL_PATH
from settlesim.server.national.app import create_app as create_national_app
from settlesim.server.national.client_certs import ClientCertificateProtocol
from settlesim.server.runs import RunRegistry
from settlesim.server.service import OFTEN_ACCEPTED, GenericOnly, SettlementService, register
from settlesim.server.stop_request import StopRequest
from settlesim.server.world_loader import load_world
from settlesim.v1 import his_check_pb2, his_check_pb2_grpc
from settlesim.v1 import settlement_service_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SettlementService"].full_name
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: 500 fee items fit many times over
# Limits that keep one client from hurting the others (docs/errors.md#server-limits).
MAX_METADATA_BYTES = 16 * 1024  # a call's request headers, gRPC's own included
MAX_STREAMS_PER_CONNECTION = 100  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: more wait in the client
KEEPALIVE_TIME_MS = 60_000  # the server pings a connection silent this long ...
KEEPALIVE_TIMEOUT_MS = 20_000  # ... and closes it when no answer comes within this
MIN_CLIENT_PING_INTERVAL_MS = 10_000  # a client pinging more often without data is sent GOAWAY
MAX_CONNECTION_IDLE_MS = 15 * 60_000  # a connection with no call this long is closed (GOAWAY)
# Calls gRPC core holds until the loop takes them. Past its default (1,000) core cancelled the
# rest, CANCELLED with no reason: a burst of 1,500 well-formed settles lost 18-52 that way, where
# the door would have answered them or refused them SERVER_BUSY, with its reason. At least
# 10,000, and five per call the door may work on at once: a few KB each while they wait.
MIN_PENDING_CALLS = 10_000
T = TypeVar("T")
INTEGRITY_CHECK_SKIPPED = (
    "the ledger's integrity check at start-up is skipped (--skip-integrity-check): "
    "run settlesim ledger check on it"
)

log = logging.getLogger("settlesim.server")


def default_db_path() -> Path:
    """~/.local/share/settlesim/settlesim.db (platformdirs' user data dir)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("settlesim")) / "settlesim.db"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    world_dir: Path | None = None  # None: the bundled default world
    db_path: str | Path | None = None  # a file or a database URL (server/ledger/); None: default_db_path()
    max_workers: int = 16  # the sync server's request threads; the event loop needs none (ignored)
    # x-settlesim-session sandboxes (docs/sessions.md). None: on with --auth none, off when the
    # server demands identity (token, mtls) unless the operator turns them on (serve --sessions).
    allow_sessions: bool | None = None
    # SQLite's integrity check of an existing ledger at start-up (docs/ledger.md);
    # off only for a ledger too large to wait for (serve --skip-integrity-check).
    integrity_check: bool = True
    options: dict[str, object] = field(default_factory=dict)
    # Identity, audit and faults (docs/security.md, docs/faults.md); all off by default.
    auth: str = "none"  # none | token | mtls
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # mutual TLS: hospitals' certificates must be signed by it
    audit_log: Path | None = None
    audit_fsync: bool = False
    audit_new_chain: bool = False  # the audit log was rotated on purpose: start a new chain
    faults: FaultPlan | None = None
    # Several processes on one port (serve --processes, server/processes.py).
    reuse_port: bool = False
    # Limits that keep one client from hurting the others (server/limits.py, docs/errors.md).
    max_concurrent_calls: int = MAX_CONCURRENT_CALLS
    request_body_seconds: float = REQUEST_BODY_SECONDS
    # The call journal and check runs (docs/his-check.md): serve --no-journal turns both off.
    journal: bool = True
    journal_keep: int = KEEP_CALLS  # the newest calls the journal keeps (and check runs'); 0: every call
    # The web console and /metrics on 127.0.0.1 (docs/console.md): None is off, 0 any free port.
    console_port: int | None = None
    console_port_fallback: bool = False  # the default console port is taken: use any free one
    console_token: str = ""  # "": no login; else HTTP Basic with this password
    console_reports: Path | None = None
    metrics: bool = True
    # The national JSON door (docs/national.md) on this port beside gRPC, same engine and
    # ledger; None: off (serve --national-port PORT turns it on, 0 for any free port).
    national_port: int | None = None


@dataclass
class RunningServer:
    """A server running on its own event loop in a background thread, so that
    synchronous code (tests, `serve`'s main thread waiting for a signal) can
    start and stop it."""

    server: grpc.aio.Server
    port: int
    world: World
    ledger: LedgerStore
    health: DrainingHealth
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    audit: AuditLog | None = None
    warnings: tuple[str, ...] = ()
    journal: Journal | None = None
    metrics: Metrics | None = None
    console: HttpServer | None = None
    national: HttpServer | None = None
    limits: CallLimits | None = None  # the door's: counts every call until it has ended
    accepts: AcceptLoops | None = None  # more requests for SettleVisit in gRPC core (grpc_accepts.py)

    @property
    def national_port(self) -> int:
        """The national door's port (0 when it is off)."""
        return self.national.port if self.national is not None else 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = DRAIN_SECONDS) -> None:
        """Drain in-flight calls, those whose client left included, for up to `grace` seconds
        (health says NOT_SERVING meanwhile), then close the
        journal, the audit log (it anchors its head in the ledger a last time) and the ledger.
        Every door stops taking work at once: the HTTP ones (console, national) are told first
        and waited for last, so that a request stalled there does not keep gRPC open."""
        until = time.monotonic() + grace
        doors = [door for door in (self.console, self.national) if door is not None]
        for door in doors:
            door.begin_stop(grace)
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._drain(grace), self.loop).result()
        for door in doors:  # before the loop stops: the national door's calls run on it
            door.join(until - time.monotonic())
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        if self.journal is not None:
            self.journal.close()
        if self.audit is not None:
            self.audit.close()  # anchors its head in the ledger a last time
        self.ledger.close()

    async def _drain(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        await self.health.enter_graceful_shutdown()
        if self.limits is not None:
            self.limits.stopping = True
        # gRPC waits for every open stream: health's Watch streams end now (health_service.py);
        # a call whose request has not come may still bring work, and has the grace as any.
        await self.server.stop(grace)
        # gRPC's drain is over once no call has a client; a call whose client left runs on to
        # its end (server/completion.py): wait for it too, within the same grace.
        while self.limits is not None and self.limits.in_flight and loop.time() < until:
            await asyncio.sleep(0.01)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where the platform has it (Linux, macOS), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a new event loop (uvloop where available)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def server_options(reuse_port: bool = False, max_calls: int = MAX_CONCURRENT_CALLS) -> list[tuple[str, Any]]:
    """gRPC core settings of every server here (the reference and the noop one):
    message sizes and the per-connection limits of docs/errors.md#server-limits."""
    pending = max(MIN_PENDING_CALLS, 5 * max_calls)
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        # One limit for request metadata: between gRPC's soft (8 KiB) and hard (16 KiB) ones a
        # call was refused at random, RESOURCE_EXHAUSTED with no reason.
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        # Count a connection's streams as HTTP/2 does (those the client has open), not those gRPC
        # core has not yet freed: with its default "overload protection" a client keeping 100
        # calls on one connection was refused thousands of calls a second (UNAVAILABLE, RST_STREAM
        # REFUSED_STREAM) while the loop freed finished calls (tests/test_stream_cap.py). The cap
        # on concurrent calls (SERVER_BUSY, limits.py) is the pushback on a server behind.
        ("grpc.http.overload_protection", 0),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # gRPC core now waits for a ping's answer this long (default 60 s), keepalive's included
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Pings on a connection with no call: the server's keepalive sends them (without, a dead
        # idle peer held its connection until the idle close), and a client's every 10 s or more
        # are allowed (without, gRPC allowed one each 2 hours and sent GOAWAY too_many_pings).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
    ]


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@dataclass
class _Parts:
    """What start() opens before the loop runs, closed again if start-up fails."""

    ledger: LedgerStore
    journal: Journal | None
    audit: AuditLog | None
    metrics: Metrics | None
    runs: RunRegistry | None
    limits: CallLimits

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.audit is not None:
            self.audit.close()
        self.ledger.close()


def sessions_allowed(config: ServerConfig) -> bool:
    """Sandboxes are on in the insecure stub, off by default once callers must prove who they are."""
    return config.allow_sessions if config.allow_sessions is not None else config.auth == "none"


def start(config: ServerConfig, world: World | None = None) -> RunningServer:
    """Start a server on a new event loop in a background thread; return once it listens."""
    world = world if world is not None else load_world(config.world_dir)
    warnings = auth.check_combination(config.auth, config.host, config.tls_cert, config.tls_key, config.client_ca)
    if not config.integrity_check:
        warnings = [*warnings, INTEGRITY_CHECK_SKIPPED]
    authenticate = auth.authenticator(config.auth, world.institutions, world.institution_tokens)
    sessions = sessions_allowed(config)
    if sessions and config.auth != "none":
        warnings.append(
            "session sandboxes are on (--sessions): each is an isolated copy of the ledger its "
            "institutions can settle in; answers from one name it (docs/sessions.md)"
        )
    ledger = open_ledger(config.db_path or default_db_path(), integrity_check=config.integrity_check)
    ledger.shared = config.reuse_port  # serve --processes: other processes write it too
    metrics = Metrics() if config.metrics else None
    journal = (
        Journal(
            journal_path(config.db_path or default_db_path()),
            on_stored=_counting(metrics),
            keep_calls=config.journal_keep,
        )
        if config.journal
        else None
    )
    if metrics is not None:
        ledger.on_commit = metrics.record_commit
        metrics.watch_queues(ledger.queue_depth, journal.queue_depth if journal is not None else None)
    runs = RunRegistry(journal) if journal is not None else None
    audit = None
    if config.audit_log:
        try:
            audit = open_audit_log(
                config.audit_log, ledger, fsync=config.audit_fsync, new_chain=config.audit_new_chain
            )
        except BaseException:
            ledger.close()
            if journal is not None:
                journal.close()
            raise
    parts = _Parts(
        ledger, journal, audit, metrics, runs, CallLimits(config.max_concurrent_calls, config.request_body_seconds)
    )
    loop = new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name="settlesim-loop", daemon=True)
    thread.start()
    try:
        server, port, health_servicer, service, accepts = asyncio.run_coroutine_threadsafe(
            _start_on_loop(config, world, parts, authenticate), loop
        ).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        parts.close()
        raise
    running = RunningServer(
        server, port, world, ledger, health_servicer, loop, thread, audit, tuple(warnings), journal, metrics,
        limits=parts.limits, accepts=accepts,
    )  # fmt: skip
    if config.console_port is not None:
        try:
            running.console = _start_console(config, world, ledger, metrics)
        except BaseException:
            running.stop(grace=0)
            raise
    if config.national_port is not None:
        # The gRPC door's identity, in the national door's terms (national/identity.py).
        identify = national_identity.for_mode(config.auth, world.institutions, world.institution_tokens)
        door = create_national_app(
            service.core, allow_sessions=sessions, journal=journal, core_loop=loop, identify=identify
        )
        try:
            running.national = start_http(
                door, config.host, config.national_port, name="national door",
                tls_cert=config.tls_cert, tls_key=config.tls_key, client_ca=config.client_ca,
                protocol=ClientCertificateProtocol if config.client_ca else None,
            )  # fmt: skip
        except BaseException:
            running.stop(grace=0)
            raise
    return running


async def _start_on_loop(
    config: ServerConfig, world: World, parts: _Parts, authenticate: auth.Authenticator | None
) -> tuple[grpc.aio.Server, int, DrainingHealth, SettlementService, AcceptLoops | None]:
    ledger, journal, audit, runs = parts.ledger, parts.journal, parts.audit, parts.runs
    service = SettlementService(
        world, ledger, allow_sessions=sessions_allowed(config), authenticate=authenticate, runs=runs
    )
    # The door (limits) always; audit, journal and faults only when asked for: an idle
    # feature costs the hot path nothing. Built once per method (server/door.py).
    handlers = settlement_handlers(
        service,
        parts.limits,
        audit=AuditInterceptor(audit, service.call_settings) if audit is not None else None,
        # The journal hands gRPC the answer's bytes (serialized once) unless the audit log outside it
        # reads the message.
        journal=(
            JournalInterceptor(journal, after_call, answers_as_bytes=audit is None) if journal is not None else None
        ),
        faults=FaultInterceptor(config.faults) if config.faults is not None and config.faults.active else None,
    )
    server = grpc.aio.server(
        # The synchronous handlers (the check runs, DescribePlatform) run in these threads: all
        # unary, each holds one only while it runs (reflection, whose streams stay open, runs on
        # the loop: server/reflection_v1.py).
        migration_thread_pool=futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="admin"),
        options=server_options(config.reuse_port, config.max_concurrent_calls),
    )
    # SettlementService first: the generic handlers are asked in order.
    adding = GenericOnly(server, OFTEN_ACCEPTED)
    register(handlers, adding)
    if journal is not None and runs is not None:
        admin = HisCheckService(world, ledger, journal, runs, service.call_settings)
        his_check_pb2_grpc.add_HisCheckServiceServicer_to_server(admin, adding)
    health_servicer = DrainingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, adding)
    his_check = his_check_pb2.DESCRIPTOR.services_by_name["HisCheckService"].full_name
    described = platform.add_to_server(world, adding)  # which world this is (docs/cases.md)
    reflection_v1.enable_server_reflection((SERVICE_NAME, his_check, described, health.SERVICE_NAME), adding)
    try:
        address = f"{config.host}:{config.port}"
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = auth.server_credentials(config.tls_cert, config.tls_key, config.client_ca)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc reports a failed bind this way
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port} (address in use or not local?)")
    await server.start()
    accepts = AcceptLoops.start(server, adding.registered)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_of = _Health(health_servicer, asyncio.get_running_loop())
    ledger.watch_health(functools.partial(health_of.tell, "ledger"))
    if audit is not None:
        audit.on_failing = lambda failing: health_of.tell("audit log", not failing)
    return server, port, health_servicer, service, accepts


def _counting(metrics: Metrics | None):  # type: ignore[no-untyped-def]
    """The journal writer's observer that counts stored calls (server/metrics.py)."""
    return metrics.record_calls if metrics is not None else None


def _start_console(
    config: ServerConfig, world: World, ledger: LedgerStore, metrics: Metrics | None
) -> HttpServer:
    from settlesim.server.console import ConsoleConfig, create_app

    db = config.db_path or default_db_path()
    app = create_app(
        ConsoleConfig(
            world, ledger, journal_path(db) if config.journal else None, metrics,
            config.console_token, config.console_reports,
        )
    )  # fmt: skip
    assert config.console_port is not None
    try:
        return start_http(app, "127.0.0.1", config.console_port, name="console")
    except OSError:
        if not config.console_port_fallback:
            raise
        log.warning("console port %d is taken; the console takes any free port", config.console_port)
        return start_http(app, "127.0.0.1", 0, name="console")


class _Health:
    """The server's health from its parts' (the ledger's writes, server/ledger/health.py;
    the audit log's records): NOT_SERVING while any of them fails, SERVING once none does.
    Told from any thread; the aio health service is set on its loop."""

    def __init__(self, servicer: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: the aio health service's; None for the synchronous one (set at once)."""
        self._servicer, self._loop = servicer, loop
        self._failing: set[str] = set()
        self._lock = threading.Lock()

    def tell(self, part: str, serving: bool) -> None:
        with self._lock:
            if serving:
                self._failing.discard(part)
            else:
                self._failing.add(part)
            status = (
                health_pb2.HealthCheckResponse.NOT_SERVING if self._failing else health_pb2.HealthCheckResponse.SERVING
            )
            if self._loop is None:
                for name in ("", SERVICE_NAME):
                    self._servicer.set(name, status)
                return
        loop = self._loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self._set(status)))

    async def _set(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self._servicer.set(name, status)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to grep, easy to ship. The ids a record
    carries (`extra={"fields": {...}}`: rpc, msgid, settlement_id, reason ...)
    are keys of their own, so a log shipper can index them."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# Young objects collected after this many allocations (CPython's default is 700): a settle makes
# a few hundred short-lived objects, and each collection's fixed cost came once every 2-3 settles.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """For a server process, once it has loaded its world and started: what exists now (the world:
    millions of objects with a million people) lives as long as the process, so collections stop
    scanning it (gc.freeze), and young collections come less often. Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def serve_forever(config: ServerConfig) -> int:
    """`settlesim serve`: run until SIGTERM or SIGINT, then drain and exit 0."""
    world = load_world(config.world_dir)  # the long part of a start with a big world: Ctrl-C stops it
    # Handled before the port opens: health answers SERVING, and calls are taken, as soon as gRPC
    # listens, and a SIGTERM then killed the server undrained (its calls not journaled). A stop
    # asked for during the rest of the start (the ledger's integrity check included, which takes
    # minutes on a big ledger: `--skip-integrity-check`) is carried out once the server is up.
    stopped = StopRequest().handle(signal.SIGTERM, signal.SIGINT)  # not an Event: see its module
    running = start(config, world)
    tune_gc()
    db = config.db_path or default_db_path()
    log.info(
        "serving world %r (digest %s, %d people, %d institutions) on %s:%d, ledger %s",
        running.world.name, running.world.digest[:12], len(running.world.people), len(running.world.institutions),
        config.host, running.port, db,
    )  # fmt: skip
    log.info(
        "auth %s, TLS %s, audit log %s, faults %s",
        config.auth,
        "mutual" if config.client_ca else "on" if config.tls_cert else "off",
        config.audit_log or "off",
        config.faults.describe() if config.faults is not None and config.faults.active else "off",
    )
    for warning in running.warnings:
        log.warning(warning)
    # A line for people and scripts, whatever the log format.
    print(f"settlesim serving on {config.host}:{running.port} (db {db})", flush=True)
    if running.console is not None:
        print(f"settlesim console on {running.console.url} (metrics at {running.console.url}/metrics)", flush=True)
    if running.national is not None:
        print(f"settlesim national door on {running.national.url}{NATIONAL_PATH}", flush=True)
    stopped.wait()
    log.info("received %s, draining", stopped.signal_name)
    running.stop()
    log.info("stopped")
    return 0
