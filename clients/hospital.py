"""A mock hospital HIS: builds requests the way an HIS does, generates msgids in
the national format, and retries with the same msgid so a lost answer never
becomes a second settlement.

    from settlesim.clients.hospital import Fee, Hospital
    his = Hospital.connect("127.0.0.1:50051", "H11010500001")
    answer = his.settle("63000000000000000001", "M00503", "2021-12-09",
                        [Fee("A-CHEMO-001", 17963)])
    answer.settlement.totals.fund_pays_fen   # 12963
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import ClassVar, TypeVar

import grpc
from settlesim.clients.channels import open_channel
from settlesim.clients.rejections import rejection_of
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc

SESSION_HEADER = "x-settlesim-session"
SESSION_MEMBERS_HEADER = "x-settlesim-session-members"  # the other institutions sharing a sandbox
# The codes a lost answer comes with (the network, the transport, a server that
# died or shed load mid-call). WITHOUT an ErrorInfo reason they say nothing about
# whether the call ran: the outcome is uncertain and the call is retried with the
# same request. With a reason they are an answer from the platform (see answer_lost).
LOST_ANSWER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
TRANSIENT = LOST_ANSWER_CODES  # the former name
# The platform's stand-in for a lost answer (docs/faults.md): treated exactly like
# a status without ErrorInfo, whatever its `fault` metadata says.
INJECTED_FAULT = "INJECTED_FAULT"
# The platform could not write the call's audit record and withheld the answer
# (docs/security.md): the call may have taken effect, exactly as a lost answer.
AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
T = TypeVar("T")


@dataclass(frozen=True)
class Fee:
    """One fee line as the HIS records it; amount = unit price × quantity."""

    catalog_code: str
    unit_price_fen: int
    quantity: int = 1
    hospital_item_code: str = ""
    name: str = ""

    @property
    def amount_fen(self) -> int:
        return self.unit_price_fen * self.quantity


class _Sequence:
    """One institution's msgid sequence within the current second."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.second = ""
        self.counter = itertools.count(1)


class MsgidFactory:
    """msgid 报文ID: institution code + yyyyMMddHHmmss + a 4-digit sequence.

    Every factory for one institution in a process shares one sequence, so two
    Hospital objects created in the same second never hand out the same msgid
    (the sequence waits for the next second after 9999). Separate processes
    acting for one institution must not run in the same second: give each its
    own institution, as a real HIS front end has one sender per institution."""

    _sequences: ClassVar[dict[str, _Sequence]] = {}
    _sequences_lock = threading.Lock()

    def __init__(self, institution_code: str, clock: Callable[[], datetime] = datetime.now) -> None:
        self.institution_code = institution_code
        self._clock = clock
        with MsgidFactory._sequences_lock:
            self._sequence = MsgidFactory._sequences.setdefault(institution_code, _Sequence())

    def __call__(self) -> str:
        sequence = self._sequence
        with sequence.lock:
            while True:
                second = self._clock().strftime("%Y%m%d%H%M%S")
                if second != sequence.second:
                    sequence.second, sequence.counter = second, itertools.count(1)
                seq = next(sequence.counter)
                if seq <= 9999:
                    return f"{self.institution_code}{second}{seq:04d}"
                time.sleep(0.001)  # more than 9999 in one second: wait for the next one


class SettlementUncertain(Exception):
    """Retries ran out without an answer: the platform may or may not have
    committed `msgid`. Void it (2601) or retry later with the same msgid."""

    def __init__(self, msgid: str, last_error: grpc.RpcError) -> None:
        super().__init__(f"no answer for msgid {msgid}: {last_error.code().name}")
        self.msgid, self.last_error = msgid, last_error


class TransportRefused(grpc.RpcError):
    """The transport refused the call in a way a retry would only repeat. Wraps
    the gRPC error: code(), details() and trailing_metadata() are its, so code
    that reads an RpcError (clients/rejections.py) reads this one too; str() is
    one line that says what to fix."""

    def __init__(self, message: str, error: grpc.RpcError) -> None:
        super().__init__(message)
        self.error = error

    def code(self) -> grpc.StatusCode:
        return self.error.code()  # type: ignore[attr-defined,no-any-return]

    def details(self) -> str:
        return self.error.details()  # type: ignore[attr-defined,no-any-return]

    def trailing_metadata(self) -> object:
        return getattr(self.error, "trailing_metadata", lambda: None)()

    def initial_metadata(self) -> object:
        return getattr(self.error, "initial_metadata", lambda: None)()


class TlsHandshakeRefused(TransportRefused):
    """The TLS handshake failed, so no request was sent: nothing ran, and
    retrying cannot help until a certificate or the trusted CA is changed."""


class MessageTooLarge(TransportRefused):
    """A message over gRPC's size limit. For the request (over the platform's
    limit, or this client's max_send_message_length) nothing ran: the request
    must be made smaller, not retried. For the answer (over this client's
    max_receive_message_length), the call DID run: `ran` is True, and a settle
    is then uncertain (a retry would only bring the same oversized answer)."""

    def __init__(self, message: str, error: grpc.RpcError, *, ran: bool) -> None:
        super().__init__(message, error)
        self.ran = ran


_SIZE = re.compile(r"(SERVER|CLIENT): (Received|Sent) message larger than max \((\d+) vs\. (\d+)\)")
_NO_CONNECTION = re.compile(r"failed to connect to all addresses|connections to all backends failing")
_PEER = re.compile(r"last error: \w+: ([^ ]+): ")


def transport_refusal(error: grpc.RpcError, *, tls: bool = False) -> TransportRefused | None:
    """`error` as a TransportRefused when it is one (a TLS handshake that failed
    on a secure channel, a message over the size limit), else None."""
    if isinstance(error, TransportRefused):
        return error
    if not hasattr(error, "code"):
        return None
    details = error.details() or ""
    code = error.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (size := _SIZE.search(details)):
        side, direction, size_bytes, limit = size.groups()
        if direction == "Received" and side == "CLIENT":
            return MessageTooLarge(
                f"the answer ({size_bytes} bytes) is over this client's receive limit ({limit} bytes): "
                "the call ran; raise grpc.max_receive_message_length",
                error,
                ran=True,
            )
        where = "the platform's" if side == "SERVER" else "this client's"
        return MessageTooLarge(
            f"request too large ({size_bytes} bytes; {where} limit is {limit} bytes): it was refused "
            "before it ran; send fewer fee items per settlement, do not retry it",
            error,
            ran=False,
        )
    # pick_first says "failed to connect to all addresses", round_robin (replicas, clients/channels.py)
    # "connections to all backends failing".
    if tls and code == grpc.StatusCode.UNAVAILABLE and _NO_CONNECTION.search(details):
        peer = _PEER.search(details)
        at = peer.group(1).removeprefix("ipv4:").removeprefix("ipv6:") if peer else "the server"
        if "Socket closed" in details or "Connection reset" in details:
            return TlsHandshakeRefused(
                f"TLS handshake refused by {at}: it closed the connection during the handshake; check that "
                "the client certificate (cert/key, --cert/--key) is signed by the platform's CA, or give "
                "one if the platform requires mutual TLS",
                error,
            )
        if "CERTIFICATE_VERIFY_FAILED" in details:
            why = (
                "the server's certificate is not signed by a CA this client trusts "
                "(CERTIFICATE_VERIFY_FAILED); check that ca / --ca is the platform's CA"
            )
        elif "Hostname Verification" in details:
            why = (
                "the server's certificate does not name the address dialled; connect by a name in its "
                "subjectAltName (or set server_name)"
            )
        elif "WRONG_VERSION_NUMBER" in details:
            why = "the server does not speak TLS on this port (WRONG_VERSION_NUMBER); connect without a CA"
        elif "handshake" in details.lower():
            why = details.rpartition("last error: ")[2]
        else:
            return None
        return TlsHandshakeRefused(f"TLS handshake with {at} failed: {why}", error)
    return None


def answer_lost(error: grpc.RpcError) -> bool:
    """True when `error` is no answer at all, so a write may or may not have run:
    a code a lost answer comes with (LOST_ANSWER_CODES) and no ErrorInfo reason
    (or INJECTED_FAULT, the platform's stand-in for a lost answer, or
    AUDIT_UNAVAILABLE, an answer withheld for want of its audit record). A refusal
    with any other reason is the platform's definite answer: nothing was done.
    Transport refusals that a retry would repeat (TransportRefused) are not lost
    answers either."""
    if isinstance(error, TransportRefused) or not hasattr(error, "code"):
        return False
    if error.code() not in LOST_ANSWER_CODES:
        return False
    reason = rejection_of(error).reason
    return not reason or reason in (INJECTED_FAULT, AUDIT_UNAVAILABLE)


def fee_items(fees: Iterable[Fee]) -> list[pb.FeeItem]:
    return [
        pb.FeeItem(
            sequence_no=f"{i:04d}",
            catalog_code=fee.catalog_code,
            hospital_item_code=fee.hospital_item_code or f"HIS-{fee.catalog_code}",
            unit_price_fen=fee.unit_price_fen,
            quantity=fee.quantity,
            amount_fen=fee.amount_fen,
            item_name=fee.name,
        )
        for i, fee in enumerate(fees, 1)
    ]


class Hospital:
    """One institution's HIS talking to the platform."""

    def __init__(
        self,
        channel: grpc.Channel,
        institution_code: str,
        *,
        session: str = "",
        session_members: Iterable[str] = (),
        deadline: float = 10.0,
        retries: int = 3,
        backoff: float = 0.05,
        metadata: Sequence[tuple[str, str]] = (),
        operator: str = "mock-his",
        tls: bool = False,
    ) -> None:
        """`tls`: the channel is a secure one, so a connection that fails during
        the handshake is reported as TlsHandshakeRefused instead of retried.
        `session` names a sandbox (docs/sessions.md); `session_members` the other
        institutions it is shared with, which must name the same group."""
        self.channel = channel
        self.stub = pb_grpc.SettlementServiceStub(channel)
        self.institution_code = institution_code
        self.next_msgid = MsgidFactory(institution_code)
        self.deadline, self.retries, self.backoff = deadline, retries, backoff
        sandbox = ((SESSION_HEADER, session),) if session else ()
        members = sorted(set(session_members) - {institution_code})
        if session and members:
            sandbox += ((SESSION_MEMBERS_HEADER, ",".join(members)),)
        self.metadata = tuple(metadata) + sandbox
        self.operator = operator
        self.tls = tls

    @classmethod
    def connect(cls, target: str, institution_code: str, **kwargs: object) -> Hospital:
        """Plain gRPC to `target`: HOST:PORT, or replicas (`a:1,b:2`, `dns:///name:port`)
        spread over with round_robin (clients/channels.py)."""
        return cls(open_channel(target), institution_code, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.channel.close()

    # --- requests ---------------------------------------------------------------------------

    def visit(
        self, person_no: str, disease_code: str, visit_date: str | date, insurance_type: int = 0
    ) -> pb.Visit:
        return pb.Visit(
            institution_code=self.institution_code,
            person=pb.PersonRef(person_no=person_no),
            disease_code=disease_code,
            visit_date=str(visit_date),
            insurance_type=insurance_type,  # type: ignore[arg-type]
            medical_type=pb.MEDICAL_TYPE_CHRONIC_SPECIAL_OUTPATIENT,
        )

    def settlement_request(
        self,
        person_no: str,
        disease_code: str,
        visit_date: str | date,
        fees: Iterable[Fee],
        msgid: str | None = None,
        *,
        use_personal_account: bool = False,
    ) -> pb.SettlementRequest:
        """`use_personal_account`: acct_used_flag (the employee's personal account pays first)."""
        return pb.SettlementRequest(
            msgid=msgid or self.next_msgid(),
            visit=self.visit(person_no, disease_code, visit_date),
            items=fee_items(fees),
            operator=self.operator,
            use_personal_account=use_personal_account,
        )

    # --- calls --------------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: object, *, retry: bool = True) -> T:
        """Call with a deadline; when the answer was lost (answer_lost) retry with
        the SAME request (and so the same msgid), which the platform answers
        idempotently. A definite refusal, a failed TLS handshake and a message
        over the size limit are raised at once: a retry would get the same."""
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            try:
                return method(request, timeout=self.deadline, metadata=self.metadata)
            except grpc.RpcError as error:
                refused = transport_refusal(error, tls=self.tls)
                if refused is not None:
                    raise refused from error
                if not answer_lost(error) or attempt == attempts - 1:
                    raise
                time.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")

    def call(self, method_name: str, request: object, *, retry: bool = True) -> object:
        """Send a prepared request to any call by name (e.g. "SettleVisit"), with this
        client's deadline, session and same-msgid retries; case replay uses it to
        send requests an HIS would not build, such as malformed ones."""
        return self._call(getattr(self.stub, method_name), request, retry=retry)

    def verify(
        self, person_no: str, disease_code: str, visit_date: str | date, insurance_type: int = 0
    ) -> pb.VerifyRegistrationResponse:
        request = pb.VerifyRegistrationRequest(
            visit=self.visit(person_no, disease_code, visit_date, insurance_type)
        )
        return self._call(self.stub.VerifyRegistration, request)

    def pre_settle(
        self, person_no: str, disease_code: str, visit_date: str | date, fees: Iterable[Fee]
    ) -> pb.Settlement:
        request = self.settlement_request(person_no, disease_code, visit_date, fees)
        return self._call(self.stub.PreSettleVisit, pb.PreSettleVisitRequest(request=request)).settlement

    def settle_request(self, request: pb.SettlementRequest) -> pb.SettleVisitResponse:
        """Settle a prepared request; raises SettlementUncertain when no answer
        came (the platform may have committed it), the grpc.RpcError of a
        definite refusal (nothing was settled), TlsHandshakeRefused or
        MessageTooLarge (nothing was sent, or nothing ran)."""
        try:
            return self._call(self.stub.SettleVisit, pb.SettleVisitRequest(request=request))
        except grpc.RpcError as error:
            if answer_lost(error) or (isinstance(error, MessageTooLarge) and error.ran):
                raise SettlementUncertain(request.msgid, error) from error
            raise

    def settle(
        self,
        person_no: str,
        disease_code: str,
        visit_date: str | date,
        fees: Iterable[Fee],
        msgid: str | None = None,
        *,
        use_personal_account: bool = False,
    ) -> pb.SettleVisitResponse:
        request = self.settlement_request(
            person_no, disease_code, visit_date, fees, msgid, use_personal_account=use_personal_account
        )
        return self.settle_request(request)

    def reverse(self, settlement_id: str, msgid: str | None = None) -> pb.ReverseSettlementResponse:
        request = pb.ReverseSettlementRequest(
            msgid=msgid or self.next_msgid(),
            institution_code=self.institution_code,
            settlement_id=settlement_id,
            operator=self.operator,
        )
        return self._call(self.stub.ReverseSettlement, request)

    def void(self, original_msgid: str, msgid: str | None = None) -> pb.VoidByMessageIdResponse:
        request = pb.VoidByMessageIdRequest(
            msgid=msgid or self.next_msgid(),
            institution_code=self.institution_code,
            original_msgid=original_msgid,
            original_infno="2207",
            operator=self.operator,
        )
        return self._call(self.stub.VoidByMessageId, request)

    def get(self, settlement_id: str = "", msgid: str = "") -> pb.Settlement:
        request = pb.GetSettlementRequest(
            institution_code=self.institution_code, settlement_id=settlement_id, msgid=msgid
        )
        return self._call(self.stub.GetSettlement, request).settlement

    def reconcile(
        self,
        start: str | date,
        end: str | date,
        hospital: pb.ReconcileFigures | None = None,
        include_entries: bool = False,
    ) -> pb.ReconcileResponse:
        request = pb.ReconcileRequest(
            institution_code=self.institution_code,
            start_date=str(start),
            end_date=str(end),
            hospital=hospital or pb.ReconcileFigures(),
            include_entries=include_entries,
        )
        return self._call(self.stub.Reconcile, request)
