"""`settlesim bench`: the settlement path against its yardstick, in one run.

1. starts the noop server (server/noop.py: same contract and gRPC set-up, no
   rules, no storage) in both designs, sync (thread pool) and aio (one event
   loop, uvloop), and drives each with a closed loop of SettleVisit calls;
2. starts the reference server (`settlesim serve`, durable SQLite ledger) on a
   generated world and drives it with the same closed loop;
3. drives the reference server open-loop at a fraction (default 80 %) of the
   settle peak it just measured, to give the latency at that load.

With `replicas` > 1 it starts that many `settlesim serve` processes on one ledger
(a SQLite file on this host, or a PostgreSQL database: `db`) and the load
generator spreads its calls over them with gRPC's round_robin, as a client of
replicas would (clients/channels.py); the server CPU is all replicas' together.
On PostgreSQL it also prints the database's own commits/s and rows/s
(clients/db_figures.py).

For each it prints requests/s, p50/p95/p99 latency and the servers' CPU time
per request, then the ratio settle/noop against the faster noop design (both
are printed). With `rounds` > 1 the whole sequence repeats, interleaved, and
the medians follow. Load generator and servers share this
machine, as they would on a developer's laptop; the load generator sends
pre-encoded requests (a template's bytes plus a fresh msgid) so it spends as
little CPU as it can. It measures; it asserts nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from settlesim.clients import db_figures
from settlesim.clients.channels import open_aio_channel
from settlesim.clients.workload import Workload
from settlesim.server.parent_death import STOP_WITH_PARENT

SETTLE = "/settlesim.v1.SettlementService/SettleVisit"
TEMPLATES = 20_000  # distinct visits per run: requests touch many people


@dataclass(frozen=True)
class Figures:
    label: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: Sequence[float]
    cpu_seconds: float
    load_cpu_seconds: float = 0.0  # the load generator's own CPU (same machine)
    machine_cpu_seconds: float = 0.0  # every process on the machine, to show what else ran
    failed: dict[str, int] = field(default_factory=dict)  # errors by gRPC status
    first_details: dict[str, str] = field(default_factory=dict)  # what the first of each status said
    database: str = ""  # the database's own figures over the run (PostgreSQL), a line of its own

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else float("nan")

    @property
    def load_us_per_request(self) -> float:
        return self.load_cpu_seconds / self.requests * 1e6 if self.requests else float("nan")

    @property
    def cores(self) -> float:
        """Cores the server and the load generator kept busy. A run near all the machine's is
        bound by CPU (the noops); one well below is bound by something serial (the settle: the
        event loop's work on each wave of calls between its batches' COMMITs, docs/performance.md)."""
        return (self.cpu_seconds + self.load_cpu_seconds) / self.seconds if self.seconds else 0.0

    @property
    def other_cores(self) -> float:
        """Cores busy with neither server nor load generator (other jobs on a shared machine)."""
        other = self.machine_cpu_seconds - self.cpu_seconds - self.load_cpu_seconds
        return max(0.0, other / self.seconds) if self.seconds else 0.0

    def said(self) -> list[str]:
        """A line for each failing status: what its first call was told."""
        return [f"  (the first {code} said: {details!r})" for code, details in sorted(self.first_details.items())]

    def row(self) -> str:
        load_us = self.load_us_per_request
        return (
            f"{self.label:<26} {self.rps:>9.0f} {self.percentile(50):>8.1f} {self.percentile(95):>8.1f} "
            f"{self.percentile(99):>8.1f} {self.cpu_us_per_request:>10.0f} {load_us:>9.0f} "
            f"{self.cores:>7.2f} {self.other_cores:>7.2f} {self.errors:>7}"
        ) + (f"  ({', '.join(f'{code} {n}' for code, n in sorted(self.failed.items()))})" if self.failed else "")


HEADER = (
    f"{'run':<26} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} "
    f"{'load us':>9} {'cores':>7} {'other':>7} {'errors':>7}"
)


# --- requests, pre-encoded -----------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Requests:
    """SettleVisitRequest bytes: a template SettlementRequest (no msgid) with a
    fresh msgid field (number 1) prepended, wrapped as field 1. Protobuf parses
    fields in any order, so this is the message the template plus msgid makes."""

    def __init__(self, workload: Workload, seed: int, count: int = TEMPLATES) -> None:
        rng = random.Random(seed)
        self.templates = []
        for _ in range(count):
            request = workload.settlement_request(rng, "", operator="bench")
            self.templates.append((request.visit.institution_code, request.SerializeToString()))
        self.rng = random.Random(seed + 1)
        self.tag = f"{time.time_ns() % 10**12:012d}"
        self.n = 0

    def next(self) -> bytes:
        institution, body = self.templates[self.rng.randrange(len(self.templates))]
        self.n += 1
        msgid = f"{institution}{self.tag}{self.n:08d}".encode()
        inner = b"\x0a" + _varint(len(msgid)) + msgid + body
        return b"\x0a" + _varint(len(inner)) + inner


# --- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[str]
    target: str

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and all its child processes."""
        try:
            root = psutil.Process(self.process.pid)
            total = 0.0
            for p in (root, *root.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
            return total
        except psutil.NoSuchProcess:
            return 0.0


@dataclass
class Replicas:
    """Several servers of one platform, measured as one: the target lists them all
    (spread over with round_robin) and the CPU is theirs together."""

    servers: list[Server]

    @property
    def target(self) -> str:
        return ",".join(s.target for s in self.servers)

    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)


@contextmanager
def running_replicas(command: list[str], replicas: int) -> Iterator[Server | Replicas]:
    """`replicas` servers started one after the other from one command (each on a
    free port); one Server when `replicas` is 1."""
    with ExitStack() as stack:
        servers = [stack.enter_context(running(command)) for _ in range(replicas)]
        yield servers[0] if replicas == 1 else Replicas(servers)


@contextmanager
def running(command: list[str], timeout: float = 600) -> Iterator[Server]:
    """Start a server that prints 'serving on HOST:PORT'; stop it with SIGTERM. It stops by
    itself too if this process exits without stopping it (killed: server/parent_death.py)."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", STOP_WITH_PARENT: str(os.getpid())},
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        target = ""
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if match := re.search(r"serving on ([\d.]+:\d+)", line):
                target = match.group(1)
                break
            if not line and process.poll() is not None:
                raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}")
        if not target:
            raise TimeoutError(f"{' '.join(command)} did not start in {timeout} s")
        with grpc.insecure_channel(target) as channel:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
        yield Server(process, target)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- load ----------------------------------------------------------------------------------------


def _channels(target: str, count: int) -> list[grpc.aio.Channel]:
    # A local subchannel pool gives each channel its own connection, so several
    # server processes sharing the port (SO_REUSEPORT) all get connections.
    # Several replicas in `target`: each channel spreads its calls over them (round_robin).
    return [open_aio_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


async def _closed_loop(
    target: str, requests: Requests, concurrency: int, seconds: float, channels: int
) -> Loop:
    opened = _channels(target, channels)
    calls = [ch.unary_unary(SETTLE) for ch in opened]
    latencies: list[float] = []
    errors = 0
    failed: Counter[str] = Counter()
    stop_at = 0.0

    async def worker(i: int) -> None:
        nonlocal errors
        call = calls[i % len(calls)]
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call(requests.next(), timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
            except grpc.aio.AioRpcError as error:
                errors += 1
                failed[error.code().name] += 1
                FIRST_DETAILS.setdefault(error.code().name, error.details() or "")

    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for ch in opened:
        await ch.close()
    return len(latencies), errors, latencies, elapsed, dict(failed)


Loop = tuple[int, int, list[float], float, dict[str, int]]  # answers, errors, latencies (ms), seconds, errors by status
# What the first failed call of each status said (a run's Figures take and clear it): an error
# count alone does not tell gRPC's load shedding from a refusal of ours.
FIRST_DETAILS: dict[str, str] = {}


async def _open_loop(
    target: str, requests: Requests, rate: float, seconds: float, channels: int, max_in_flight: int = 2000
) -> Loop:
    """Send at a fixed rate whatever the answers do; latency counts from the
    planned send time, so a stalled server cannot hide its queue.

    Request i is planned at start + i/rate. A pool of sender coroutines takes the
    plans in order, each sleeping until its plan's time, so no task is made per
    request (that cost the load generator half again the CPU of the closed loop, on
    the cores the server shares). When every sender is waiting on an answer the
    next plan goes late, and its latency, counted from the plan, shows it. There are
    enough senders for a quarter second of answers in flight (at most `max_in_flight`)."""
    opened = _channels(target, channels)
    calls = [ch.unary_unary(SETTLE) for ch in opened]
    latencies: list[float] = []
    errors = 0
    failed: Counter[str] = Counter()
    total = int(rate * seconds)
    taken = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    perf_started = time.perf_counter()

    async def sender(k: int) -> None:
        nonlocal errors, taken
        call = calls[k % len(calls)]
        while taken < total:
            i = taken
            taken += 1
            planned = perf_started + i / rate
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await call(requests.next(), timeout=30)
                latencies.append((time.perf_counter() - planned) * 1000)
            except grpc.aio.AioRpcError as error:
                errors += 1
                failed[error.code().name] += 1
                FIRST_DETAILS.setdefault(error.code().name, error.details() or "")

    senders = max(channels, min(max_in_flight, int(rate * 0.25) + 32))
    await asyncio.gather(*(sender(k) for k in range(senders)))
    elapsed = loop.time() - started
    for ch in opened:
        await ch.close()
    return len(latencies), errors, latencies, elapsed, dict(failed)


def _machine_cpu() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def _measure(
    label: str, server: Server | Replicas, load: Coroutine[Any, Any, Loop], dsn: str | None = None
) -> Figures:
    """Run `load` and its figures; with `dsn` (a PostgreSQL ledger) the database's too."""
    before = db_figures.snapshot(dsn) if dsn else None
    cpu, own, machine = server.cpu_seconds(), time.process_time(), _machine_cpu()
    FIRST_DETAILS.clear()
    n, errors, latencies, elapsed, failed = asyncio.run(load)
    cpu_after, own_after, machine_after = server.cpu_seconds(), time.process_time(), _machine_cpu()
    database = db_figures.describe(before, db_figures.snapshot(dsn), elapsed, n) if before and dsn else ""
    return Figures(
        label,
        n,
        errors,
        elapsed,
        latencies,
        cpu_seconds=cpu_after - cpu,
        load_cpu_seconds=own_after - own,
        machine_cpu_seconds=machine_after - machine,
        failed=failed,
        first_details=dict(FIRST_DETAILS),
        database=database,
    )


def measure_closed(
    label: str,
    server: Server | Replicas,
    requests: Requests,
    concurrency: int,
    seconds: float,
    warmup: float,
    channels: int,
    dsn: str | None = None,
) -> Figures:
    asyncio.run(_closed_loop(server.target, requests, concurrency, warmup, channels))
    return _measure(label, server, _closed_loop(server.target, requests, concurrency, seconds, channels), dsn)


def measure_open(
    label: str,
    server: Server | Replicas,
    requests: Requests,
    rate: float,
    seconds: float,
    channels: int,
    dsn: str | None = None,
) -> Figures:
    return _measure(label, server, _open_loop(server.target, requests, rate, seconds, channels), dsn)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    world: Path | None = None  # a generated world; None: generate `persons` into a temporary folder
    persons: int = 1000
    seed: int = 1
    seconds: float = 10.0
    warmup: float = 2.0
    concurrency: int = 32
    channels: int = 4
    load_fraction: float = 0.8
    processes: int = 1  # processes of each server, the noop ones and the reference one (`serve --processes N`)
    server_args: tuple[str, ...] = ()  # extra `settlesim serve` arguments, e.g. ("--no-journal",)
    rounds: int = 1  # interleaved rounds (noop sync, noop aio, settle, settle at load); medians when > 1
    replicas: int = 1  # `settlesim serve` processes on one ledger, called round_robin
    db: str | None = None  # the ledger: a SQLite path or postgresql://...; None: a new SQLite file per round


NOOP_DESIGNS = ("sync", "aio")  # server/noop.py: thread pool, and grpc.aio + uvloop


@dataclass(frozen=True)
class Round:
    noops: dict[str, Figures]
    settle: Figures
    at_load: Figures

    @property
    def fastest_noop(self) -> Figures:
        return max(self.noops.values(), key=lambda f: f.rps)

    @property
    def ratio(self) -> float:
        return self.settle.rps / self.fastest_noop.rps if self.fastest_noop.rps else float("nan")

    @property
    def cpu_bound(self) -> float:
        """The settles/s the settle's CPU allows if it kept the cores the faster noop kept busy:
        the noop's cores over the settle's CPU a call, the server's and the load generator's
        (both on this machine). The noop is bound by CPU, so its cores are about what the machine
        gives a run: however the server spreads its work over threads or processes, the ratio
        passes `cpu_bound / noop` only by less CPU a settle or by more cores than the noop kept."""
        settle, noop = self.settle, self.fastest_noop
        cpu = settle.cpu_seconds + settle.load_cpu_seconds
        return noop.cores * settle.requests / cpu if cpu else float("nan")

    @property
    def bound_ratio(self) -> float:
        return self.cpu_bound / self.fastest_noop.rps if self.fastest_noop.rps else float("nan")


def _round(config: BenchConfig, world: Path, db: Path | str, persons: int, requests: Requests, out: Any) -> Round:
    noops: dict[str, Figures] = {}
    for design in NOOP_DESIGNS:
        noop_cmd = [sys.executable, "-m", "settlesim.server.noop", "--port", "0", "--design", design,
                    "--processes", str(config.processes)]  # fmt: skip
        with running(noop_cmd) as noop:
            noops[design] = measure_closed(
                f"noop {design}", noop, requests, config.concurrency, config.seconds, config.warmup, config.channels
            )
        out(noops[design].row())
        for line in noops[design].said():
            out(line)
    serve_cmd = [
        sys.executable, "-m", "settlesim", "serve", "--port", "0", "--world", str(world),
        "--db", str(db), "--log-level", "warning", *config.server_args,
        *(("--processes", str(config.processes)) if config.processes > 1 else ()),
    ]  # fmt: skip
    started = time.perf_counter()
    dsn = str(db) if db_figures.is_postgres(str(db)) else None
    with running_replicas(serve_cmd, config.replicas) as reference:
        servers = f"{config.replicas} reference servers" if config.replicas > 1 else "reference server"
        idle = [s.cpu_seconds() for s in reference.servers] if isinstance(reference, Replicas) else []
        out(f"({servers} loaded {persons} people and started in {time.perf_counter() - started:.1f} s)")
        settle = measure_closed(
            f"settle ({persons} people)",
            reference,
            requests,
            config.concurrency,
            config.seconds,
            config.warmup,
            config.channels,
            dsn,
        )
        out(settle.row())
        for line in settle.said():
            out(line)
        if settle.database:
            out(settle.database)
        rate = settle.rps * config.load_fraction
        at_load = measure_open(
            f"settle at {config.load_fraction:.0%} = {rate:.0f}/s",
            reference,
            requests,
            rate,
            config.seconds,
            config.channels,
            dsn,
        )
        out(at_load.row())
        for line in at_load.said():
            out(line)
        if at_load.database:
            out(at_load.database)
        if isinstance(reference, Replicas):  # each replica's share of the work, to see the spread
            shares = ", ".join(f"{s.cpu_seconds() - c:.1f}" for s, c in zip(reference.servers, idle, strict=True))
            out(f"(CPU seconds of each replica during the runs: {shares})")
    check = subprocess.run(
        [sys.executable, "-m", "settlesim", "ledger", "check", "--db", str(db)], capture_output=True, text=True
    )
    out(check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr.strip())
    result = Round(noops, settle, at_load)
    out(_ratio_line(result.ratio, {d: f.rps for d, f in noops.items()}, settle.rps))
    out(_bound_line(result))
    return result


def _ratio_line(ratio: float, noops: dict[str, float], settle: float) -> str:
    fastest = max(noops, key=lambda d: noops[d])
    against = ", ".join(f"{settle / rps:.2f} x noop {d}" for d, rps in noops.items())
    return f"ratio settle/noop requests/s: {ratio:.2f} (against the faster noop, {fastest}; {against})"


def _bound_line(result: Round) -> str:
    settle, noop = result.settle, result.fastest_noop
    load_us = settle.load_us_per_request
    return (
        f"CPU bound: at the faster noop's {noop.cores:.2f} cores, the settle's "
        f"{settle.cpu_us_per_request + load_us:.0f} us of CPU a call (server {settle.cpu_us_per_request:.0f}"
        f" + load {load_us:.0f}) allow {result.cpu_bound:.0f}/s, {result.bound_ratio:.2f} x the faster noop"
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _medians(rounds: list[Round], out: Any) -> None:
    out(f"medians of {len(rounds)} interleaved rounds:")
    out(f"{'run':<26} {'req/s':>9} {'p99 ms':>8} {'CPU us/req':>10} {'cores':>7} {'other':>7}")
    rows: list[tuple[str, list[Figures]]] = [(f"noop {d}", [r.noops[d] for r in rounds]) for d in NOOP_DESIGNS]
    rows += [(rounds[0].settle.label, [r.settle for r in rounds])]
    rows += [(f"settle at {rounds[0].at_load.label.split()[2]}", [r.at_load for r in rounds])]
    for label, figures in rows:
        out(
            f"{label:<26} {_median([f.rps for f in figures]):>9.0f} "
            f"{_median([f.percentile(99) for f in figures]):>8.1f} "
            f"{_median([f.cpu_us_per_request for f in figures]):>10.0f} "
            f"{_median([f.cores for f in figures]):>7.2f} {_median([f.other_cores for f in figures]):>7.2f}"
        )
    out(f"ratio settle/faster noop, median: {_median([r.ratio for r in rounds]):.2f} "
        f"(rounds: {', '.join(f'{r.ratio:.2f}' for r in rounds)})")  # fmt: skip
    out(f"CPU bound / faster noop, median: {_median([r.bound_ratio for r in rounds]):.2f} "
        f"(rounds: {', '.join(f'{r.bound_ratio:.2f}' for r in rounds)})")  # fmt: skip


def run(config: BenchConfig, out=print) -> list[Round]:
    scratch = Path(tempfile.mkdtemp(prefix="settlesim-bench-"))
    try:
        world = config.world
        if world is None:
            from settlesim.server.world_generate import generate_world

            world = scratch / "world"
            started = time.perf_counter()
            generate_world(world, config.persons, config.seed)
            out(f"generated {config.persons} people in {time.perf_counter() - started:.1f} s: {world}")
        workload = Workload.load(world)
        persons = len(workload.visits)
        requests = Requests(workload, config.seed)
        out(
            f"closed loop: {config.concurrency} calls in flight over {config.channels} connections, "
            f"{config.seconds:g} s after {config.warmup:g} s warm-up; SettleVisit on {persons} people; "
            f"{os.cpu_count()} CPUs shared by servers and load generator"
        )
        if config.processes > 1:
            out(f"every server (noop sync, noop aio, reference) runs {config.processes} processes on one port")
        if config.replicas > 1 or config.db:
            where = _describe_db(config.db)
            out(f"reference: {config.replicas} replica(s) of settlesim serve on {where}, called round_robin")
        out(HEADER)
        rounds = [
            _round(config, world, config.db or scratch / f"ledger-{n}.db", persons, requests, out)
            for n in range(config.rounds)
        ]
        if len(rounds) > 1:
            _medians(rounds, out)
        return rounds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _describe_db(db: str | None) -> str:
    if db is None:
        return "a new SQLite file per round (one host)"
    if db_figures.is_postgres(db):
        from urllib.parse import urlsplit

        parts = urlsplit(db)
        return f"PostgreSQL {parts.hostname}:{parts.port or 5432}{parts.path}"  # never the password
    return f"the SQLite file {db} (one host)"
