"""The call journal (调用日志): every SettlementService call the platform receives,
as plain data a check run grades (docs/his-check.md).

An entry says when, through which door ("grpc", or "national": the national JSON
door records the contract calls its envelopes make), which RPC, who called (the identity the transport
proved, the institution the request names), the session and check run it went
to, the msgid, the request, the outcome (status code + ErrorInfo reason, or the
answer), the server's latency and any injected fault. Requests and answers are
protobuf JSON (field names as in the protos, int64 as strings, defaults left
out), so a journal entry reads like what crossed the wire.

The settle path pays little for this: on the loop the journaled method keeps only
what it has at hand when the call ends (the request's bytes as they arrived, the
answer's bytes as serialized once to send, the msgid, a few scalars) and appends
them as one row to a list; one writer thread takes the list, gathered for
GATHER_SECONDS, finishes the rows (the arrival as text, a refusal's reason out of
its status trailers) and inserts them, a few INSERTs of many rows and one commit
per batch. What a row
need not hold to be found is worked out when it is read: the protobuf JSON and
the request hash. The journal is a SQLite file of its own beside the ledger
(`settlesim.db` -> `settlesim.journal.db`), WAL with synchronous=NORMAL: a crash
may lose the calls of the batch being gathered or written (at most the last
GATHER_SECONDS, more while the writer lags), never a settlement (the ledger is
the record of money; the journal is the record of conversation). `flush()` waits
until every call noted so far is stored; a check run calls it before it grades.
The writer keeps the newest KEEP_CALLS entries, and deletes older ones with its batches
(`Journal._prune`), except the calls of check runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from settlesim.server.ledger.sqlite.batch_rows import write_rows
from settlesim.server.ledger.sqlite.errors import storage_refusal
from settlesim.server.ledger.sqlite.files import switch_to_wal
from settlesim.v1 import settlement_service_pb2 as pb

log = logging.getLogger("settlesim.server.journal")

_STATUS_KEY = "grpc-status-details-bin"
_BATCH = 500
GATHER_SECONDS = 0.1  # the writer waits this long after a call for more to batch with it
# The journal's writer checkpoints its WAL every 1,000 pages (~4 MB; SQLite's default), not the
# 10,000 it did until session 14: a checkpoint of 40 MB and its fsyncs took 90-125 ms, and the
# ledger's COMMITs, on the same disk, waited behind it (16-26 ms instead of ~2), which made the
# settles' worst windows under an open loop. Measured: p99 at 2,000 settles/s (open loop), 7
# interleaved rounds, 52.6-91.5 ms -> 33.2-66.1 ms (docs/performance.md, session 14).
JOURNAL_CHECKPOINT_PAGES = 1000
# The journal keeps the calls among its newest KEEP_CALLS entries (by seq), and of the older
# ones only those of check runs (graded, recorded as cases): a load test journals ~3.5 KB a
# call, ~20 GB an hour at the bench's rate, which would fill a laptop's disk. Deleted rows'
# pages are reused, so the file stops growing at about this many calls.
KEEP_CALLS = 1_000_000
_PRUNE_ROWS = 5_000  # at most this many old calls deleted with one batch: the writer keeps up

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

def _insert_of(rows: int) -> str:
    values = "(" + ", ".join("?" * (len(COLUMNS) - 1)) + ")"
    return f"INSERT INTO journal ({', '.join(COLUMNS[1:])}) VALUES " + ", ".join([values] * rows)


# write_rows' sizes, up to ROWS_PER_STATEMENT (64 x 17 parameters, under SQLite's 32,766)
_INSERTS = {size: _insert_of(size) for size in (1, 2, 4, 8, 16, 32, 64)}


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


class CallNote:
    """What the interceptor and the service know of a call while it runs; it becomes
    the call's row when the call ends (`Journal.add`). What most calls never set is
    a class attribute, so a note made per call stores only its RPC, request and clocks."""

    door = "grpc"  # the door the call came through; the national JSON door notes "national"
    identity = ""
    institution = ""
    session = ""
    run: Any = None  # the runs.Run the call belongs to
    actor = "his"
    fault = ""  # a targeted fault applied (server/faults.py)
    targeted: Any = None  # the runs.TargetedFault that acts on the answer
    response: Any = None
    answer: bytes | None = None  # the response serialized (by the journaled handler: the bytes sent)
    code: grpc.StatusCode | None = None
    trailers: Any = None
    latency_ms = 0.0
    undelivered = False
    done: Any = None  # called when the call has finished (runs count a run's calls in flight)
    delay_seconds = 0.0  # a targeted delay, slept before the call runs (server/faults.py)

    def __init__(
        self, rpc: str, request: Any, door: str = "grpc", institution: str = "", session: str = ""
    ) -> None:
        self.rpc, self.request = rpc, request
        self.arrived, self.started = time.time(), time.perf_counter()
        if door != "grpc":
            self.door = door
        if institution:
            self.institution = institution
        if session:
            self.session = session


_CURRENT: contextvars.ContextVar[CallNote | None] = contextvars.ContextVar("settlesim_call", default=None)


def current_note() -> CallNote | None:
    """The note of the call this thread (or task) is serving, if journaled."""
    return _CURRENT.get()


# The row a call becomes (Journal.add): the columns COLUMNS[1:] in order, made on the loop from
# what it has at hand, with three of them finished by the writer (`_finish`): `time` is the
# arrival's time.time() until the writer writes it as text, `code` the StatusCode of a refusal
# and `reason` its trailers until the writer reads them; one more item after the columns is
# what the metrics count of it (the fund paid by a new settlement, or None), taken off the row
# before it is stored.
_TIME, _RPC, _RUN, _CODE, _REASON, _FAULT, _LATENCY = 0, 2, 6, 10, 11, 12, 13
_ROW_LENGTH = len(COLUMNS) - 1


class Journal:
    """The journal store and its writer thread."""

    def __init__(
        self,
        path: Path | str,
        on_stored: Callable[[list[tuple[Any, ...]], list[int | None], float], None] | None = None,
        keep_calls: int = KEEP_CALLS,
    ) -> None:
        """`on_stored(rows, funds, lag_seconds)` is called by the writer thread after each
        stored batch (the metrics count calls there, off the settle path): the rows as
        stored (COLUMNS[1:]) and, per row, the fund paid by the new settlement it made
        (None for any other call). `keep_calls`: how many of the newest entries are kept
        whatever they are (KEEP_CALLS; 0 keeps every call); of the older ones, only check runs'."""
        if keep_calls < 0:
            raise ValueError(f"keep_calls must be 0 (keep every call) or more, not {keep_calls}")
        self.path = Path(path)
        self.on_stored = on_stored
        self.keep_calls = keep_calls
        self._pruned_to = 0  # every call up to this seq is gone, but for check runs' calls
        self.counting = on_stored is not None  # the loop notes a new settlement's fund for the metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:  # "file is not a database", damage
            raise damaged_journal(self.path, error) from None
        # Rows of finished calls not yet taken by the writer: the loop appends (one list
        # append a call, no lock: the GIL orders it), the writer takes the whole list at once.
        self._pending: list[list[Any]] = []
        self._flushes: list[threading.Event] = []  # flush() calls waiting for the next batch
        self._wake = threading.Event()  # a row in an empty list, a flush or close wakes the writer
        self._hurry = threading.Event()  # flush() and close() cut the writer's gathering short
        self._closing = False
        self._writing = 0  # rows taken by the writer, not yet stored
        self._lock = threading.Lock()  # one connection, shared by the writer and the readers
        # Entries the writer could not store (disk full, I/O error), per run ("" for none):
        # a run graded on an incomplete record would pass or fail on calls nobody saw.
        self._lost: dict[str, int] = {}
        self._writer = threading.Thread(target=self._write_batches, name="journal-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        switch_to_wal(db)  # two servers starting on one new journal (serve --processes) race here
        db.execute("PRAGMA synchronous=NORMAL")
        # A batch's INSERTs of many rows keep their statement journal in memory: with temp_store
        # FILE, SQLite spilled it past 64 KiB into a temp file made, written and deleted each batch.
        db.execute("PRAGMA temp_store=MEMORY")
        # Checkpoint every JOURNAL_CHECKPOINT_PAGES pages: see its comment.
        db.execute(f"PRAGMA wal_autocheckpoint={JOURNAL_CHECKPOINT_PAGES}")
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

    # --- the hot path: a finished call's row ----------------------------------------------------

    def add(self, row: list[Any]) -> None:
        """A finished call's row (see _TIME ...): appended for the writer, which is woken
        only by the first row of a batch."""
        pending = self._pending
        if not pending:
            self._wake.set()
        pending.append(row)

    def submit(self, note: CallNote) -> None:
        """A finished call noted by other means than the interceptor (the national door)."""
        note.latency_ms = (time.perf_counter() - note.started) * 1000
        self.add(row_of(note, self.counting))

    def queue_depth(self) -> int:
        """Calls finished but not yet stored."""
        return len(self._pending) + self._writing

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every call finished so far is stored."""
        done = threading.Event()
        self._flushes.append(done)
        self._hurry.set()
        self._wake.set()
        done.wait(timeout)

    def close(self) -> None:
        self._closing = True
        self._hurry.set()
        self._wake.set()
        self._writer.join(30)
        with self._lock:
            self._db.close()

    # --- the writer thread --------------------------------------------------------------------

    def _write_batches(self) -> None:
        clock = _Clock()
        while True:
            self._wake.wait()
            if not self._closing and len(self._pending) < _BATCH:
                # Let the calls of the next moments join this one: each commit rewrites the
                # hot pages of the table and its indexes, so a few large batches cost far
                # less than many small ones. A writer that lags (a full batch waiting) does
                # not wait; flush() and close() end the wait at once.
                self._hurry.wait(GATHER_SECONDS)
            self._hurry.clear()
            self._wake.clear()
            stop = self._closing
            # The flushes first: every row finished before a flush asked is in the list taken next.
            flushes, self._flushes = self._flushes, []
            rows, self._pending = self._pending, []
            self._writing = len(rows)
            for start in range(0, len(rows), _BATCH):
                self._write(rows[start : start + _BATCH], clock)
            self._writing = 0
            for event in flushes:
                event.set()
            if stop:
                return

    def _write(self, rows: list[list[Any]], clock: _Clock) -> None:
        try:
            oldest = min(row[_TIME] for row in rows)
            funds = [_finish(row, clock) for row in rows]
            self._store(rows)
        except Exception:  # a journal that cannot write must not stop the platform
            log.exception("journal write failed; %d entries lost", len(rows))
            with self._lock:
                for row in rows:
                    self._lost[row[_RUN]] = self._lost.get(row[_RUN], 0) + 1
            return
        if self.on_stored is not None:
            try:
                self.on_stored(rows, funds, time.time() - oldest)
            except Exception:  # metrics must never stop the journal
                log.exception("journal observer failed")

    def _store(self, rows: list[Any]) -> None:
        """One transaction; the rows go in by INSERTs of up to 64 rows each
        (sizes halving down to 1, so a few statements serve every batch from the statement
        cache): sqlite3 gives up the GIL around each statement's step, and executemany steps
        once a row. Taking the GIL back from the busy loop, once a row, cost the writer
        most of its CPU and the loop a share of its own (docs/performance.md)."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN")
                write_rows(db, _INSERTS, rows)  # the ledger's batch writes its rows the same way
                pruned_to = self._prune(db) if self.keep_calls else self._pruned_to
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # the batch is lost (counted by _write); the file stays usable
                    db.execute("ROLLBACK")
                raise
            self._pruned_to = pruned_to  # only once the deletions are committed

    def _prune(self, db: sqlite3.Connection) -> int:
        """Delete the calls older than the newest `keep_calls` entries (seq order) that are in
        no check run, up to _PRUNE_ROWS of them, in the batch's transaction; the seq up to which
        nothing is left to delete (`_pruned_to`, so the next batch does not scan again the rows
        the runs kept). In a SAVEPOINT: deletions that fail are logged and leave the batch's
        calls stored; a later batch tries again."""
        (newest,) = db.execute("SELECT max(seq) FROM journal").fetchone()
        limit = (newest or 0) - self.keep_calls
        if limit <= self._pruned_to:
            return self._pruned_to
        db.execute("SAVEPOINT prune")
        try:
            old = [seq for (seq,) in db.execute(
                "SELECT seq FROM journal WHERE seq > ? AND seq <= ? AND run_id = '' ORDER BY seq LIMIT ?",
                (self._pruned_to, limit, _PRUNE_ROWS),
            )]  # fmt: skip
            if old:
                db.execute("DELETE FROM journal WHERE seq BETWEEN ? AND ? AND run_id = ''", (old[0], old[-1]))
        except sqlite3.Error:
            log.exception("journal: deleting old calls failed; a later batch tries again")
            db.execute("ROLLBACK TO prune")
            db.execute("RELEASE prune")
            return self._pruned_to
        db.execute("RELEASE prune")
        return old[-1] if len(old) == _PRUNE_ROWS else limit

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


def row_of(note: CallNote, counting: bool = False) -> list[Any]:
    """The row (see _TIME ...) of a call noted outside the interceptor (the national door),
    from its objects: the request and the response serialized here."""
    request = note.request
    if hasattr(request, "SerializeToString"):
        raw = request.SerializeToString()
        msgid = getattr(request.request if note.rpc in _SETTLING else request, "msgid", "")
    else:
        raw, msgid = None, ""
    response, answer = note.response, note.answer
    if answer is None and response is not None:
        answer = response.SerializeToString()
    code = "OK" if note.code is None else note.code
    fund = _new_settlement_fund(note.rpc, response) if counting and code == "OK" else None
    return _row(note, msgid, code, note.trailers, raw, answer, fund)


def _row(
    note: CallNote, msgid: str, code: Any, trailers: Any, raw: bytes | None, answer: bytes | None, fund: Any
) -> list[Any]:
    run = note.run
    return [
        note.arrived,  # written as text by the writer (_finish)
        note.door,
        note.rpc,
        note.identity,
        note.institution,
        note.session,
        run.run_id if run is not None else "",
        note.actor,
        msgid,
        "",  # request_hash: computed when read (entry_of_row)
        code,  # "OK", or the StatusCode the writer names (_finish)
        trailers,  # the writer reads the reason (and a fault) out of the trailers (_finish)
        note.fault,
        note.latency_ms,
        note.undelivered,
        raw,
        answer,
        fund,  # for the metrics, taken off before the row is stored (_finish)
    ]


def _new_settlement_fund(rpc: str, response: Any) -> int | None:
    """The fund a SettleVisit answered OK paid, unless it replayed an earlier settle: what
    the metrics count (server/metrics.py)."""
    if rpc != "SettleVisit" or response is None or response.replayed:
        return None
    return response.settlement.totals.fund_pays_fen


def _finish(row: list[Any], clock: _Clock) -> int | None:
    """The writer's part of a row: the arrival as text, a refusal's code name and reason
    out of its trailers, the latency to the microsecond; returns what the metrics count."""
    row[_TIME] = clock.iso(row[_TIME])
    if row[_CODE] == "OK":
        row[_REASON] = ""
    else:
        row[_CODE], row[_REASON], fault = _outcome(row[_CODE], row[_REASON])
        row[_FAULT] = row[_FAULT] or fault
    row[_LATENCY] = round(row[_LATENCY], 3)
    return row.pop()


# --- the interceptor ---------------------------------------------------------------------------


class JournalInterceptor:
    """Notes every SettlementService call for the journal. Outermost but for
    the audit log: it records what the caller got, injected faults included.
    The logic is in `_JournaledMethod`; with it a call runs to its end even when
    the caller has gone (server/completion.py), so a late answer is noted."""

    def __init__(self, journal: Journal, after_call: Any = None, answers_as_bytes: bool = False) -> None:
        """`after_call(note, response, context)`: the targeted faults that act
        on an answer (server/faults.py), applied inside the journal's view.
        `answers_as_bytes`: the journaled handler returns the answer serialized (the
        bytes it journals are then the bytes gRPC sends, serialized once), for a server
        with no interceptor outside the journal that reads the answer (the audit log does)."""
        self.journal, self.after_call, self.answers_as_bytes = journal, after_call, answers_as_bytes

    def wrap(self, rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` journaled (server/door.py composes it once per method at start-up)."""
        journaled = _JournaledMethod(self, rpc, handler)
        return grpc.unary_unary_rpc_method_handler(
            journaled.call,
            request_deserializer=journaled.deserialize,
            response_serializer=None if self.answers_as_bytes else handler.response_serializer,
        )


class _JournaledMethod:
    """One method's journaled call. On the loop it keeps only what it has at hand: the
    request's bytes as they arrived (its deserializer keeps them), the answer's bytes as
    serialized once, a few scalars; the writer thread does the rest (_finish)."""

    __slots__ = (
        "after_call", "as_bytes", "behavior", "has_msgid", "journal", "parse", "raw", "request",
        "request_type", "rpc", "serialize", "wraps",
    )  # fmt: skip

    def __init__(self, interceptor: JournalInterceptor, rpc: str, handler: grpc.RpcMethodHandler) -> None:
        self.journal, self.after_call = interceptor.journal, interceptor.after_call
        self.as_bytes = interceptor.answers_as_bytes
        self.rpc, self.behavior = rpc, handler.unary_unary
        self.parse, self.serialize = handler.request_deserializer, handler.response_serializer
        method = _METHODS.get(rpc)
        self.request_type = getattr(pb, method.input_type.name) if method is not None else None
        self.wraps = rpc in _SETTLING  # the msgid is the wrapped SettlementRequest's
        fields = (pb.SettlementRequest if self.wraps else self.request_type or pb.SettlementRequest).DESCRIPTOR
        self.has_msgid = method is not None and "msgid" in fields.fields_by_name
        self.request: Any = None  # the last request parsed, and the bytes it came from
        self.raw: bytes | None = None

    def deserialize(self, raw: bytes) -> Any:
        """The request parsed, its bytes kept: gRPC calls this right before the handler,
        and the handler takes them when its request is this one (else it serializes it)."""
        request = self.parse(raw) if self.parse is not None else raw
        self.request, self.raw = request, raw
        return request

    async def call(self, request: Any, context: Any) -> Any:
        journal = self.journal
        note = CallNote(self.rpc, request)
        token = _CURRENT.set(note)
        code: Any = "OK"
        answer = fund = None
        try:
            response = await self.behavior(request, context)
            if note.run is not None and self.after_call is not None:
                note.response = response
                response = await self.after_call(note, response, context)
            note.undelivered = not context.is_active()  # the caller's deadline passed while it ran
            answer = self.serialize(response) if self.serialize is not None else response
            if journal.counting and self.wraps:
                fund = _new_settlement_fund(self.rpc, response)
            return answer if self.as_bytes else response
        except BaseException:
            code, note.trailers = context.code(), context.trailing_metadata()
            if code is None:
                code = grpc.StatusCode.UNKNOWN
            if note.response is not None:  # the answer made, then dropped by a fault
                answer = note.response.SerializeToString()
            raise
        finally:
            _CURRENT.reset(token)
            note.latency_ms = (time.perf_counter() - note.started) * 1000
            if type(request) is self.request_type:
                raw = self.raw if self.request is request else request.SerializeToString()
                msgid = (request.request if self.wraps else request).msgid if self.has_msgid else ""
            else:  # undecodable bytes (service.Undecodable): the reader shows them as such
                raw, msgid = None, ""
            journal.add(_row(note, msgid, code, note.trailers, raw, answer, fund))
            if note.done is not None:
                note.done()
