"""The gRPC servicer: one request flows top to bottom —
validation -> registration check -> rules -> ledger -> answer.

It translates messages to plain data and back; the rules and the ledger know
nothing of gRPC. Every refusal leaves as a status with an ErrorInfo reason.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from settlesim.server import answers, calls, stored_answers, validation
from settlesim.server.calls import Caller
from settlesim.server.ids import IDS
from settlesim.server.journal import current_note
from settlesim.server.ledger import LedgerStore, NationalWrites, StoredItem, StoredSettlement
from settlesim.server.model import CatalogClass, FeeLine, VisitKey, World, YearlyTotals, new_tuple
from settlesim.server.rules.eligibility import Eligibility, check_registration
from settlesim.server.rules.funds import compute_visit, fund_input, terms_source
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.rules.settlement import ItemResult, SettlementResult
from settlesim.server.runs import route_call
from settlesim.server.sandboxes import Sandboxes
from settlesim.server.sent_answers import EncodedResponses, settlement_bytes
from settlesim.server.status import to_status
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc

log = logging.getLogger("settlesim.server")

R = TypeVar("R")


class Undecodable:
    """Request bytes that do not parse as the call's message (truncated, garbage,
    invalid UTF-8 in a string field). gRPC would answer INTERNAL with no reason;
    the servicer refuses it as MALFORMED_MESSAGE instead."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that hands undecodable bytes on as Undecodable."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return Undecodable(str(error))

    return deserialize


SERVICE = pb.DESCRIPTOR.services_by_name["SettlementService"]


def method_handlers(servicer: pb_grpc.SettlementServiceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The servicer's unary handler of each method, by method name, with tolerant request
    deserializers."""
    handlers = {}
    serializers = getattr(servicer, "response_serializers", {})
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=tolerant(request_type.FromString),
            response_serializer=serializers.get(method.name, response_type.SerializeToString),
        )
    return handlers


def register(handlers: dict[str, grpc.RpcMethodHandler], server: grpc.Server | grpc.aio.Server | GenericOnly) -> None:
    """SettlementService's handlers (by method name) on `server`."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


# The call a hospital makes most: gRPC core keeps more requests for it (server/grpc_accepts.py).
OFTEN_ACCEPTED = frozenset({f"/{SERVICE.full_name}/SettleVisit"})


class GenericOnly:
    """A grpc.aio server as the code that adds services to it sees it: every method is added as
    a generic one. grpc.aio keeps one pending request per registered method and waits on all of
    them (asyncio.wait, Python code over every future) each time it accepts a call, so every
    registered method cost every call about a microsecond; the generic methods share one request.
    (The generated add_*_to_server functions add each service both ways; the generic way stays.)
    `accepted_often` (fully qualified names) are registered too: those that server/grpc_accepts.py
    keeps more requests for; `registered` has their handlers."""

    def __init__(self, server: grpc.aio.Server, accepted_often: frozenset[str] = frozenset()) -> None:
        self._server = server
        self._accepted_often = accepted_often
        self.registered: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Only the methods accepted often: the service's generic handler answers the others."""
        often = {method: handler for method, handler in handlers.items() if f"/{name}/{method}" in self._accepted_often}
        if often:
            self._server.add_registered_method_handlers(name, often)
            self.registered.update({f"/{name}/{method}": handler for method, handler in often.items()})


def add_to_server(servicer: pb_grpc.SettlementServiceServicer, server: grpc.Server | grpc.aio.Server) -> None:
    """What the generated add_SettlementServiceServicer_to_server does, with
    tolerant request deserializers."""
    register(method_handlers(servicer), server)


def _log_refusal(name: str, refusal: Refusal) -> None:
    log.info(
        "%s refused: %s %s",
        name,
        refusal.reason,
        refusal.message,
        extra={"fields": {"rpc": name, "reason": str(refusal.reason), **refusal.metadata}},
    )


def refusals_as_status(method: Callable[..., R]) -> Callable[..., R]:
    """For the plain methods of the check-run service (the aio server runs them in its thread
    pool): the caller resolved once for the call, a Refusal turned into its gRPC status;
    anything else is a bug and is logged with its traceback before gRPC answers INTERNAL.
    The settlement calls on the loop are `served`."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        with calls.resolved(context, self.call_settings):
            return answered(self, request, context)

    def answered(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            if type(request) is Undecodable:
                raise Refusal(Reason.MALFORMED_MESSAGE, f"the request does not parse: {request.error}")
            return method(self, request, context)
        except Refusal as refusal:
            _mark_sandbox(refusal, calls.caller_of(context, self.call_settings))
            _log_refusal(method.__name__, refusal)
            status = to_status(refusal)
            context.abort(status.code, status.details, status.trailing_metadata)
            raise  # abort raises; this keeps type checkers honest
        except Exception:
            log.exception("%s failed", method.__name__)
            raise

    return wrapper


def served(claimed: Callable[[Any], str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A SettlementService call, `call(self, caller, request)`, as the gRPC method
    `(self, request, context)`: the caller resolved once (server/calls.py: an outer wrapper's
    resolution, the audit log's, is reused) and routed to its check run (`claimed(request)`:
    the institution the request names); a refusal becomes its status, as refusals_as_status
    does. One coroutine around the call, made when the class is."""

    def decorate(call: Callable[..., Any]) -> Callable[..., Any]:
        name = call.__name__

        @functools.wraps(call)
        async def method(self: SettlementService, request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = None
            try:
                if type(request) is Undecodable:
                    raise Refusal(Reason.MALFORMED_MESSAGE, f"the request does not parse: {request.error}")
                caller = self.routed(context, calls.caller_of(context, self.call_settings).require(), claimed(request))
                note = current_note()
                if note is not None and note.delay_seconds:  # a check run's targeted delay (server/faults.py)
                    await asyncio.sleep(note.delay_seconds)
                return await call(self, caller, request)
            except Refusal as refusal:
                # a sandbox's refusal says so: the caller as routed, if it got that far
                _mark_sandbox(refusal, caller if caller is not None else calls.caller_of(context, self.call_settings))
                _log_refusal(name, refusal)
                status = to_status(refusal)
                await context.abort(status.code, status.details, status.trailing_metadata)
                raise  # abort raises; this keeps type checkers honest
            except Exception:
                log.exception("%s failed", name)
                raise

        return method

    return decorate


def _mark_sandbox(refusal: Refusal, caller: Caller) -> None:
    """A sandbox's refusal says so (the caller as routed to a check run, if it was)."""
    if caller.session and caller.refusal is None and refusal.reason != Reason.SESSION_NOT_YOURS:
        refusal.metadata.setdefault("sandbox", caller.session)


def request_hash(message: Any) -> str:
    """Identity of a request for idempotency: same msgid + same bytes = retry."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


class SettlementCore:
    """Between the doors and the ledger: validation, the registration check, the rules, the
    ledger. Door-agnostic: a Caller and contract messages in, contract messages out, Refusal
    for every refusal. The gRPC servicer and the national JSON door (server/national/) call it."""

    def __init__(self, world: World, ledger: LedgerStore) -> None:
        self.world = world
        self.ledger = ledger
        self.sandboxes = Sandboxes(ledger)
        self.encoded = EncodedResponses()  # new settles' responses, encoded once (server/sent_answers.py)

    async def session_for(self, caller: Caller, institution: str, *, writes: bool) -> str:
        """The ledger namespace a call acting for `institution` uses: "" (the real ledger) without
        a session; a session only if it is this institution's (and its named members'), opened by
        the first write (server/sandboxes.py)."""
        if caller.session:
            await self.sandboxes.enter(caller.session, caller.members | {institution}, writes=writes)
        return caller.session

    def acting_for(self, caller: Caller, institution_code: str) -> str:
        """The institution a request acts for: it must be the caller's own."""
        if caller.institution and institution_code != caller.institution:
            raise Refusal(
                Reason.INSTITUTION_NOT_CALLER,
                f"the caller is {caller.institution}; it cannot act for {institution_code}",
                institution_code=institution_code,
            )
        return institution_code

    # --- the calls ----------------------------------------------------------------------------
    # Each returns the core's coroutine for `served` to await: no coroutine of its own a call.

    async def verify_registration(self, caller: Caller, request: pb.VerifyRegistrationRequest):
        visit = validation.visit_key(request.visit, self.world)
        self.acting_for(caller, visit.institution_code)
        session = await self.session_for(caller, visit.institution_code, writes=False)
        answer = self._verification(visit, check_registration(self.world, visit))
        answer.sandbox = session
        return answer

    async def pre_settle_visit(self, caller: Caller, request: pb.PreSettleVisitRequest):
        plan = self._plan(caller, request.request)
        session = await self.session_for(caller, plan.visit.institution_code, writes=False)
        totals = self.ledger.yearly_totals(
            session, plan.person_no, plan.visit.disease_code, plan.visit.visit_date.year
        )
        response = pb.PreSettleVisitResponse()
        plan.fill_answer(response.settlement, plan.compute(totals), "", "", session)
        return response

    async def settle_visit(
        self,
        caller: Caller,
        request: pb.SettleVisitRequest,
        on_settled: Callable[[NationalWrites, StoredSettlement], None] | None = None,
    ) -> pb.SettleVisitResponse:
        """`on_settled(writes, stored)` runs in the settlement's own transaction (the
        national door links its visit there), not for a replay."""
        given = request.request
        try:
            plan = self._plan(caller, given)
        except Refusal:
            # A msgid the platform has seen is answered as what it was (a retry
            # replays even if the world changed since; a voided or reused msgid
            # says so) rather than judged again. Only refused requests pay this.
            seen = await self._seen_settle(caller, given)
            if seen is None:
                raise
            return seen
        # without a session, no sandbox to enter (and no coroutine to make for it)
        session = caller.session and await self.session_for(caller, plan.visit.institution_code, writes=True)
        built: list[tuple[pb.SettleVisitResponse, bytes]] = []  # the answer made in the transaction, if new

        def settle(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
            result = plan.compute(totals)
            # The answer is made inside its response (no copy of it into one) and the response
            # encoded once: the ledger stores its settlement's bytes, gRPC sends them all
            # (server/sent_answers.py). A batch run again (group_commit.py) makes it again.
            response = pb.SettleVisitResponse()
            settlement_id = IDS.next("S")
            plan.fill_answer(response.settlement, result, settlement_id, IDS.next("V"), session)
            sent = response.SerializeToString()
            built.append((response, sent))
            return plan.stored(result, settlement_id, settlement_bytes(sent), session), result.totals_after

        stored, replayed = await self.ledger.settle_async(
            session,
            plan.msgid,
            plan.visit.institution_code,
            request_hash(given),
            plan.person_no,
            plan.visit.disease_code,
            plan.visit.visit_date.year,
            settle,
            on_settled,
        )
        if log.isEnabledFor(logging.INFO):  # the settle path is measured: no work when unlogged
            log.info(
                "settled %s msgid=%s fund=%d replayed=%s",
                stored.settlement_id,
                plan.msgid,
                stored.fund_pays,
                replayed,
                extra={
                    "fields": {
                        "rpc": "SettleVisit",
                        "settlement_id": stored.settlement_id,
                        "msgid": plan.msgid,
                        "institution_code": stored.institution_code,
                        "sandbox": session,  # "" for the real ledger
                        "fund_pays_fen": stored.fund_pays,
                        "replayed": replayed,
                    }
                },
            )
        # A new settlement answers with the message it stored (no decode of the
        # bytes just encoded); a replay answers the stored bytes with today's status.
        if built and not replayed:
            response, sent = built[-1]
            self.encoded.keep(response, sent)
            return response
        return pb.SettleVisitResponse(settlement=settlement_answer(stored), replayed=replayed)

    async def reverse_settlement(self, caller: Caller, request: pb.ReverseSettlementRequest):
        validation.required_codes(
            {"operator": request.operator},
            msgid=request.msgid,
            institution_code=request.institution_code,
            settlement_id=request.settlement_id,
        )
        institution = self.acting_for(caller, request.institution_code)
        session = await self.session_for(caller, institution, writes=True)
        stored, replayed = await self.ledger.reverse_async(
            session, request.msgid, institution, request_hash(request), request.settlement_id
        )
        return pb.ReverseSettlementResponse(settlement=settlement_answer(stored), replayed=replayed)

    async def void_by_message_id(self, caller: Caller, request: pb.VoidByMessageIdRequest):
        validation.required_codes(
            {"operator": request.operator, "original_infno": request.original_infno},
            msgid=request.msgid,
            institution_code=request.institution_code,
            original_msgid=request.original_msgid,
        )
        if request.msgid == request.original_msgid:
            raise Refusal(
                Reason.FIELD_INVALID,
                "a void needs its own msgid, not the original's",
                (validation.Violation("msgid", "equals original_msgid", Reason.FIELD_INVALID),),
            )
        institution = self.acting_for(caller, request.institution_code)
        session = await self.session_for(caller, institution, writes=True)
        outcome = await self.ledger.void_async(
            session, request.msgid, institution, request_hash(request), request.original_msgid
        )
        answer = pb.VoidByMessageIdResponse(
            voided_settlement=outcome.settlement is not None, replayed=outcome.replayed, sandbox=session
        )
        if outcome.settlement is not None:
            answer.settlement.CopyFrom(settlement_answer(outcome.settlement))
        return answer

    async def get_settlement(self, caller: Caller, request: pb.GetSettlementRequest):
        if request.settlement_id:
            validation.required_codes(
                institution_code=request.institution_code, settlement_id=request.settlement_id
            )
        else:
            validation.required_codes(institution_code=request.institution_code, msgid=request.msgid)
        institution = self.acting_for(caller, request.institution_code)
        session = await self.session_for(caller, institution, writes=False)
        stored = self.ledger.get(session, institution, request.settlement_id, request.msgid)
        return pb.GetSettlementResponse(settlement=settlement_answer(stored))

    async def reconcile(self, caller: Caller, request: pb.ReconcileRequest):
        validation.required_codes(institution_code=request.institution_code)
        start, end = validation.date_range(request.start_date, request.end_date)
        institution = self.acting_for(caller, request.institution_code)
        session = await self.session_for(caller, institution, writes=False)
        sums = self.ledger.reconcile(session, institution, start, end, request.include_entries)
        platform = pb.ReconcileFigures(
            count=sums.count,
            total_fen=sums.total,
            fund_pays_fen=sums.fund_pays,
            patient_pays_fen=sums.patient_pays,
        )
        hospital = request.hospital
        mismatched = [
            name
            for name in ("count", "total_fen", "fund_pays_fen", "patient_pays_fen")
            if getattr(hospital, name) != getattr(platform, name)
        ]
        answer = pb.ReconcileResponse(
            matched=not mismatched, platform=platform, mismatched_fields=mismatched, sandbox=session
        )
        for s in sums.entries:
            answer.entries.add(
                settlement_id=s.settlement_id,
                msgid=s.msgid,
                visit_date=s.visit_date.isoformat(),
                total_fen=s.total,
                fund_pays_fen=s.fund_pays,
                patient_pays_fen=s.patient_pays,
            )
        return answer

    # --- shared steps -------------------------------------------------------------------------

    async def _seen_settle(self, caller: Caller, request: pb.SettlementRequest) -> pb.SettleVisitResponse | None:
        """The answer to a settle whose msgid this institution already used, or
        None when the msgid is new (or not even well-formed)."""
        institution, msgid = request.visit.institution_code, request.msgid
        if not (validation.is_code(institution) and validation.is_code(msgid)):
            return None
        if caller.institution and caller.institution != institution:
            return None  # not the caller's msgid to ask about: the first refusal stands
        try:
            session = await self.session_for(caller, institution, writes=False)
        except Refusal:
            return None  # not the caller's sandbox either
        seen = self.ledger.find_message(session, institution, msgid)
        if seen is None:
            return None
        kind, seen_hash, _ = seen
        if kind == "blocked":
            raise Refusal(Reason.MSGID_VOIDED, f"msgid {msgid} was voided and cannot settle", msgid=msgid)
        if kind != "settle" or seen_hash != request_hash(request):
            raise Refusal(
                Reason.MSGID_REUSED, f"msgid {msgid} was already used for a different request", msgid=msgid
            )
        stored = self.ledger.get(session, institution, msgid=msgid)
        return pb.SettleVisitResponse(settlement=settlement_answer(stored), replayed=True)

    def _plan(self, caller: Caller, request: pb.SettlementRequest) -> SettlementPlan:
        """Validation and the registration check: everything before money."""
        given = validation.settlement_input(request, self.world)
        self.acting_for(caller, given.visit.institution_code)
        eligibility = check_registration(self.world, given.visit)
        if eligibility.reason is not None:
            raise Refusal(
                eligibility.reason, eligibility.message, **_refusal_metadata(given.visit, eligibility)
            )
        assert eligibility.institution is not None
        catalog = self.world.catalog_for(eligibility.institution.region)
        assert catalog is not None  # the world loader refuses a settling institution without one
        return SettlementPlan(self.world, given, eligibility, catalog)

    def _verification(self, visit: VisitKey, e: Eligibility) -> pb.VerifyRegistrationResponse:
        answer = pb.VerifyRegistrationResponse(
            eligible=e.eligible,
            reason=e.reason.value if e.reason else "",
            message=e.message,
            coverage=answers.COVERAGE[e.coverage],
            person_no=e.person.person_no if e.person else "",
            insured_region=e.person.insured_region if e.person else "",
            treatment_region=e.institution.region if e.institution else "",
        )
        reg = answers.registration(e.registration, e.scheme)
        if reg is not None:
            answer.registration.CopyFrom(reg)
        return answer


class SettlementService(pb_grpc.SettlementServiceServicer):
    """The gRPC door: the caller from metadata, the core, refusals as statuses."""

    def __init__(
        self,
        world: World,
        ledger: LedgerStore,
        *,
        allow_sessions: bool = True,
        authenticate: calls.Authenticator | None = None,
        runs: Any = None,
    ) -> None:
        """`authenticate` names the institution the transport vouches for (client
        certificate or token) or raises Refusal; None trusts the request, as the
        insecure local stub does."""
        self.core = SettlementCore(world, ledger)
        self.world = world
        self.ledger = ledger
        self.call_settings = calls.CallSettings(allow_sessions, authenticate)
        self.sandboxes = self.core.sandboxes
        self.runs = runs  # server/runs.py RunRegistry: check runs take their institution's calls
        # SettleVisit sends the bytes its settle encoded for the ledger (server/sent_answers.py)
        self.response_serializers = {"SettleVisit": self.core.encoded.serialize}

    # --- who is calling ---------------------------------------------------------------------

    def routed(self, context: grpc.aio.ServicerContext, caller: Caller, claimed: str) -> Caller:
        """The caller as the call goes on: in its check run's session when it belongs to one.
        `claimed`: the institution the request names (an open check run of the institution
        the call acts for takes the call: server/runs.py)."""
        note = current_note()
        if note is None and self.runs is None:
            return caller
        session = route_call(self.runs, context, caller.session, caller.institution, claimed, note)
        if session != caller.session:  # a check run's session: the run's institution alone
            caller = caller._replace(session=session, members=frozenset())
        return caller

    # --- the calls ----------------------------------------------------------------------------
    # Each returns the core's coroutine for `served` to await: no coroutine of its own a call.

    @served(lambda request: request.visit.institution_code)
    def VerifyRegistration(self, caller: Caller, request: pb.VerifyRegistrationRequest):
        return self.core.verify_registration(caller, request)

    @served(lambda request: request.request.visit.institution_code)
    def PreSettleVisit(self, caller: Caller, request: pb.PreSettleVisitRequest):
        return self.core.pre_settle_visit(caller, request)

    @served(lambda request: request.request.visit.institution_code)
    def SettleVisit(self, caller: Caller, request: pb.SettleVisitRequest):
        return self.core.settle_visit(caller, request)

    @served(lambda request: request.institution_code)
    def ReverseSettlement(self, caller: Caller, request: pb.ReverseSettlementRequest):
        return self.core.reverse_settlement(caller, request)

    @served(lambda request: request.institution_code)
    def VoidByMessageId(self, caller: Caller, request: pb.VoidByMessageIdRequest):
        return self.core.void_by_message_id(caller, request)

    @served(lambda request: request.institution_code)
    def GetSettlement(self, caller: Caller, request: pb.GetSettlementRequest):
        return self.core.get_settlement(caller, request)

    @served(lambda request: request.institution_code)
    def Reconcile(self, caller: Caller, request: pb.ReconcileRequest):
        return self.core.reconcile(caller, request)


class SettlementPlan:
    """A validated, eligible visit, ready to be priced against yearly totals. Made once per
    settle and read only (a plain class: a frozen dataclass costs a setattr call per field)."""

    __slots__ = ("catalog", "eligibility", "given", "msgid", "person_no", "visit", "world")

    def __init__(
        self, world: World, given: validation.SettlementInput, eligibility: Eligibility, catalog: Any
    ) -> None:
        assert eligibility.person is not None
        self.world, self.given, self.eligibility, self.catalog = world, given, eligibility, catalog
        self.msgid: str = given.msgid
        self.visit: VisitKey = given.visit
        self.person_no: str = eligibility.person.person_no

    def compute(self, totals: YearlyTotals) -> SettlementResult:
        e = self.eligibility
        assert e.terms is not None and e.policy is not None and e.person is not None
        return compute_visit(
            self.given.lines, self.catalog, e.terms,
            terms_source(e.policy, e.person.insurance_type, self.visit.disease_code, e.terms_since),
            totals, self.visit.visit_date,
            fund_input(e.policy, e.person, self.visit.visit_date, self.given.use_account),
        )  # fmt: skip

    def answer(self, result: SettlementResult, settlement_id: str, visit_id: str, sandbox: str) -> pb.Settlement:
        answer = pb.Settlement()
        self.fill_answer(answer, result, settlement_id, visit_id, sandbox)
        return answer

    def fill_answer(
        self, answer: pb.Settlement, result: SettlementResult, settlement_id: str, visit_id: str, sandbox: str
    ) -> None:
        """The answer written into `answer` (an empty Settlement, e.g. a response's own field)."""
        e = self.eligibility
        person, institution = e.person, e.institution
        assert person is not None and institution is not None
        answer.settlement_id = settlement_id
        answer.visit_id = visit_id
        answer.msgid = self.msgid
        answer.status = pb.SETTLEMENT_STATUS_SETTLED if settlement_id else pb.SETTLEMENT_STATUS_UNSPECIFIED
        answer.institution_code = institution.code
        answer.person_no = person.person_no
        answer.insured_region = person.insured_region
        answer.treatment_region = institution.region
        answer.disease_code = self.visit.disease_code
        answer.visit_date = self.visit.visit_date.isoformat()
        answer.insurance_type = answers.INSURANCE_TYPE[person.insurance_type]
        answers.fill_figures(answer.totals, result)
        answers.add_funds(answer.funds, result)
        answer.sandbox = sandbox
        answers.add_items(answer.items, result)
        answers.add_trace(answer.trace, e.trace)
        answers.add_trace(answer.trace, result.trace)

    def stored(self, result: SettlementResult, settlement_id: str, answer: bytes, session: str) -> StoredSettlement:
        """The ledger's row of this settlement: its figures, items and encoded answer."""
        f = result.figures
        visit = self.visit
        m = result.funds
        # the funds after the pooled one and the personal account; None: the pooled fund alone
        funds = (None, None, None, None, None) if m is None else (
            m.pooled, m.serious_threshold_applied, m.serious_pays, m.assistance_pays, m.account_pays
        )  # fmt: skip
        # Positional, in the order of its fields: 25 keywords cost ~13k instructions more a row.
        # tests/test_named_tuples.py compares it field by field with the row made by keywords.
        return StoredSettlement(
            settlement_id, session, self.msgid, visit.institution_code, self.person_no, visit.disease_code,
            visit.visit_date, f.total, f.fund_pays, f.patient_pays, f.deductible_applied, answer,
            "settled", "",  # status, undone_by_msgid
            f.full_self_pay, f.over_ceiling, f.pre_self_pay, f.in_scope, f.ratio_bp,
            _stored_items(self.given.lines, result.items),
            *funds,  # pooled_pays, serious_threshold, serious_pays, assistance_pays, account_pays
        )  # fmt: skip


_CLASS_TEXT = {klass: klass.value for klass in CatalogClass}  # as item rows say it (.value is a call)


def _stored_items(lines: tuple[FeeLine, ...], items: tuple[ItemResult, ...]) -> tuple[StoredItem, ...]:
    """The settlement's item rows: each fee line with the parts the rules gave it."""
    rows = []
    for line, item in zip(lines, items, strict=True):
        sequence_no, code, unit_price, quantity, hospital_code = line
        _, _, klass, b_share_bp, ceiling, amount, full_self_pay, over_ceiling, pre_self_pay, in_scope = item
        row = (sequence_no, code, hospital_code, unit_price, quantity, amount, _CLASS_TEXT[klass], b_share_bp,
               ceiling, full_self_pay, over_ceiling, pre_self_pay, in_scope)  # fmt: skip
        rows.append(new_tuple(StoredItem, row))
    return tuple(rows)


def settlement_answer(stored: StoredSettlement) -> pb.Settlement:
    """The stored answer, with its current status (a damaged one is refused:
    stored_answers.decode)."""
    answer = answers.complete_older(stored_answers.decode(stored))
    answer.status = answers.STATUS[stored.status]
    answer.undone_by_msgid = stored.undone_by_msgid
    answer.sandbox = stored.session  # also for settlements stored before answers named their sandbox
    return answer


def _refusal_metadata(visit: VisitKey, e: Eligibility) -> dict[str, str]:
    metadata = {"institution_code": visit.institution_code, "disease_code": visit.disease_code}
    if e.person is not None:
        metadata["person_no"] = e.person.person_no
    if e.registration is not None:
        metadata["registration_id"] = e.registration.id
    return metadata
