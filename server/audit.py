"""The append-only audit log: one JSON line per settlement-service call saying
who called what, and how it ended.

Each record carries the SHA-256 of the line before it (`prev`), so a line
removed or edited after the fact breaks the chain (`verify_chain`). The file is
opened in append mode (O_APPEND) and never rewritten; a restart continues the
chain from the last line.

Durability: every record is one write() followed by a flush, so it survives the
server process dying (kill -9). With `fsync=True` (`--audit-fsync`) each record
is also fsynced before the answer leaves, so it survives a power loss, at the
cost of one disk sync per call. The file is fsynced on close either way.

Fields: time (UTC, ISO 8601), rpc, identity (the institution the transport
proved; "" in --auth none), institution (the one the request names), peer,
session, msgid / settlement_id / original_msgid when the request or answer has
them, code (gRPC status name), reason (ErrorInfo reason), fault (an injected
fault's kind), ms (server time), prev.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from settlesim.server.rules.reasons import Refusal

SERVICE_PREFIX = "/settlesim.v1.SettlementService/"
log = logging.getLogger("settlesim.server")
GENESIS = "0" * 64
_STATUS_KEY = "grpc-status-details-bin"
SESSION_HEADER = "x-settlesim-session"


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def _last_line(path: Path) -> str:
    """The last complete line of a file, read from its end."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = b""
        pos = size
        while pos > 0:
            step = min(4096, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step) + block
            lines = block.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or pos == 0:
                return lines[-1].decode()
    return ""


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class AuditLog:
    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fsync = path, fsync
        self._lock = threading.Lock()
        self._prev = _digest(last) if path.exists() and (last := _last_line(path)) else GENESIS
        self._file = path.open("a", encoding="utf-8")
        if self._file.tell() and not _ends_with_newline(path):
            # A record torn by a crash mid-write: end it, so it stays one (bad) line
            # that verify_chain reports, and the chain goes on from it.
            self._file.write("\n")
            self._file.flush()

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            line = json.dumps({**entry, "prev": self._prev}, ensure_ascii=False, separators=(",", ":"))
            self._file.write(line + "\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._prev = _digest(line)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


def verify_chain(path: Path) -> list[str]:
    """Problems with the chain of `prev` digests; empty when the file is intact."""
    problems, prev = [], GENESIS
    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            try:
                seen = json.loads(line).get("prev")
            except json.JSONDecodeError:
                problems.append(f"line {number}: not JSON")
                seen = None
            if seen != prev:
                problems.append(f"line {number}: prev does not match the line before")
            prev = _digest(line)
    return problems


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


class AuditInterceptor(grpc.ServerInterceptor):
    """Records every SettlementService call (health and reflection are not
    audited). Outermost interceptor: it records what the caller actually got,
    injected faults included."""

    def __init__(self, log: AuditLog, authenticate: Callable[[grpc.ServicerContext], str] | None) -> None:
        self.log, self.authenticate = log, authenticate

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(SERVICE_PREFIX):
            return handler
        rpc, behavior = method.removeprefix(SERVICE_PREFIX), handler.unary_unary

        def audited(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            when = datetime.now(UTC).isoformat(timespec="milliseconds")
            outcome: dict[str, Any] = {}
            try:
                response = behavior(request, context)
                outcome.update(code="OK", reason="")
                answered: dict[str, str] = {}
                _ids(response, answered)
                if sid := answered.get("settlement_id"):
                    outcome["settlement_id"] = sid
                return response
            except BaseException:
                code = context.code()
                reason, fault = _reason_of(context)
                outcome.update(code=code.name if code is not None else "UNKNOWN", reason=reason)
                if fault:
                    outcome["fault"] = fault
                raise
            finally:
                entry = {"time": when, "rpc": rpc, **self._who(request, context)}
                entry.update(outcome)
                entry["ms"] = round((time.perf_counter() - started) * 1000, 1)
                try:
                    self.log.record(entry)
                except Exception:  # e.g. disk full: the answer must not be lost for it
                    log.exception("audit log write failed; the record: %s", json.dumps(entry, ensure_ascii=False))

        return grpc.unary_unary_rpc_method_handler(
            audited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _who(self, request: Any, context: grpc.ServicerContext) -> dict[str, Any]:
        identity = ""
        if self.authenticate is not None:
            try:
                identity = self.authenticate(context)
            except Refusal:
                identity = ""
        ids: dict[str, str] = {}
        _ids(request, ids)
        session = next((v for k, v in context.invocation_metadata() or () if k == SESSION_HEADER), "")
        who = {"identity": identity, "institution": ids.pop("institution_code", ""), "peer": context.peer()}
        return {**who, "session": session, **ids}
