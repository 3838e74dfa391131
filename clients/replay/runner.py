"""Running cases against a target: one mock hospital per (case, institution),
each case in its own session (x-settlesim-session) so cases are independent and
run in parallel — a sandbox that belongs to exactly the case's institutions
(x-settlesim-session-members names the others, docs/sessions.md) — steps in
order, `${steps.ID...}` references resolved from earlier answers, answers
compared with compare.py."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from settlesim.clients.hospital import Hospital
from settlesim.clients.rejections import Rejection, rejection_of
from settlesim.clients.replay import national_door
from settlesim.clients.replay.cases import REFERENCE, Case, Step, references
from settlesim.clients.replay.compare import Diff, compare, compare_error
from settlesim.clients.replay.requests import build_request, msgid_of
from settlesim.clients.replay.target import (
    Connections,
    Credentials,
    TargetError,
    TargetWorld,
    check_identities,
    check_target,
    describe_world,
    other_world,
)

NO_CREDENTIALS = "no credentials for "  # + institution codes: why a case was skipped
# Statuses that say the target could not answer at all, not that it answered wrongly.
BROKEN = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNKNOWN"})


@dataclass
class StepResult:
    step: Step
    status: str = "skipped"  # passed | failed | error | skipped
    diffs: list[Diff] = field(default_factory=list)
    message: str = ""  # why it errored or was skipped
    request: dict[str, Any] = field(default_factory=dict)
    answer: dict[str, Any] = field(default_factory=dict)  # the response, or the refusal
    expected: dict[str, Any] = field(default_factory=dict)  # after references were resolved
    seconds: float = 0.0
    # Through the national door: what this step could not compare there, and why.
    unexpressed: list[national_door.Unexpressed] = field(default_factory=list)


@dataclass
class CaseResult:
    case: Case
    session: str
    steps: list[StepResult]
    seconds: float = 0.0

    @property
    def status(self) -> str:
        states = {s.status for s in self.steps}
        return "error" if "error" in states else "failed" if "failed" in states else "passed"


@dataclass
class RunResult:
    target: str
    run_id: str
    started: str
    cases: list[CaseResult]
    seconds: float = 0.0
    # Cases not run: they act for an institution the target would not let this
    # replay act for (no credentials for it), with why.
    skipped: list[tuple[Case, str]] = field(default_factory=list)
    world: TargetWorld | None = None  # what the target said it serves (None: it did not say)
    door: str = national_door.GRPC  # the door the cases went through (--door)

    def count(self, status: str) -> int:
        return sum(1 for c in self.cases if c.status == status)

    @property
    def passed(self) -> bool:
        return all(c.status == "passed" for c in self.cases)


# --- references --------------------------------------------------------------------------------


@dataclass
class _Sent:
    request: Message
    response: Message | None
    msgid: str


class _Scope:
    """What `${...}` can see inside one case."""

    def __init__(self, hospitals: Callable[[str], Hospital], default_institution: str) -> None:
        self.sent: dict[str, _Sent] = {}
        self.hospitals = hospitals
        self.default_institution = default_institution
        self.unsent: set[str] = set()  # steps not sent (no national form)

    def lookup(self, ref: str, institution: str) -> Any:
        if ref == "new_msgid":
            return self.hospitals(institution or self.default_institution).next_msgid()
        _, step_id, *path = ref.split(".")
        sent = self.sent[step_id]
        if path == ["msgid"]:
            return sent.msgid
        if path[0] == "request":
            return _walk(sent.request, path[1:], ref)
        if sent.response is None:
            raise LookupError(f"${{{ref}}}: step {step_id} has no answer (it was refused)")
        return _walk(sent.response, path, ref)

    def resolve(self, value: Any, institution: str) -> Any:
        """Replace references; a string that is only a reference keeps the value's type."""
        if isinstance(value, str):
            whole = REFERENCE.fullmatch(value)
            if whole:
                return self.lookup(whole.group(1), institution)
            return REFERENCE.sub(lambda m: str(self.lookup(m.group(1), institution)), value)
        if isinstance(value, dict):
            return {k: self.resolve(v, institution) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, institution) for v in value]
        return value


def _walk(message: Any, path: list[str], ref: str) -> Any:
    value = message
    for part in path:
        if isinstance(value, Message):
            if part not in value.DESCRIPTOR.fields_by_name:
                raise LookupError(f"${{{ref}}}: {value.DESCRIPTOR.name} has no field {part!r}")
            value = getattr(value, part)
        elif part.isdigit() and hasattr(value, "__len__"):
            if int(part) >= len(value):
                raise LookupError(f"${{{ref}}}: index {part} out of range ({len(value)} elements)")
            value = value[int(part)]
        else:
            raise LookupError(f"${{{ref}}}: cannot look up {part!r} in {type(value).__name__}")
    if isinstance(value, Message) or (hasattr(value, "__len__") and not isinstance(value, str)):
        raise LookupError(f"${{{ref}}}: names a message or list, not a value")
    return value


def _rejection_dict(rejection: Rejection) -> dict[str, Any]:
    return {
        "code": rejection.code,
        "reason": rejection.reason,
        "message": rejection.message,
        "metadata": rejection.metadata,
        "field_violations": [{"field": f, "reason": r, "description": d} for f, r, d in rejection.violations],
    }


def _as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


# --- running -----------------------------------------------------------------------------------


def first_institution(case: Case) -> str:
    """The institution of steps that name none (raw-only requests)."""
    return next((s.institution for s in case.steps if s.institution), "H000000000000")


def institutions(case: Case) -> set[str]:
    """Every institution a case acts for."""
    default = first_institution(case)
    return {s.institution or default for s in case.steps}


def run_case(
    case: Case,
    channel: grpc.Channel | Connections | national_door.NationalConnections,
    session: str,
    deadline: float = 10.0,
) -> CaseResult:
    """Run one case; `channel` is one channel for every institution, or the
    Connections that give each institution its own channel and token (or the
    national door's)."""
    started = time.perf_counter()
    hospitals: dict[str, Any] = {}
    connections = (
        channel
        if isinstance(channel, (Connections, national_door.NationalConnections))
        else Connections("", channel=channel)
    )

    members = institutions(case)  # the sandbox is theirs: each of them names the same group

    def hospital(code: str) -> Hospital:
        if code not in hospitals:
            hospitals[code] = connections.hospital(code, session, deadline, members)
        return hospitals[code]

    scope = _Scope(hospital, first_institution(case))
    results = [StepResult(step) for step in case.steps]
    for result in results:
        keep_going = _run_step(result, scope, hospital)
        if not keep_going:
            break
    for result in results:
        if result.status == "skipped" and not result.message:
            result.message = "not run: an earlier step did not get the answer it needed"
    return CaseResult(case, session, results, time.perf_counter() - started)


def _run_step(result: StepResult, scope: _Scope, hospital: Callable[[str], Hospital]) -> bool:
    """Run one step; False when later steps cannot run meaningfully."""
    step = result.step
    started = time.perf_counter()
    institution = step.institution or scope.default_institution
    his = hospital(institution)
    national = isinstance(his, national_door.NationalHospital)
    if national:
        unsent = national_door.unsendable(step) or next(
            (f"refers to step {r.split('.')[1]}, not sent" for r in references([step.request, step.expect])
             if r.startswith("steps.") and r.split(".")[1] in scope.unsent), "",
        )  # fmt: skip
        if unsent:
            scope.unsent.add(step.id)
            result.message = f"not sent through the national door: {unsent}"
            result.unexpressed = [national_door.Unexpressed("request", unsent)]
            return True
    try:
        request_fields = scope.resolve(step.request, institution)
        raw = scope.resolve(step.raw, institution) if step.raw is not None else None
        request = build_request(step, his, request_fields, raw)
    except (LookupError, json_format.ParseError, ValueError, TypeError) as e:
        result.status, result.message = "error", f"cannot build the request: {e}"
        return False
    result.request = _as_json(request)
    response, rejection = None, None
    try:
        response = his.call(step.method, request)
        result.answer = _as_json(response)
    except grpc.RpcError as error:
        rejection = getattr(error, "rejection", None) or rejection_of(error)
        result.answer = {"error": _rejection_dict(rejection)}
    result.seconds = time.perf_counter() - started
    scope.sent[step.id] = _Sent(request, response, msgid_of(request))
    want_error = step.error  # through the national door: without the fields it cannot carry
    if national and want_error is not None:
        _, want_error, result.unexpressed = national_door.expressible(step, {}, want_error, his.limits)
    if want_error is not None:
        want = want_error
        result.expected = {"error": {"code": want.code, "reason": want.reason, "fields": list(want.fields)}}
    else:
        try:
            expected = scope.resolve(step.expect, institution)
        except LookupError as e:
            result.status, result.message = "error", f"cannot resolve the expected answer: {e}"
            return False
        if national:
            expected, _, result.unexpressed = national_door.expressible(step, expected, None, his.limits)
        result.expected = expected
    if rejection is not None:
        if want_error is not None and rejection.code == want_error.code:
            result.diffs = compare_error(want_error, rejection)
        elif rejection.code in BROKEN:
            result.status = "error"
            result.message = f"the target could not answer: {rejection}"
        else:
            want_text = f"{want_error.code} {want_error.reason}".strip() if want_error else "OK"
            result.diffs = [Diff("status", want_text, str(rejection))]
    elif want_error is not None:
        result.diffs = [Diff("status", f"{want_error.code} {want_error.reason}".strip(), "OK")]
    else:
        assert response is not None
        result.diffs = compare(result.expected, response)
    if result.status != "error":
        result.status = "failed" if result.diffs else "passed"
    # An answer with wrong figures still lets later steps run (more diffs help);
    # a refusal where an answer was expected does not.
    return result.status == "passed" or (
        result.status == "failed" and (response is not None) == (want_error is None)
    )


def run_cases(
    cases: Sequence[Case],
    target: str,
    *,
    jobs: int = 4,
    deadline: float = 10.0,
    connect_timeout: float = 5.0,
    on_case: Callable[[CaseResult], None] | None = None,
    on_start: Callable[[], None] | None = None,
    channel: grpc.Channel | None = None,
    credentials: Credentials | None = None,
    on_skip: Callable[[list[tuple[Case, str]]], None] | None = None,
    any_world: bool = False,
    on_world: Callable[[TargetWorld | None, str | None], None] | None = None,
    door: str = national_door.GRPC,
    server_name: str | None = None,
) -> RunResult:
    """Run every case (in parallel, each in its own fresh session) and collect results
    in the order given. Raises TargetError before running when the target is unusable.

    With `credentials`, each institution sends its own token and/or client
    certificate; a case acting for an institution the target refuses without
    explicit credentials is skipped (RunResult.skipped, reported to `on_skip`
    before `on_start`), and explicit credentials the target refuses are a TargetError.

    The target is asked which world it serves (PlatformService): cases naming
    another world are a TargetError before anything runs, unless `any_world`;
    `on_world` hears the world (None: the target does not say) and, with
    `any_world`, why the cases may fail.

    `door` national: the cases go through the national door at `target` (national_door.py);
    a case none of whose steps has a national form is skipped, with why."""
    if door == national_door.NATIONAL:
        return national_door.run_national(
            cases, target, _run_all, credentials, jobs, deadline, connect_timeout, on_case, on_start, on_skip,
            on_world,
        )  # fmt: skip
    connections = Connections(target, credentials, channel, server_name)
    run_id = secrets.token_hex(6)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    cases, skipped = national_door.for_door(cases, door)  # a case may be for the national door only
    if skipped and on_skip is not None:
        on_skip(list(skipped))
    probe = ""  # the institution whose channel asks the target first
    try:
        if credentials is None:
            check_target(connections.channel(""), target, connect_timeout)
        else:
            needed = set().union(*(institutions(c) for c in cases))
            # The probe acts as an institution with explicit credentials, if any.
            explicit = sorted(needed & set(credentials.identities)) or sorted(credentials.identities)
            probe = explicit[0] if explicit else ""
            check_target(
                connections.channel(probe),
                target,
                connect_timeout,
                metadata=connections.metadata(probe),
                tls=connections.tls,
                credentials=credentials.describe(probe),
            )
            unusable = check_identities(connections, needed, connect_timeout)
            if unusable:
                runnable, unreachable = [], []
                for case in cases:
                    refused = sorted(institutions(case) & set(unusable))
                    if refused:
                        unreachable.append((case, NO_CREDENTIALS + ", ".join(refused)))
                    else:
                        runnable.append(case)
                skipped.extend(unreachable)
                if not runnable:
                    raise TargetError(
                        f"{target} would refuse every selected case: no credentials for "
                        f"{', '.join(sorted(unusable))} (add them to --tokens FILE)"
                    )
                cases = runnable
                if on_skip is not None:
                    on_skip(unreachable)
        served = describe_world(connections.channel(probe), target, connect_timeout)
        mismatch = other_world((c.world for c in cases), served, target) if served is not None else None
        if mismatch is not None and not any_world:
            raise TargetError(f"{mismatch}, or give --any-world to run them anyway")
        if on_world is not None:
            on_world(served, mismatch)
        if on_start is not None:
            on_start()
        results = _run_all(cases, connections, run_id, jobs, deadline, on_case)
    finally:
        connections.close()  # closes only the channels it opened, not a given one
    return RunResult(target, run_id, started_at, results, time.perf_counter() - started, skipped, served)


def _run_all(
    cases: Sequence[Case],
    connections: Connections | national_door.NationalConnections,
    run_id: str,
    jobs: int,
    deadline: float,
    on_case: Callable[[CaseResult], None] | None,
) -> list[CaseResult]:
    """Every case in parallel, each in its own fresh session; results in the order given."""
    results: list[CaseResult | None] = [None] * len(cases)
    with futures.ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="replay") as pool:
        running = {
            pool.submit(run_case, case, connections, f"replay-{run_id}-{i:04d}", deadline): i
            for i, case in enumerate(cases)
        }
        for done in futures.as_completed(running):
            result = done.result()
            results[running[done]] = result
            if on_case is not None:
                on_case(result)
    return [r for r in results if r is not None]
