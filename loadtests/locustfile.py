"""Locust load kit for the settlement path: hospitals playing realistic flows
against a settlesim server, validating EVERY answer.

    locust -f loadtests/locustfile.py --host 127.0.0.1:50051 --world /tmp/world-100k \\
        --headless -u 50 -r 50 -t 30s --csv /tmp/lt --html /tmp/lt.html

`--host` may name several replicas of one platform, `10.0.0.1:50051,10.0.0.2:50051` or
`dns:///replicas.example:50051`: each user's channel spreads its calls over them with
gRPC's round_robin (clients/channels.py, docs/scaling.md).

A flow is one visit's life at the HIS: verify (registration check), pre-settle
(2206), settle (2207), sometimes a retry of the same msgid, a reversal (2208)
or a void (2601). A wrong answer is reported as a Locust failure of request
type "validate" (so it shows in the stats, the CSV and the HTML report beside
gRPC errors); every settle that passed all checks is counted as a success of
"validate / settle validated", so the CSV gives validated settles per second.

Checks: fund + patient = total = the sum of the fee lines; no negative money;
a settle's figures equal its pre-settle's; the cap left never goes below zero
and falls by exactly what the fund paid; a retry replays the same settlement;
a reversal or void undoes the settlement it names; a voided msgid cannot settle.

Each Locust user has its own ledger sandboxes (metadata x-settlesim-session, see
docs/sessions.md), one per institution it acts for (a sandbox belongs to the
institution that opened it), so another user settling the same person between a
pre-settle and its settle cannot make an exact check fail. `--ledger-session
shared` sends no session header (for a server run with --no-sessions, or with
--auth token/mtls without --sessions).

Change the mix with FLOW_WEIGHTS below or `--weights verify=2,settle=10,...`.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from typing import Any

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists: gRPC must yield to gevent

import grpc  # noqa: E402
from locust import User, events, task  # noqa: E402
from settlesim.clients.channels import open_channel  # noqa: E402
from settlesim.clients.rejections import rejection_of  # noqa: E402
from settlesim.clients.workload import Workload, institution_tokens  # noqa: E402
from settlesim.v1 import settlement_service_pb2 as pb  # noqa: E402
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc  # noqa: E402

# How often each flow runs relative to the others: change here or with --weights.
FLOW_WEIGHTS = {"verify": 2, "settle": 10, "retry": 1, "reverse": 1, "void": 1, "void_unseen": 1}
SESSION_HEADER = "x-settlesim-session"
DEADLINE_S = 10.0


class ValidationError(AssertionError):
    """An answer that breaks a rule of the contract."""


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--world",
        default="",
        help="generated world directory or its visits.csv (default: the bundled world's reference case)",
    )
    parser.add_argument(
        "--weights", default="", help="flow weights, e.g. verify=2,settle=10,reverse=1,void=1"
    )
    parser.add_argument(
        "--ledger-session",
        choices=["per-user", "shared"],
        default="per-user",
        help="per-user: each user has its own ledger sandboxes (exact checks); shared: no session header",
    )
    parser.add_argument(
        "--auth",
        choices=["none", "token"],
        default="none",
        help="token: send each institution's bearer token from the world (for serve --auth token)",
    )


_workload: dict[str, Workload] = {}


def _workload_for(world: str) -> Workload:
    if world not in _workload:  # read once per process, shared by its users
        _workload[world] = Workload.load(world or None)
    return _workload[world]


_tokens: dict[str, dict[str, str]] = {}


def _tokens_for(world: str) -> dict[str, str]:
    if world not in _tokens:
        _tokens[world] = institution_tokens(world or None)
    return _tokens[world]


def _institution_of(request: Any) -> str:
    """The institution a request acts for, wherever its message keeps it."""
    if hasattr(request, "institution_code"):
        return request.institution_code
    if hasattr(request, "request"):
        return request.request.visit.institution_code
    return request.visit.institution_code


def _weights(spec: str) -> dict[str, int]:
    weights = dict(FLOW_WEIGHTS)
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        if name.strip() not in weights:
            raise ValueError(f"unknown flow {name!r}; flows are {', '.join(FLOW_WEIGHTS)}")
        weights[name.strip()] = int(value)
    return weights


def _target(host: str | None) -> str:
    host = (host or "127.0.0.1:50051").strip()
    for scheme in ("grpc://", "http://"):
        host = host.removeprefix(scheme)
    return host.rstrip("/")


class SettlementClient:
    """The gRPC stub, reporting every call to Locust (time, size, error)."""

    def __init__(
        self,
        target: str,
        session: str,
        environment: Any,
        tokens: dict[str, str] | None = None,
    ) -> None:
        """`session`: the prefix of this user's sandboxes ("-" + the institution is appended);
        "" for the real ledger."""
        self.channel = open_channel(target)  # one server, or replicas round_robin (a:1,b:2; dns:///...)
        self.stub = pb_grpc.SettlementServiceStub(self.channel)
        self.session = session
        self.tokens = tokens or {}  # institution -> bearer token (serve --auth token)
        self.fire = environment.events.request.fire

    def _metadata(self, request: Any) -> tuple[tuple[str, str], ...]:
        institution = _institution_of(request)
        metadata = ((SESSION_HEADER, f"{self.session}-{institution}"),) if self.session else ()
        if not self.tokens:
            return metadata
        return (*metadata, ("authorization", f"Bearer {self.tokens.get(institution, '')}"))

    def call(self, name: str, request: Any, expect_reason: str = "") -> Any:
        """The answer; None when the call failed (already reported). With
        `expect_reason`, the refusal with that reason is the success."""
        started = time.perf_counter()
        answer, error = None, None
        try:
            answer = getattr(self.stub, name)(request, timeout=DEADLINE_S, metadata=self._metadata(request))
            if expect_reason:
                error = ValidationError(f"{name} succeeded; expected refusal {expect_reason}")
        except grpc.RpcError as e:
            if not expect_reason or rejection_of(e).reason != expect_reason:
                error = e
                if expect_reason:
                    error = ValidationError(f"{name}: expected {expect_reason}, got {rejection_of(e)}")
        self.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=answer.ByteSize() if answer is not None else 0,
            exception=error,
            context={},
        )
        return answer if error is None else None

    def close(self) -> None:
        self.channel.close()


class Hospital(User):
    """One HIS terminal: runs flows back to back (closed loop, no think time by
    default; set `wait_time` to model cashiers)."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.workload = _workload_for(getattr(options, "world", "") if options else "")
        weights = _weights(getattr(options, "weights", "") if options else "")
        self.flows = [getattr(self, f"flow_{name}") for name, w in weights.items() for _ in range(w)]
        self.rng = random.Random()
        self.tag = uuid.uuid4().hex[:10].upper()
        self.seq = 0
        shared = options is not None and getattr(options, "ledger_session", "per-user") == "shared"
        session = "" if shared else f"locust-{self.tag}"
        tokens = None
        if options is not None and getattr(options, "auth", "none") == "token":
            tokens = _tokens_for(getattr(options, "world", ""))
        self.client = SettlementClient(_target(self.host), session, self.environment, tokens)
        self.settled: deque[tuple[pb.SettlementRequest, pb.Settlement]] = deque(maxlen=50)
        # (institution = sandbox, person, disease, year) -> cap left
        self.caps: dict[tuple[str, str, str, str], int] = {}

    def on_stop(self) -> None:
        self.client.close()

    @task
    def flow(self) -> None:
        self.rng.choice(self.flows)()

    # --- reporting ----------------------------------------------------------------------------

    def _check(self, name: str, problems: list[str]) -> bool:
        """Report the validation of one answer: a failure lists what was wrong."""
        self.environment.events.request.fire(
            request_type="validate",
            name=name,
            response_time=0,
            response_length=0,
            exception=ValidationError("; ".join(problems)) if problems else None,
            context={},
        )
        return not problems

    def msgid(self, institution_code: str) -> str:
        """Institution + yyyyMMddHHmmss + this user's tag + a sequence: unique
        across users and workers (a load run sends more than 9999 a second)."""
        self.seq += 1
        return f"{institution_code}{time.strftime('%Y%m%d%H%M%S')}{self.tag}{self.seq:06d}"

    def request(self) -> pb.SettlementRequest:
        request = self.workload.settlement_request(self.rng, "")
        request.msgid = self.msgid(request.visit.institution_code)
        return request

    # --- the flows ------------------------------------------------------------------------------

    def flow_verify(self) -> None:
        request = self.request()
        answer = self.client.call("VerifyRegistration", pb.VerifyRegistrationRequest(visit=request.visit))
        if answer is not None:
            problems = [] if answer.eligible else [f"generated visit not eligible: {answer.reason}"]
            self._check("verify eligible", problems)

    def flow_settle(self) -> pb.Settlement | None:
        """pre-settle, then settle the same request: the figures must agree."""
        request = self.request()
        pre = self.client.call("PreSettleVisit", pb.PreSettleVisitRequest(request=request))
        if pre is None:
            return None
        self._check("pre-settle figures", money_problems(request, pre.settlement))
        answer = self.client.call("SettleVisit", pb.SettleVisitRequest(request=request))
        if answer is None:
            return None
        s = answer.settlement
        problems = money_problems(request, s)
        if answer.replayed:
            problems.append("a new msgid was answered as a replay")
        if not s.settlement_id or s.status != pb.SETTLEMENT_STATUS_SETTLED or s.msgid != request.msgid:
            problems.append(f"settlement id/status/msgid wrong: {s.settlement_id!r} {s.status} {s.msgid}")
        if s.totals != pre.settlement.totals:
            problems.append(f"settle totals {_fmt(s.totals)} != pre-settle {_fmt(pre.settlement.totals)}")
        if list(s.items) != list(pre.settlement.items):
            problems.append("settled items differ from the pre-settle's")
        problems += self._cap_problems(s)
        if self._check("settle validated", problems):
            self.settled.append((request, s))
            return s
        return None

    def _cap_problems(self, s: pb.Settlement) -> list[str]:
        """The cap left never goes negative and falls by exactly what the pooled fund paid
        (统筹基金: the cap bounds it; serious-illness, large-amount and assistance funds pay above it)."""
        if not s.totals.HasField("cap_remaining_fen"):
            return []
        key = (s.institution_code, s.person_no, s.disease_code, s.visit_date[:4])
        left, before = s.totals.cap_remaining_fen, self.caps.get(key)
        self.caps[key] = left
        problems = [] if left >= 0 else [f"cap exceeded: {left} fen left"]
        if before is not None and before - s.totals.pooled_fund_fen != left:
            problems.append(f"cap left {before} - pooled fund {s.totals.pooled_fund_fen} != {left}")
        return problems

    def flow_retry(self) -> None:
        """A lost answer: the HIS sends the same msgid again and must get the same settlement."""
        if not self.settled:
            self.flow_settle()
            return
        request, first = self.settled[-1]
        answer = self.client.call("SettleVisit", pb.SettleVisitRequest(request=request))
        if answer is not None:
            problems = [] if answer.replayed else ["a retry was not answered as a replay"]
            if (
                answer.settlement.settlement_id != first.settlement_id
                or answer.settlement.totals != first.totals
            ):
                problems.append("a retry answered a different settlement")
            self._check("retry replayed", problems)

    def _undo_target(self) -> tuple[pb.SettlementRequest, pb.Settlement] | None:
        if not self.settled and self.flow_settle() is None:
            return None
        return self.settled.pop() if self.settled else None

    def _forget_cap(self, s: pb.Settlement) -> None:
        self.caps.pop((s.institution_code, s.person_no, s.disease_code, s.visit_date[:4]), None)

    def flow_reverse(self) -> None:
        target = self._undo_target()
        if target is None:
            return
        _request, s = target
        answer = self.client.call(
            "ReverseSettlement",
            pb.ReverseSettlementRequest(
                msgid=self.msgid(s.institution_code),
                institution_code=s.institution_code,
                settlement_id=s.settlement_id,
                operator="load",
            ),
        )
        if answer is not None:
            self._forget_cap(s)  # the fund's share goes back to the cap
            r = answer.settlement
            problems = [] if r.status == pb.SETTLEMENT_STATUS_REVERSED else [f"reversed status {r.status}"]
            if r.settlement_id != s.settlement_id or r.totals != s.totals:
                problems.append("reversal answered another settlement")
            self._check("reverse undone", problems)

    def flow_void(self) -> None:
        """冲正 of a settled msgid: the settlement it made is voided."""
        target = self._undo_target()
        if target is None:
            return
        request, s = target
        answer = self.client.call("VoidByMessageId", self._void_request(s.institution_code, request.msgid))
        if answer is not None:
            self._forget_cap(s)
            v = answer.settlement
            problems = [] if answer.voided_settlement else ["void of a settled msgid voided nothing"]
            if v.settlement_id != s.settlement_id or v.status != pb.SETTLEMENT_STATUS_VOIDED:
                problems.append(f"void answered {v.settlement_id} status {v.status}")
            self._check("void undone", problems)

    def flow_void_unseen(self) -> None:
        """冲正 before the settle arrived: the late settle must be refused."""
        request = self.request()
        answer = self.client.call(
            "VoidByMessageId", self._void_request(request.visit.institution_code, request.msgid)
        )
        if answer is None:
            return
        self._check("void blocks", [] if not answer.voided_settlement else ["void of an unseen msgid voided"])
        self.client.call("SettleVisit", pb.SettleVisitRequest(request=request), expect_reason="MSGID_VOIDED")

    def _void_request(self, institution_code: str, original_msgid: str) -> pb.VoidByMessageIdRequest:
        return pb.VoidByMessageIdRequest(
            msgid=self.msgid(institution_code),
            institution_code=institution_code,
            original_msgid=original_msgid,
            original_infno="2207",
            operator="load",
        )


def money_problems(request: pb.SettlementRequest, s: pb.Settlement) -> list[str]:
    """What is wrong with one answer's money, whatever the rules."""
    t, problems = s.totals, []
    billed = sum(item.amount_fen for item in request.items)
    if t.total_fen != billed:
        problems.append(f"total {t.total_fen} != billed {billed}")
    if t.fund_pays_fen + t.patient_pays_fen != t.total_fen:
        problems.append(f"fund {t.fund_pays_fen} + patient {t.patient_pays_fen} != total {t.total_fen}")
    if min(t.fund_pays_fen, t.patient_pays_fen, t.in_scope_fen, t.deductible_applied_fen) < 0:
        problems.append(f"negative money: {_fmt(t)}")
    if t.HasField("cap_remaining_fen") and t.cap_remaining_fen < 0:
        problems.append(f"cap exceeded: {t.cap_remaining_fen} fen left")
    return problems


def _fmt(t: pb.SettlementTotals) -> str:
    return f"total={t.total_fen} fund={t.fund_pays_fen} patient={t.patient_pays_fen}"
