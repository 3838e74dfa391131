"""The call journal (调用日志): every SettlementService call the platform receives,
as plain data a check run grades (docs/his-check.md).

An entry says when, through which door ("grpc", or "national": the national JSON
door records the contract calls its envelopes make), which RPC, who called (the identity the transport
proved, the institution the request names), the session and check run it went
to, the msgid, the request, the outcome (status code + ErrorInfo reason, or the
answer), the server's latency and any injected fault. Requests and answers are
protobuf JSON (field names as in the protos, int64 as strings, defaults left
out), so a journal entry reads like what crossed the wire.

The settle path pays little for this: the interceptor only notes the objects of
the call (`CallNote`, with the answer's bytes as gRPC serialized them to send)
and puts the note on a queue; one writer thread turns notes into rows (the
request's bytes, the msgid, the reason out of the status trailers) and inserts
them in batches, gathered for GATHER_SECONDS, one commit per batch. What a row
need not hold to be found is worked out when it is read: the protobuf JSON and
the request hash. The journal is a SQLite file of its own beside the ledger
(`settlesim.db` -> `settlesim.journal.db`), WAL with synchronous=NORMAL: a crash
may lose the calls of the batch being gathered or written (at most the last
GATHER_SECONDS, more while the writer lags), never a settlement (the ledger is
the record of money; the journal is the record of conversation). `flush()` waits
until every call noted so far is stored; a check run calls it before it grades.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from settlesim.server.completion import to_completion
from settlesim.server.ledger.sqlite.errors import storage_refusal
from settlesim.v1 import settlement_service_pb2 as pb

log = logging.getLogger("settlesim.server.journal")

SERVICE_PREFIX = "/settlesim.v1.SettlementService/"
_STATUS_KEY = "grpc-status-details-bin"
_BATCH = 500
GATHER_SECONDS = 0.1  # the writer waits this long after a call for more to batch with it

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    time         TEXT NOT NULL,
    door         TEXT NOT NULL,
    rpc          TEXT NOT NULL,
    identity     TEXT NOT NULL,
    institution  TEXT NOT NULL,
    session      TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    msgid        TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    code         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    fault        TEXT NOT NULL,
    latency_ms   REAL NOT NULL,
    undelivered  INTEGER NOT NULL,
    request      BLOB,
    answer       BLOB
);
-- One index per filter a reader has (the console's pages, server/console/reads.py; his-check's
-- run; `journal show`): equality, then seq, so a page reads its rows newest first. Every index
-- costs each stored call a B-tree insert and each batch its rewritten pages, so there are no
-- others. Most calls have no check run and the default session: those two indexes hold only
-- the calls that have one (a query says `run_id != ''` / `session != ''` to use them).
CREATE INDEX IF NOT EXISTS journal_by_msgid ON journal (msgid);
CREATE INDEX IF NOT EXISTS journal_by_institution_seq ON journal (institution, seq);
CREATE INDEX IF NOT EXISTS journal_by_rpc_seq ON journal (rpc, seq);
CREATE INDEX IF NOT EXISTS journal_of_runs ON journal (run_id, seq) WHERE run_id != '';
CREATE INDEX IF NOT EXISTS journal_of_sessions ON journal (session, seq) WHERE session != '';
-- A journal written before 2026-12-01's session 10 had these as well (every call in each):
DROP INDEX IF EXISTS journal_by_run;
DROP INDEX IF EXISTS journal_by_institution;
DROP INDEX IF EXISTS journal_by_session_seq;
"""
COLUMNS = (
    "seq",
    "time",
    "door",
    "rpc",
    "identity",
    "institution",
    "session",
    "run_id",
    "actor",
    "msgid",
    "request_hash",
    "code",
    "reason",
    "fault",
    "latency_ms",
    "undelivered",
    "request",
    "answer",
)


class JournalFileError(Exception):
    """A journal file SQLite cannot use (not a database, damaged): one line naming
    the file and what to do; the ledger is not to blame."""


def damaged_journal(path: Path, error: BaseException) -> JournalFileError:
    return JournalFileError(
        f"the call journal {path} cannot be read ({error}); it holds only the record of calls, "
        f"never money: move it aside (mv {path} {path}.damaged) and the server starts a new one"
    )


def journal_path(ledger_path: Path | str) -> Path:
    """The journal file beside a ledger: settlesim.db -> settlesim.journal.db. A ledger on a
    database server (postgresql://...) has no "beside": its replicas' calls are journaled on
    each machine, in the user data dir (<database>.journal.db, $XDG_DATA_HOME/settlesim)."""
    if isinstance(ledger_path, str) and ledger_path.startswith(("postgresql://", "postgres://")):
        import platformdirs
        from psycopg.conninfo import conninfo_to_dict

        name = str(conninfo_to_dict(ledger_path).get("dbname") or "postgres")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return Path(platformdirs.user_data_dir("settlesim")) / f"{safe}.journal.db"
    path = Path(ledger_path)
    return path.with_name(f"{path.stem}.journal{path.suffix or '.db'}")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One call as the platform received and answered it."""

    seq: int
    time: str  # UTC ISO 8601, when the call arrived
    door: str  # "grpc", or "national" for the national JSON door's contract calls (docs/national.md)
    rpc: str
    identity: str  # the institution the transport proved; "" in --auth none
    institution: str  # the institution the request names
    session: str  # the ledger namespace the call used
    run_id: str  # the check run it belongs to, "" for none
    actor: str  # "his" (the hospital), or "setup" (his-check arranging a scenario)
    msgid: str  # the request's own msgid ("" for calls that carry none)
    request_hash: str  # SHA-256 of the request bytes (the SettlementRequest for 2206/2207)
    code: str  # gRPC status name, "OK" for an answer
    reason: str  # ErrorInfo reason of a refusal
    fault: (
        str  # an injected fault: error, commit_then_drop, unavailable, drop_after_commit, delay, figures_off
    )
    latency_ms: float
    undelivered: bool  # answered OK after the caller had gone (its deadline passed): the HIS got no answer
    request: dict[str, Any]
    answer: dict[str, Any] | None  # the answer made (also when an injected fault dropped it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalEntry:
        return cls(**{name: data[name] for name in COLUMNS})


@dataclass(slots=True)
class CallNote:
    """What the interceptor and the service know of a call while it runs; the
    writer thread makes a JournalEntry of it."""

    rpc: str
    request: Any
    door: str = "grpc"  # the door the call came through; the national JSON door notes "national"
    arrived: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    identity: str = ""
    institution: str = ""
    session: str = ""
    run: Any = None  # the runs.Run the call belongs to
    actor: str = "his"
    fault: str = ""  # a targeted fault applied (server/faults.py)
    targeted: Any = None  # the runs.TargetedFault that acts on the answer
    response: Any = None
    answer: bytes | None = None  # the response as gRPC serialized it to send (JournalInterceptor)
    code: grpc.StatusCode | None = None
    trailers: Any = None
    latency_ms: float = 0.0
    undelivered: bool = False
    done: Any = None  # called when the call has finished (runs count a run's calls in flight)
    delay_seconds: float = 0.0  # a targeted delay, slept before the call runs (server/faults.py)


_CURRENT: contextvars.ContextVar[CallNote | None] = contextvars.ContextVar("settlesim_call", default=None)


def current_note() -> CallNote | None:
    """The note of the call this thread (or task) is serving, if journaled."""
    return _CURRENT.get()


class Journal:
    """The journal store and its writer thread."""

    def __init__(
        self,
        path: Path | str,
        on_stored: Callable[[list[CallNote], list[tuple[Any, ...]], float], None] | None = None,
    ) -> None:
        """`on_stored(notes, rows, lag_seconds)` is called by the writer thread after
        each stored batch (the metrics count calls there, off the settle path)."""
        self.path = Path(path)
        self.on_stored = on_stored
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:  # "file is not a database", damage
            raise damaged_journal(self.path, error) from None
        self._queue: queue.SimpleQueue[CallNote | threading.Event | None] = queue.SimpleQueue()
        self._hurry = threading.Event()  # flush() and close() cut the writer's gathering short
        self._lock = threading.Lock()  # one connection, shared by the writer and the readers
        # Entries the writer could not store (disk full, I/O error), per run ("" for none):
        # a run graded on an incomplete record would pass or fail on calls nobody saw.
        self._lost: dict[str, int] = {}
        # Answers returned but not yet serialized by gRPC, by id(response): the serializer
        # hands their bytes to the note, so the writer need not serialize them again.
        self.unsent: dict[int, CallNote] = {}
        self._writer = threading.Thread(target=self._write_batches, name="journal-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint every 10,000 pages (~40 MB of WAL), not 1,000: each batch rewrites the hot
        # pages of the table's and the indexes' right edges, copied into the file once where
        # they were copied ten times (the ledger does the same: docs/performance.md).
        db.execute("PRAGMA wal_autocheckpoint=10000")
        return db

    @property
    def connection(self) -> sqlite3.Connection:
        """For runs.RunStore, which keeps its table in this file."""
        return self._db

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    @contextlib.contextmanager
    def using(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for the journal's and the run store's
        reads and writes outside the writer thread: an SQLite error becomes the
        storage refusal (server/ledger/sqlite/errors.py) naming the journal file, never
        an INTERNAL/UNKNOWN status."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as error:
                raise storage_refusal(error, store=f"the call journal {self.path}") from error

    # --- the hot path: note, submit -----------------------------------------------------------

    def submit(self, note: CallNote) -> None:
        note.latency_ms = (time.perf_counter() - note.started) * 1000
        self._queue.put(note)

    def queue_depth(self) -> int:
        """Calls noted but not yet stored (approximate, as SimpleQueue.qsize is)."""
        return self._queue.qsize()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every call submitted so far is stored."""
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._hurry.set()
        self._writer.join(30)
        with self._lock:
            self._db.close()

    # --- the writer thread --------------------------------------------------------------------

    def _write_batches(self) -> None:
        stop = False
        clock = _Clock()
        while not stop:
            batch: list[CallNote] = []
            waiting: list[threading.Event] = []
            item = self._queue.get()
            if isinstance(item, CallNote) and self._queue.qsize() < _BATCH:
                # Let the calls of the next moments join this one: each commit rewrites the
                # hot pages of the table and its indexes, so a few large batches cost far
                # less than many small ones. A writer that lags (a full batch waiting) does
                # not wait; flush() and close() end the wait at once.
                self._hurry.wait(GATHER_SECONDS)
                self._hurry.clear()
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    batch.append(item)
                if stop or len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    for note in batch:  # the answers gRPC never serialized (a fault dropped them)
                        key = id(note.response)
                        if self.unsent.get(key) is note:
                            self.unsent.pop(key, None)
                    rows = [entry_of(note, clock) for note in batch]
                    self._store(rows)
                except Exception:  # a journal that cannot write must not stop the platform
                    log.exception("journal write failed; %d entries lost", len(batch))
                    with self._lock:
                        for note in batch:
                            run_id = note.run.run_id if note.run is not None else ""
                            self._lost[run_id] = self._lost.get(run_id, 0) + 1
                else:
                    if self.on_stored is not None:
                        lag = time.time() - min(note.arrived for note in batch)
                        try:
                            self.on_stored(batch, rows, lag)
                        except Exception:  # metrics must never stop the journal
                            log.exception("journal observer failed")
            for event in waiting:
                event.set()

    def _store(self, rows: list[tuple[Any, ...]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                f"INSERT INTO journal ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})",
                rows,
            )
            self._db.execute("COMMIT")

    def lost(self, run_id: str | None = None) -> int:
        """Entries the writer could not store since the server started: of one run,
        or all of them (`run_id=None`)."""
        with self._lock:
            return sum(self._lost.values()) if run_id is None else self._lost.get(run_id, 0)

    # --- queries ------------------------------------------------------------------------------

    def entries(self, **filters: Any) -> list[JournalEntry]:
        with self.using() as db:
            return list(query(db, **filters))


def query(
    db: sqlite3.Connection,
    *,
    institution: str = "",
    run_id: str = "",
    rpc: str = "",
    msgid: str = "",
    since: str = "",
    until: str = "",
    limit: int = 0,
) -> Iterator[JournalEntry]:
    """Entries in the order received, filtered by institution, run, RPC, msgid
    and time (ISO 8601 prefixes compare as text: `since=2026-12-01`)."""
    where, args = [], []
    for column, value in (("institution", institution), ("run_id", run_id), ("rpc", rpc), ("msgid", msgid)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if run_id:
        where.append("run_id != ''")  # the index of calls that have a run (SCHEMA)
    if since:
        where.append("time >= ?")
        args.append(since)
    if until:
        where.append("time < ?")
        args.append(until)
    sql = f"SELECT {', '.join(COLUMNS)} FROM journal"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq"
    if limit:
        sql += f" LIMIT {int(limit)}"
    for row in db.execute(sql, args):
        yield entry_of_row(row)


def entry_of_row(row: tuple[Any, ...]) -> JournalEntry:
    """A stored row (COLUMNS) as the entry readers see: request and answer decoded,
    the request hash worked out from the request bytes where the writer left it to
    the reader ("": it is computed when read, off the settle path)."""
    data = dict(zip(COLUMNS, row, strict=True))
    rpc, raw = data["rpc"], data["request"]
    request = _message(rpc, "input", raw)
    if not data["request_hash"]:
        data["request_hash"] = _request_hash(rpc, request, raw)
    data["request"] = (_as_dict(request) if request is not None else None) or {"undecodable": True}
    data["answer"] = _decoded(rpc, "output", data["answer"])
    data["undelivered"] = bool(data["undelivered"])
    return JournalEntry(**data)


def open_read_only(path: Path) -> sqlite3.Connection:
    """A journal file opened for `settlesim journal show|export`, read-only."""
    if not path.is_file():
        raise FileNotFoundError(f"no journal at {path} (the server writes it beside its ledger)")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


# --- turning a note into an entry (writer thread) ------------------------------------------------


_METHODS = pb.DESCRIPTOR.services_by_name["SettlementService"].methods_by_name


def _message(rpc: str, side: str, blob: bytes | None) -> Any:
    """Stored protobuf bytes as the message they were (None for none, or an unknown RPC)."""
    if blob is None or rpc not in _METHODS:
        return None
    method = _METHODS[rpc]
    return getattr(pb, (method.input_type if side == "input" else method.output_type).name).FromString(blob)


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _decoded(rpc: str, side: str, blob: bytes | None) -> dict[str, Any] | None:
    """Stored protobuf bytes as protobuf JSON (read side: grading, show, export)."""
    message = _message(rpc, side, blob)
    return None if message is None else _as_dict(message)


def _request_hash(rpc: str, request: Any, raw: bytes | None) -> str:
    """SHA-256 of the request bytes, of the SettlementRequest for 2206/2207: what a retry
    with the same msgid must repeat. The stored bytes are the request serialized, so
    parsing and serializing them again gives the bytes the call carried."""
    if request is None:
        return hashlib.sha256(raw).hexdigest() if raw is not None else ""
    hashed = request.request.SerializeToString() if rpc in _SETTLING else raw
    return hashlib.sha256(hashed).hexdigest()


_SETTLING = ("PreSettleVisit", "SettleVisit")  # their requests wrap a SettlementRequest


class _Clock:
    """UTC ISO 8601 of a time.time(), as datetime.isoformat(timespec="microseconds") writes
    it, with the part down to the second made once per second (the writer's rows
    arrive in order, so nearly every row reuses it)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second, self._prefix = -1, ""

    def iso(self, when: float) -> str:
        second = int(when)
        micro = round((when - second) * 1e6)  # as datetime rounds: the fraction, half to even
        if micro == 1_000_000:
            second, micro = second + 1, 0
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{micro:06d}+00:00"


def _outcome(code: grpc.StatusCode | None, trailers: Any) -> tuple[str, str, str]:
    """(code name, ErrorInfo reason, fault kind from its metadata)."""
    reason = fault = ""
    for key, value in trailers or ():
        if key == _STATUS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, fault = info.reason, info.metadata.get("fault", "")
    return (code.name if code is not None else "UNKNOWN"), reason, fault


def entry_of(note: CallNote, clock: _Clock | None = None) -> tuple[Any, ...]:
    """The row of a finished call (column order of COLUMNS[1:]). Only what must be
    indexed or cannot be known later is worked out here, in the writer thread that
    shares the GIL with the loop: the request hash is left to the reader ("")."""
    # Bytes, not JSON: serializing is C code, MessageToDict is Python and would cost
    # the settle path its share of the GIL; entries are decoded when read.
    request = note.request
    if hasattr(request, "SerializeToString"):
        raw = request.SerializeToString()
        msgid = getattr(request.request if note.rpc in _SETTLING else request, "msgid", "")
    else:
        raw, msgid = None, ""
    if note.code is None:
        code, reason, fault = "OK", "", ""
    else:
        code, reason, fault = _outcome(note.code, note.trailers)
    response, answer = note.response, note.answer
    if answer is None and response is not None:
        answer = response.SerializeToString()
    run = note.run
    return (
        (clock or _Clock()).iso(note.arrived),
        note.door,
        note.rpc,
        note.identity,
        note.institution,
        note.session,
        run.run_id if run is not None else "",
        note.actor,
        msgid,
        "",  # request_hash: computed when read (entry_of_row)
        code,
        reason,
        note.fault or fault,
        round(note.latency_ms, 3),
        int(note.undelivered),
        raw,
        answer,
    )


# --- the interceptor ---------------------------------------------------------------------------


class JournalInterceptor(grpc.aio.ServerInterceptor):
    """Notes every SettlementService call for the journal. Outermost but for
    the audit log: it records what the caller got, injected faults included.
    The logic is in `journaled_call`; with it a call runs to its end even when
    the caller has gone (server/completion.py), so a late answer is noted."""

    def __init__(self, journal: Journal, after_call: Any = None) -> None:
        """`after_call(note, response, context)`: the targeted faults that act
        on an answer (server/faults.py), applied inside the journal's view."""
        self.journal, self.after_call = journal, after_call
        # The journaled handler of each method, while the inner handler stays the same object
        # (as server/limits.py does): no closures and handler made per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(SERVICE_PREFIX):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(method.removeprefix(SERVICE_PREFIX), handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary
        serialize, unsent = handler.response_serializer, self.journal.unsent

        def serialized(response: Any) -> bytes:
            """gRPC's serializing of the answer, its bytes kept for the journal's row."""
            raw = serialize(response)
            note = unsent.pop(id(response), None)
            if note is not None and note.response is response:
                note.answer = raw
            return raw

        async def noted(request: Any, context: Any) -> Any:
            return await journaled_call(self.journal, rpc, behavior, request, context, self.after_call)

        async def journaled(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await to_completion(noted, request, context)

        return grpc.unary_unary_rpc_method_handler(
            journaled,
            request_deserializer=handler.request_deserializer,
            response_serializer=serialized if serialize is not None else None,
        )


async def journaled_call(
    journal: Journal, rpc: str, behavior: Any, request: Any, context: Any, after_call: Any
) -> Any:
    note = CallNote(rpc, request)
    token = _CURRENT.set(note)
    try:
        response = await behavior(request, context)
        note.response = response
        if note.run is not None and after_call is not None:
            response = await after_call(note, response, context)
            note.response = response
        note.undelivered = not context.is_active()  # the caller's deadline passed while it ran
        journal.unsent[id(response)] = note  # (before submit: the writer takes it off if never sent)
        return response
    except BaseException:
        note.code, note.trailers = context.code(), context.trailing_metadata()
        if note.code is None:
            note.code = grpc.StatusCode.UNKNOWN
        raise
    finally:
        _CURRENT.reset(token)
        journal.submit(note)
        if note.done is not None:
            note.done()
