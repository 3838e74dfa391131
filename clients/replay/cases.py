"""The case format (docs/cases.md): YAML files that name a world, a list of steps
(call + request) and, per step, the expected answer. This module parses and
validates them, reporting every problem as `file: path: what is wrong`, so a
mistyped field name fails before anything is sent."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from settlesim.server.model import InsuranceType
from settlesim.server.world_keys import unknown_key
from settlesim.v1 import reasons_pb2
from settlesim.v1 import settlement_service_pb2 as pb

# call name -> (gRPC method, request type, response type, friendly request keys)
_VISIT_KEYS = {"person", "disease", "date", "insurance_type", "certificate"}
_SETTLE_KEYS = _VISIT_KEYS | {"fees", "msgid", "operator"}
CALLS: dict[str, tuple[str, type, type, frozenset[str]]] = {
    "verify": ("VerifyRegistration", pb.VerifyRegistrationRequest, pb.VerifyRegistrationResponse,
               frozenset(_VISIT_KEYS)),
    "pre_settle": ("PreSettleVisit", pb.PreSettleVisitRequest, pb.PreSettleVisitResponse,
                   frozenset(_SETTLE_KEYS)),
    "settle": ("SettleVisit", pb.SettleVisitRequest, pb.SettleVisitResponse, frozenset(_SETTLE_KEYS)),
    "reverse": ("ReverseSettlement", pb.ReverseSettlementRequest, pb.ReverseSettlementResponse,
                frozenset({"settlement_id", "msgid", "operator"})),
    "void": ("VoidByMessageId", pb.VoidByMessageIdRequest, pb.VoidByMessageIdResponse,
             frozenset({"original_msgid", "msgid", "original_infno", "operator"})),
    "get": ("GetSettlement", pb.GetSettlementRequest, pb.GetSettlementResponse,
            frozenset({"settlement_id", "msgid"})),
    "reconcile": ("Reconcile", pb.ReconcileRequest, pb.ReconcileResponse,
                  frozenset({"start", "end", "hospital", "include_entries"})),
}  # fmt: skip
# The calls whose request carries a message id of its own (报文ID), which ${steps.ID.msgid} names.
# A get's `msgid` is the settlement it looks up, not a message id it sends.
SENDS_MSGID = ("pre_settle", "settle", "reverse", "void")
FEE_KEYS = frozenset({"code", "price", "quantity", "amount", "seq", "name", "hospital_code", "repeat"})
CASE_KEYS = frozenset({"name", "title", "world", "tags", "why", "institution", "door", "steps"})
DOORS = ("grpc", "national")  # a case's `door:`, and replay's --door
STEP_KEYS = frozenset({"id", "call", "institution", "request", "raw", "expect", "why"})
ERROR_KEYS = frozenset({"code", "reason", "fields"})
STATUS_CODES = frozenset(c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK)
REASONS = frozenset(v.name for v in reasons_pb2.ErrorReason.DESCRIPTOR.values if v.number)
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
REFERENCE = re.compile(r"\$\{([^}]*)\}")


class CaseError(Exception):
    """A case file that does not follow the format; the message names file and path."""


@dataclass(frozen=True)
class ExpectedError:
    code: str  # gRPC status code name, e.g. "FAILED_PRECONDITION"
    reason: str  # ErrorInfo reason, e.g. "REGISTRATION_EXPIRED"
    fields: tuple[str, ...] = ()  # BadRequest field names that must be among the violations


@dataclass(frozen=True)
class Step:
    id: str
    call: str
    institution: str
    request: dict[str, Any]  # the friendly form; values may hold ${...} references
    raw: dict[str, Any] | None  # protobuf JSON of the whole request, merged over the friendly form
    expect: dict[str, Any]  # response fields to compare; empty = any OK answer
    error: ExpectedError | None
    why: str = ""

    @property
    def method(self) -> str:
        return CALLS[self.call][0]

    @property
    def response_type(self) -> type:
        return CALLS[self.call][2]


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    world: str
    tags: tuple[str, ...]
    why: str
    steps: tuple[Step, ...]
    source: str  # "path/to/file.yaml" or "path/to/file.yaml#2" for the 2nd document
    group: str = ""  # the file's stem, used as the JUnit classname
    door: str = ""  # the only door the case is for (grpc, national); "" either


def _plain(value: Any) -> Any:
    """YAML turns 2021-12-09 into a date; the contract carries dates as strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> CaseError:
        return CaseError(f"{self.where}: {path}: {message}" if path else f"{self.where}: {message}")

    def mapping(self, value: Any, path: str, allowed: Iterable[str]) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {type(value).__name__}")
        if problem := unknown_key(value, frozenset(allowed)):
            raise self.fail(path, problem)
        return value

    def text(self, value: Any, path: str, *, required: bool = True) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            raise self.fail(path, "must be a non-empty string")
        return value


def load_cases(paths: Iterable[Path]) -> list[Case]:
    """Every case in the given files and folders (folders: *.yaml and *.yml,
    recursively, in name order). Names must be unique across the run."""
    cases: list[Case] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
            if not files:
                raise CaseError(f"{path}: no *.yaml case files in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise CaseError(f"{path}: no such file or folder")
        for file in files:
            cases.extend(load_file(file))
    seen: dict[str, str] = {}
    for case in cases:
        if case.name in seen:
            raise CaseError(
                f"{case.source}: name: {case.name!r} is also the name of a case in {seen[case.name]}"
            )
        seen[case.name] = case.source
    return cases


def load_file(path: Path) -> list[Case]:
    """One file holds one case, or several as YAML documents separated by `---`."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise CaseError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CaseError(f"{path}: cannot read: {e}") from None
    if not documents:
        raise CaseError(f"{path}: empty file")
    many = len(documents) > 1
    return [
        parse_case(_plain(doc), f"{path}#{i}" if many else str(path), path.stem)
        for i, doc in enumerate(documents, 1)
    ]


def parse_case(doc: Any, source: str, group: str = "") -> Case:
    check = _Checker(source)
    doc = check.mapping(doc, "", CASE_KEYS)
    for key in ("name", "world", "why", "steps"):
        if key not in doc:
            raise check.fail(key, "required")
    name = check.text(doc["name"], "name")
    if not NAME.match(name):
        raise check.fail("name", "must be 1-80 of a-z 0-9 . _ - starting with a letter or digit")
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise check.fail("tags", "must be a list of strings")
    steps_doc = doc["steps"]
    if not isinstance(steps_doc, list) or not steps_doc:
        raise check.fail("steps", "must be a non-empty list")
    institution = check.text(doc.get("institution"), "institution", required=False)
    door = doc.get("door", "")
    if door not in ("", *DOORS):
        raise check.fail("door", f"must be one of {', '.join(DOORS)} (or absent: either door), got {door!r}")
    steps: list[Step] = []
    for i, step_doc in enumerate(steps_doc):
        steps.append(_parse_step(check, step_doc, f"steps[{i}]", institution, {s.id: s.call for s in steps}))
    return Case(
        name=name,
        title=check.text(doc.get("title"), "title", required=False) or name,
        world=check.text(doc["world"], "world"),
        tags=tuple(tags),
        why=check.text(doc["why"], "why"),
        steps=tuple(steps),
        source=source,
        group=group,
        door=door,
    )


def _parse_step(check: _Checker, doc: Any, path: str, institution: str, earlier: dict[str, str]) -> Step:
    doc = check.mapping(doc, path, STEP_KEYS)
    call = doc.get("call")
    if call not in CALLS:
        raise check.fail(f"{path}.call", f"must be one of {', '.join(CALLS)} (got {call!r})")
    step_id = doc.get("id", f"step{len(earlier) + 1}")
    if not isinstance(step_id, str) or not NAME.match(step_id):
        raise check.fail(f"{path}.id", "must be 1-80 of a-z 0-9 . _ -")
    if step_id in earlier:
        raise check.fail(f"{path}.id", f"{step_id!r} is already the id of an earlier step")
    step_institution = check.text(doc.get("institution"), f"{path}.institution", required=False)
    step_institution = step_institution or institution
    if not step_institution and call in {"verify", "pre_settle", "settle"} and "raw" not in doc:
        raise check.fail(f"{path}.institution", "required here or at the case level")
    if not step_institution and call not in {"verify", "pre_settle", "settle"}:
        raise check.fail(f"{path}.institution", "required here or at the case level")
    _, _, response_type, keys = CALLS[call]
    request = doc.get("request", {}) or {}
    check.mapping(request, f"{path}.request", keys)
    if "insurance_type" in request:  # spelled as in world files (docs/world-format.md)
        try:
            kind = InsuranceType.parse(request["insurance_type"])
        except ValueError as e:
            raise check.fail(f"{path}.request.insurance_type", f"{e}; omit it for the person's own") from None
        request = {**request, "insurance_type": int(kind.value)}
    for i, fee in enumerate(request.get("fees", []) or []):
        fee = check.mapping(fee, f"{path}.request.fees[{i}]", FEE_KEYS)
        for key in ("code", "price"):
            if key not in fee:
                raise check.fail(f"{path}.request.fees[{i}].{key}", "required")
    if call in {"verify", "pre_settle", "settle"} and "raw" not in doc:
        for key in ("person", "disease", "date"):
            if key not in request:
                raise check.fail(f"{path}.request.{key}", "required (or give the whole request as raw)")
    raw = doc.get("raw")
    if raw is not None and not isinstance(raw, dict):
        raise check.fail(f"{path}.raw", "must be a mapping (protobuf JSON of the request)")
    expect = doc.get("expect", {}) or {}
    expect = check.mapping(expect, f"{path}.expect", {"error", *response_type.DESCRIPTOR.fields_by_name})
    error = None
    if "error" in expect:
        error = _parse_error(check, expect.pop("error"), f"{path}.expect.error")
        if expect:
            raise check.fail(f"{path}.expect", "give either `error` or answer fields, not both")
    _check_expected(check, expect, response_type.DESCRIPTOR, f"{path}.expect")
    for where, value in (("request", request), ("raw", raw), ("expect", expect)):
        # An expectation may also name what this step itself sent, e.g. ${steps.ID.msgid}.
        visible = {**earlier, step_id: call} if where == "expect" else earlier
        for ref in references(value):
            _check_reference(check, ref, f"{path}.{where}", visible)
    return Step(
        id=step_id,
        call=call,
        institution=step_institution,
        request=request,
        raw=raw,
        expect=expect,
        error=error,
        why=check.text(doc.get("why"), f"{path}.why", required=False),
    )


def _parse_error(check: _Checker, doc: Any, path: str) -> ExpectedError:
    doc = check.mapping(doc, path, ERROR_KEYS)
    code = doc.get("code")
    if code not in STATUS_CODES:
        raise check.fail(
            f"{path}.code", f"must be a gRPC status code name such as FAILED_PRECONDITION (got {code!r})"
        )
    reason = doc.get("reason", "")
    if reason and reason not in REASONS:
        raise check.fail(f"{path}.reason", f"{reason!r} is not a reason of settlesim.v1.ErrorReason")
    fields = doc.get("fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise check.fail(f"{path}.fields", "must be a list of field names")
    return ExpectedError(code, reason, tuple(fields))


def _check_expected(check: _Checker, expected: Any, descriptor: Descriptor, path: str) -> None:
    """Expected answer fields must exist in the response type, with the right shape."""
    if not isinstance(expected, dict):
        raise check.fail(path, f"must be a mapping of {descriptor.name} fields")
    for key, value in expected.items():
        fd = descriptor.fields_by_name.get(key)
        if fd is None:
            raise check.fail(
                f"{path}.{key}",
                f"{descriptor.name} has no field {key!r} (has: {', '.join(descriptor.fields_by_name)})",
            )
        at = f"{path}.{key}"
        if fd.is_repeated:
            if isinstance(value, dict):  # {index: expected}: only those elements
                items = list(value.items())
                if not all(isinstance(k, int) for k, _ in items):
                    raise check.fail(at, "a mapping here must have element indexes (0, 1, ...) as keys")
            elif isinstance(value, list):
                items = list(enumerate(value))
            else:
                raise check.fail(at, "must be a list (all elements) or a mapping {index: element}")
            for index, element in items:
                _check_value(check, fd, element, f"{at}[{index}]")
        else:
            _check_value(check, fd, value, at)


def _check_value(check: _Checker, fd: FieldDescriptor, value: Any, path: str) -> None:
    if isinstance(value, str) and REFERENCE.search(value):
        return  # resolved at run time
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        if value is None and not fd.is_repeated:
            return  # "absent"
        _check_expected(check, value, fd.message_type, path)
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        names = {v.name for v in fd.enum_type.values}
        if not (isinstance(value, int) or value in names):
            raise check.fail(path, f"must be one of {', '.join(sorted(names))} (got {value!r})")
    elif value is None:
        if not fd.has_presence:
            raise check.fail(path, "null (absent) is only for optional fields")
    elif fd.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise check.fail(path, f"must be true or false (got {value!r})")
    elif fd.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise check.fail(path, f"must be a string (got {value!r}); quote codes and dates")
    elif not isinstance(value, int) or isinstance(value, bool):
        hint = "; money is integer fen (17963, not 179.63)" if path.endswith("_fen") else ""
        raise check.fail(path, f"must be an integer (got {value!r}){hint}")


def references(value: Any) -> Iterator[str]:
    """Every ${...} reference inside a request or expectation."""
    if isinstance(value, str):
        yield from REFERENCE.findall(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


def _check_reference(check: _Checker, ref: str, path: str, earlier: dict[str, str]) -> None:
    """${steps.ID.msgid} of an earlier step that sends one (SENDS_MSGID), ${steps.ID.request.FIELD...}
    or ${steps.ID.FIELD...} of an earlier step, each FIELD checked against that step's request or
    response type."""
    if ref == "new_msgid":
        return
    parts = ref.split(".")
    if parts[0] != "steps" or len(parts) < 3:
        raise check.fail(path, f"${{{ref}}}: write ${{steps.ID.field...}} or ${{new_msgid}}")
    if parts[1] not in earlier:
        raise check.fail(
            path, f"${{{ref}}}: no earlier step has id {parts[1]!r} (earlier: {list(earlier) or 'none'})"
        )
    call = earlier[parts[1]]
    _, request_type, response_type, _ = CALLS[call]
    if parts[2:] == ["msgid"]:
        if call not in SENDS_MSGID:
            hint = f"; the msgid it looked up is ${{steps.{parts[1]}.request.msgid}}" if call == "get" else ""
            raise check.fail(
                path,
                f"${{{ref}}}: step {parts[1]!r} is a {call} call, which sends no msgid "
                f"(only {', '.join(SENDS_MSGID)} do){hint}",
            )
        return
    fields, descriptor = (
        (parts[3:], request_type.DESCRIPTOR)
        if parts[2] == "request"
        else (parts[2:], response_type.DESCRIPTOR)
    )
    current: Descriptor | None = descriptor
    repeated = False
    for part in fields:
        if repeated:
            if not part.isdigit():
                raise check.fail(path, f"${{{ref}}}: {part!r} must be an element index (0, 1, ...)")
            repeated = False
            continue
        if current is None or part not in current.fields_by_name:
            where = current.name if current else "a value"
            raise check.fail(path, f"${{{ref}}}: {where} has no field {part!r}")
        fd = current.fields_by_name[part]
        repeated = fd.is_repeated
        current = fd.message_type if fd.type == FieldDescriptor.TYPE_MESSAGE else None
    if current is not None or repeated:
        raise check.fail(path, f"${{{ref}}}: names a message or list; name one of its fields")
