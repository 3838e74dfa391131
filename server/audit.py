"""The append-only audit log: one JSON line per settlement-service call saying
who called what, and how it ended (docs/security.md, "The audit log").

Each record carries the SHA-256 of the line before it (`prev`), so a line
removed or edited in the middle breaks the chain (`verify_file`). The end of
the chain is anchored outside the file: the ledger commits the chain's head
(records, bytes, digest of the last record) with every write transaction, and
the log asks for an anchor of its own every ANCHOR_SECONDS while records come
in without ledger writes, and on close. So truncating the file, editing its
last records or recomputing the whole chain no longer matches the anchor; the
server refuses to continue such a file (`AuditAnchorError`) and
`settlesim audit verify --db LEDGER FILE` says where.

Fail-closed: a call whose record cannot be written is not answered as if it
were audited. It is answered UNAVAILABLE / AUDIT_UNAVAILABLE (the call may
have taken effect: the HIS retries with the same msgid, as after a lost
answer), its record goes to the error log, health is NOT_SERVING, and calls
are refused without being run until a record can be written again.

Durability: every record is one write() of the whole line, so it survives the
server process dying (kill -9); a write that fails half-way is cut off again,
so no torn record is left behind. With `fsync=True` (`--audit-fsync`) each
record is also fsynced before the answer leaves, so it survives a power loss,
at the cost of one disk sync per call. The file is fsynced on close either way.

Fields: time (UTC, ISO 8601), rpc, identity (the institution the transport
proved; "" in --auth none), institution (the one the request names), peer,
session, msgid / settlement_id / original_msgid when the request or answer has
them, code (gRPC status name), reason (ErrorInfo reason), fault (an injected
fault's kind), ms (server time), prev.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from settlesim.server import calls
from settlesim.server.completion import to_completion
from settlesim.server.ledger import AuditAnchor, LedgerStore, read_audit_anchors
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.status import to_status

log = logging.getLogger("settlesim.server")
GENESIS = "0" * 64
EMPTY = AuditAnchor(0, 0, GENESIS)
_STATUS_KEY = "grpc-status-details-bin"
# While records come in and nothing else writes the ledger, the log asks for an
# anchor this often: the longest a record stays unanchored on a running server.
ANCHOR_SECONDS = 1.0


class AuditAnchorError(Exception):
    """The audit log no longer matches the head its ledger anchored (truncated,
    its tail edited, or its chain recomputed): the server will not continue it."""


class AuditUnavailable(Exception):
    """A record could not be written (disk full, I/O error)."""


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


# --- reading and verifying a chain -------------------------------------------------------------


@dataclass
class ChainReport:
    """What `verify_file` found: the records (lines) it read, the chain's head,
    and the problems, each naming its line."""

    records: int = 0
    head: AuditAnchor = EMPTY
    problems: list[str] = field(default_factory=list)  # the chain's, then the anchor's
    off_anchor: bool = False  # the file does not hold the anchored head


def _check_line(number: int, line: bytes, prev: str) -> list[str]:
    """The problems of one line (without its newline): it must be UTF-8 JSON,
    an object, whose `prev` is the digest of the line before."""
    unreadable, record = "", None
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        unreadable = f"line {number}: not UTF-8 (byte {error.start})"
    except json.JSONDecodeError:
        unreadable = f"line {number}: not JSON"
    if record is not None and not isinstance(record, dict):
        unreadable = f"line {number}: not a JSON object"
    problems = [unreadable] if unreadable else []
    if not isinstance(record, dict) or record.get("prev") != prev:  # an unreadable line has no prev
        problems.append(f"line {number}: prev does not match the line before")
    return problems


def verify_file(path: Path, anchor: AuditAnchor | None = None) -> ChainReport:
    """Read the whole file and check its chain of `prev` digests; with the
    ledger's `anchor`, also that the record it anchored is still there, where it
    was, with its digest (a truncated file, an edited last record and a
    recomputed chain all fail this). Any bytes at all are read: garbage is a
    problem on its line, never an exception."""
    report, prev = ChainReport(), GENESIS
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.removesuffix(b"\n")
            report.problems += _check_line(number, line, prev)
            prev = _digest(line)
            report.records, report.head = number, AuditAnchor(number, report.head.size + len(raw), prev)
            if anchor is not None and number == anchor.records and report.head != anchor:
                report.off_anchor = True
                report.problems.append(
                    f"record {number}, the head the ledger anchors, does not match its anchor "
                    f"(ends at byte {report.head.size} with digest {prev[:16]}…; anchored: byte "
                    f"{anchor.size}, digest {anchor.digest[:16]}…): edited, or the chain recomputed"
                )
    if anchor is not None and report.records < anchor.records:
        report.off_anchor = True
        report.problems.append(
            f"the file has {report.records} records but the ledger anchors {anchor.records} "
            f"({anchor.size} bytes): records were removed from its end"
        )
    return report


def verify_against(path: Path, ledger: str | Path | None) -> tuple[ChainReport, str]:
    """`settlesim audit verify [--db LEDGER] FILE`: the chain, and with a ledger its
    anchor: the one kept under this file's path, or else a retired one the file
    still holds (a rotated file: --audit-new-chain). Returns the report and a
    phrase naming the anchor it was held to ("" without a ledger)."""
    if ledger is None:
        return verify_file(path), ""
    anchors = read_audit_anchors(ledger)
    key = str(path.resolve())
    if key in anchors:
        anchor = anchors[key]
        return verify_file(path, anchor), f"anchored in {ledger}: {anchor.records} records"
    report = verify_file(path)
    for name, anchor in anchors.items():
        if name != key and 0 < anchor.records <= report.records and not verify_file(path, anchor).off_anchor:
            return report, f"anchored in {ledger} as {name}: {anchor.records} records"
    report.problems.append(
        f"the ledger {ledger} has no anchor for {key}, and no anchor it keeps matches this file"
    )
    return report, ""


def verify_chain(path: Path) -> list[str]:
    """Problems with the chain of `prev` digests; empty when the file is intact."""
    return verify_file(path).problems


def _continue_chain(path: Path, anchor: AuditAnchor | None, where: str) -> AuditAnchor:
    """The head to continue the chain from. With an anchor only the anchored
    record and the records after it are read (start-up stays fast on a large
    file): the record must be where the anchor says, with its digest, and what
    follows must chain from it. Without one (a ledger from before anchors, or a
    new chain) the file is counted as it is. A record torn by a crash mid-write
    is ended with a newline, so it stays one (bad) line that verify reports."""
    size = path.stat().st_size if path.exists() else 0
    if anchor is None or anchor.records == 0:
        if not size:
            return EMPTY
        records, last = 0, b""
        with path.open("rb") as f:
            for line in f:
                records, last = records + 1, line  # the last line is the head
        log.warning("audit log %s: %d records and no anchor in %s yet: anchoring it as it is", path, records, where)
        if not last.endswith(b"\n"):  # torn: the process died mid-write
            _end_torn_record(path)
            return AuditAnchor(records, size + 1, _digest(last))
        return AuditAnchor(records, size, _digest(last[:-1]))

    def refuse(why: str) -> AuditAnchorError:
        return AuditAnchorError(
            f"audit log {path} does not match its anchor in {where}: {why}; see `settlesim audit "
            f"verify --db {where} {path}` (after rotating the file on purpose, start with --audit-new-chain)"
        )

    if size < anchor.size:
        have = f"has {size} bytes" if path.exists() else "is missing"
        raise refuse(f"the file {have}, the ledger anchors {anchor.records} records ({anchor.size} bytes)")
    with path.open("rb") as f:
        start = max(0, anchor.size - 1 - (1 << 20))  # the anchored record: within its last MiB
        f.seek(start)
        before = f.read(anchor.size - start)
        tail = f.read()
    head = before.removesuffix(b"\n").rpartition(b"\n")[2]
    if not before.endswith(b"\n") or _digest(head) != anchor.digest:
        raise refuse(
            f"its record {anchor.records} (ending at byte {anchor.size}) is not the one the ledger anchors"
        )
    records, prev = anchor.records, anchor.digest
    lines = tail.split(b"\n")
    for number, line in enumerate(lines[:-1], anchor.records + 1):
        if _check_line(number, line, prev):
            raise refuse(f"record {number}, after the anchored head, does not chain from it")
        records, prev = number, _digest(line)
    if lines[-1]:  # a torn record after the anchored ones
        _end_torn_record(path)
        return AuditAnchor(records + 1, size + 1, _digest(lines[-1]))
    return AuditAnchor(records, size, prev)


def _end_torn_record(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"\n")


# --- writing ---------------------------------------------------------------------------------


class AuditLog:
    """The file, opened O_APPEND; `record` writes one line per call.

    `anchor`: the head the ledger last committed for this file (None: none
    yet); the file must still hold it (AuditAnchorError otherwise). `anchoring`:
    how to commit the head when nothing else does (LedgerStore.anchor_audit): called
    from a thread of the log's own every ANCHOR_SECONDS when records came in,
    and once on close. `on_failing(True/False)`: writes started failing /
    succeed again (health)."""

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = False,
        anchor: AuditAnchor | None = None,
        ledger_path: Path | None = None,
        anchoring: Callable[[], None] | None = None,
    ) -> None:
        path = path.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fsync = path, fsync
        self._head = _continue_chain(path, anchor, str(ledger_path or "the ledger"))
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._torn = False  # a failed write may have left part of a record: cut it before the next
        self.failing: str = ""  # why writes fail; "" while they succeed
        self.on_failing: Callable[[bool], None] | None = None
        self._anchoring = anchoring
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if anchoring is not None:
            self._ticker = threading.Thread(target=self._anchor_every_tick, name="audit-anchor", daemon=True)
            self._ticker.start()

    def head(self) -> tuple[str, AuditAnchor]:
        """(the file's absolute path, its chain's head): what the ledger anchors.
        No lock: the head is replaced whole after each record is written."""
        return str(self.path), self._head

    def record(self, entry: dict[str, Any]) -> None:
        """Append one record, or raise AuditUnavailable and leave the file as it
        was (the chain goes on from the last record written)."""
        with self._lock:
            line = json.dumps({**entry, "prev": self._head.digest}, ensure_ascii=False, separators=(",", ":"))
            data = line.encode() + b"\n"
            try:
                self._append(data)
            except OSError as error:
                why = f"{self.path}: {error.strerror or error}"
                changed, self.failing = not self.failing, why
                if changed and self.on_failing is not None:
                    self.on_failing(True)
                raise AuditUnavailable(why) from error
            head = self._head
            self._head = AuditAnchor(head.records + 1, head.size + len(data), _digest(data[:-1]))
            recovered, self.failing = bool(self.failing), ""
        if recovered and self.on_failing is not None:
            self.on_failing(False)

    def _append(self, data: bytes) -> None:
        if self._torn:
            os.ftruncate(self._fd, self._head.size)
            self._torn = False
        written = 0
        try:
            while written < len(data):  # a short write (the disk filling up) goes on, or fails
                written += os.write(self._fd, data[written:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            self._torn = True  # even a whole record whose fsync failed: it was not acknowledged
            try:
                os.ftruncate(self._fd, self._head.size)
                self._torn = False
            except OSError:
                pass
            raise

    def _anchor_every_tick(self) -> None:
        anchored = self._head
        while not self._stop.wait(ANCHOR_SECONDS):
            if self._head != anchored:
                anchored = self._head
                self._anchor()

    def _anchor(self) -> None:
        if self._anchoring is None:
            return
        try:
            self._anchoring()
        except Exception as error:  # the ledger's own failure is reported by its callers
            log.warning("audit log %s: could not anchor its head in the ledger: %s", self.path, error)

    def close(self) -> None:
        """Stop anchoring, fsync, anchor the head a last time, close."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.fsync(self._fd)
            except OSError as error:
                log.error("audit log %s: fsync on close failed: %s", self.path, error)
            self._anchor()
            os.close(self._fd)
            self._fd = -1


def open_audit_log(path: Path, ledger: LedgerStore, *, fsync: bool = False, new_chain: bool = False) -> AuditLog:
    """The audit log at `path`, tied to `ledger`: continued from the head the
    ledger anchored (AuditAnchorError if the file no longer holds it), and
    anchored by every ledger write from now on. `new_chain`: the file was
    rotated on purpose; start a new chain there (it must be missing or empty)
    and keep the old chain's anchor as retired."""
    path = path.resolve()
    if new_chain:
        if path.exists() and path.stat().st_size:
            raise AuditAnchorError(
                f"--audit-new-chain: {path} still has records; move it aside first (and keep it)"
            )
        ledger.retire_audit_anchor(str(path))
    audit = AuditLog(
        path, fsync=fsync, anchor=ledger.audit_anchor(str(path)), ledger_path=ledger.path,
        anchoring=ledger.anchor_audit,
    )  # fmt: skip
    ledger.audit_head = audit.head
    return audit


# --- what a call's record says, and whether the call may be answered -------------------------


def _ids(message: Any, out: dict[str, str]) -> None:
    """msgid, settlement_id, original_msgid and institution_code wherever the
    request or answer carries them (settle requests nest them one level down)."""
    if not hasattr(message, "DESCRIPTOR"):  # an undecodable request has no fields
        return
    for nested in ("request", "visit", "settlement"):
        if nested in message.DESCRIPTOR.fields_by_name and message.HasField(nested):
            _ids(getattr(message, nested), out)
    for name in ("msgid", "settlement_id", "original_msgid", "institution_code"):
        if name in message.DESCRIPTOR.fields_by_name and (value := getattr(message, name)):
            out.setdefault(name, value)


def _reason_of(context: grpc.ServicerContext) -> tuple[str, str]:
    """(ErrorInfo reason, injected fault kind) from an aborted call's trailers."""
    for key, value in context.trailing_metadata() or ():
        if key == _STATUS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info.reason, info.metadata.get("fault", "")
    return "", ""


def answered_outcome(response: Any) -> dict[str, Any]:
    """The record's outcome for a call answered OK."""
    outcome: dict[str, Any] = {"code": "OK", "reason": ""}
    answered: dict[str, str] = {}
    _ids(response, answered)
    if sid := answered.get("settlement_id"):
        outcome["settlement_id"] = sid
    return outcome


def refused_outcome(context: grpc.ServicerContext) -> dict[str, Any]:
    """The record's outcome for a call that ended in a status other than OK."""
    code = context.code()
    reason, fault = _reason_of(context)
    outcome: dict[str, Any] = {"code": code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN", "reason": reason}
    if fault:
        outcome["fault"] = fault
    return outcome


async def _abort(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    status = to_status(refusal)
    await context.abort(status.code, status.details, status.trailing_metadata)


def refusal_while_failing(audit: AuditLog) -> Refusal | None:
    """Fail-closed: while records cannot be written, a call is refused before
    it runs (its own record, if that one can be written, ends the outage)."""
    if not audit.failing:
        return None
    return Refusal(
        Reason.AUDIT_UNAVAILABLE,
        f"the audit log cannot be written ({audit.failing}); the call was not run: retry later",
    )


def write_record(audit: AuditLog, entry: dict[str, Any], started: float) -> Refusal | None:
    """Write the call's record. When it cannot be written the caller must not
    get the answer as if it were audited: returns the refusal to answer with
    instead (the call may have taken effect: the HIS retries with the same
    msgid), and the record goes to the error log, saying what was answered."""
    entry["ms"] = round((time.perf_counter() - started) * 1000, 1)
    try:
        audit.record(entry)
        return None
    except AuditUnavailable as error:
        refusal = Refusal(
            Reason.AUDIT_UNAVAILABLE,
            f"the call's audit record could not be written ({error}); it may have taken effect: "
            "retry with the same msgid",
        )
        log.error(
            "audit log write failed; answered UNAVAILABLE/AUDIT_UNAVAILABLE instead; the record: %s",
            json.dumps(entry, ensure_ascii=False),
            extra={"fields": {"rpc": entry.get("rpc", ""), "reason": "AUDIT_UNAVAILABLE"}},
        )
        return refusal


class AuditInterceptor:
    """Records every SettlementService call (health and reflection are not
    audited). Outermost wrapper but the door's limits: it records what the caller actually got,
    injected faults included. The decisions are the plain functions above."""

    def __init__(self, log: AuditLog, settings: calls.CallSettings) -> None:
        self.log, self.settings = log, settings

    def wrap(self, rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of SettlementService's `rpc`, audited; made once per method when the
        server starts (server/door.py)."""
        behavior = handler.unary_unary

        async def audited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # Recorded as the server ended it, even when the client gave up first.
            return await to_completion(resolved, request, context)

        async def resolved(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # The caller is resolved once, here, for the whole call (on the context the servicer
            # gets, detached or not): the servicer serves exactly the identity and session this
            # record names (server/calls.py).
            with calls.resolved(context, self.settings) as caller:
                return await recorded(request, context, caller)

        async def recorded(request: Any, context: grpc.aio.ServicerContext, caller: calls.Caller) -> Any:
            started = time.perf_counter()
            when = datetime.now(UTC).isoformat(timespec="milliseconds")
            entry: dict[str, Any] = {"time": when, "rpc": rpc, **_who(request, context, caller)}
            if (closed := refusal_while_failing(self.log)) is not None:
                entry.update(code="UNAVAILABLE", reason=closed.reason.value)
                await self._write(entry, started)  # written: the outage is over, for the next call
                await _abort(context, closed)
            try:
                response = await behavior(request, context)
            except BaseException:
                entry.update(refused_outcome(context))
                if (refusal := await self._write(entry, started)) is not None:
                    await _abort(context, refusal)
                raise
            entry.update(answered_outcome(response))
            if (refusal := await self._write(entry, started)) is not None:
                await _abort(context, refusal)
            return response

        return grpc.unary_unary_rpc_method_handler(
            audited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _write(self, entry: dict[str, Any], started: float) -> Refusal | None:
        if self.log.fsync:  # a disk sync per call: not on the event loop
            return await asyncio.to_thread(write_record, self.log, entry, started)
        return write_record(self.log, entry, started)


def _who(request: Any, context: grpc.ServicerContext, caller: calls.Caller) -> dict[str, Any]:
    """identity ("" when unproven), the institution the request names, peer and session."""
    ids: dict[str, str] = {}
    _ids(request, ids)
    who = {"identity": caller.institution, "institution": ids.pop("institution_code", ""), "peer": context.peer()}
    return {**who, "session": caller.session, **ids}
