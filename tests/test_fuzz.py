"""Bad input, fuzzed: hypothesis builds arbitrary and malformed requests for
every RPC and sends them to a real server on a real port.

The contract (docs/errors.md, "Fuzzing contract"): every answer is OK or a
refusal with an ErrorInfo reason from reasons.proto and that reason's
documented status code — never INTERNAL or UNKNOWN; an OK answer is about the
visit that was asked about; the server stays SERVING and the ledger check
passes afterwards. The one answer without a reason is gRPC's own
RESOURCE_EXHAUSTED for a request over the 1 MiB message limit, which the
transport refuses before any of our code reads it.

Examples per RPC: SETTLESIM_FUZZ_EXAMPLES (default 300, what CI runs; 3000 takes a minute or two).
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import CANCER_HOSPITAL
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settlesim.clients.rejections import rejection_of
from settlesim.server.app import MAX_MESSAGE_BYTES, RunningServer, ServerConfig, start
from settlesim.server.rules.reasons import Reason
from settlesim.server.status import code_for
from settlesim.server.validation import MAX_ITEMS
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc

EXAMPLES = int(os.environ.get("SETTLESIM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
REASONS = {r.value for r in Reason}
# The documented code format (docs/errors.md "Limits"), for checking what an OK answer echoes.
DOCUMENTED_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
DOCUMENTED_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)


# --- the server under fuzz ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    db = Path(tmp_path_factory.mktemp("fuzz")) / "ledger.db"
    running = start(ServerConfig(port=0, db_path=db, max_workers=8))
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def stub(fuzz_server: RunningServer) -> Iterator[pb_grpc.SettlementServiceStub]:
    # Room to send past the server's limit, so the transport's own refusal is exercised too.
    channel = grpc.insecure_channel(
        fuzz_server.target, options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)]
    )
    yield pb_grpc.SettlementServiceStub(channel)
    channel.close()


def assert_still_sound(server: RunningServer, rpc: str) -> None:
    tally = OUTCOMES[rpc]
    print(f"\n{rpc}: {sum(tally.values())} requests; {dict(tally.most_common())}")
    assert tally["OK"] > 0  # the strategies reach past validation
    with grpc.insecure_channel(server.target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert server.ledger.check() == []


OUTCOMES: defaultdict[str, Counter[str]] = defaultdict(Counter)  # per RPC: OK or the reason


def answer_of(call: Callable[..., Any], request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """The OK answer, or None after checking the refusal keeps the contract."""
    tally = OUTCOMES[type(request).__name__.removesuffix("Request")]
    try:
        answer = call(request, timeout=30, metadata=metadata)
        tally["OK"] += 1
        return answer
    except grpc.RpcError as error:
        rejection = rejection_of(error)
        tally[rejection.reason or rejection.code] += 1
        assert rejection.code not in {"INTERNAL", "UNKNOWN"}, rejection
        if rejection.code == "RESOURCE_EXHAUSTED" and not rejection.reason:
            # gRPC's transport refusal: only ever for a request over the limit.
            assert request.ByteSize() > MAX_MESSAGE_BYTES, rejection
            return None
        assert rejection.reason in REASONS, rejection
        assert grpc.StatusCode[rejection.code].value[0] == code_for(Reason(rejection.reason)), rejection
        return None


# --- strategies --------------------------------------------------------------------------------

CODE_ALPHABET = string.ascii_letters + string.digits + "._:/-"
PEOPLE = ("63000000000000000001", "63000000000000000009", "65320000000000000001", "65320000000000000002")
INSTITUTIONS = (CANCER_HOSPITAL, "H11010200002", "H46020000001", "H46020000004", "H14020000001")
DISEASES = ("M00503", "M00504", "M03900", "M01600", "M07801")
CATALOG = ("A-CONSULT-001", "A-CHEMO-001", "A-TARGET-001", "A-CEIL-001", "B-DRUG-001", "C-DRUG-001")

# Any text, including unicode, control characters and very long strings.
any_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=CODE_ALPHABET, min_size=1, max_size=80),
    st.text(min_size=200, max_size=5_000),
    st.sampled_from(["", " ", "\n", "H11010500001\n", " H11010500001", "\x00", "-", "../../etc/passwd"]),
)


def code(*known: str) -> st.SearchStrategy[str]:
    """Mostly codes the world knows (so requests get deep), often anything."""
    return st.one_of(st.sampled_from(known), any_text) if known else any_text


day = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.dates(min_value=date(2021, 1, 1), max_value=date(2027, 12, 31)).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "0000-01-01",
            "9999-12-31",
            "1989-12-31",
            "2101-01-01",
            "2024-1-1",
            "20240101",
            "20240101  ",
            "2024-W01-1",
            "2024-01-01T00:00",
            "2024/01/01",
            "２０２４-０１-０１",
            "2024-01-01\n",
            "",
        ]
    ),
    any_text,
)
int64 = st.one_of(
    st.integers(*INT64),
    st.integers(-5, 1_000_000),
    st.sampled_from([0, 1, -1, INT64[0], INT64[1], 100_000_000, 100_000_001, 100_000, 100_001]),
)
int32 = st.one_of(st.integers(*INT32), st.sampled_from([0, 14, 310, 390, 1, -1, INT32[0], INT32[1]]))


@st.composite
def fee_item(draw: st.DrawFn, sequence_no: str | None = None) -> pb.FeeItem:
    price, quantity = draw(int64), draw(int64)
    consistent = -(2**63) <= price * quantity < 2**63 and draw(st.booleans())
    return pb.FeeItem(
        sequence_no=sequence_no if sequence_no is not None else draw(code("0001", "0002", "1")),
        catalog_code=draw(code(*CATALOG)),
        hospital_item_code=draw(st.one_of(st.just(""), any_text)),
        unit_price_fen=price,
        quantity=quantity,
        amount_fen=price * quantity if consistent else draw(int64),
        item_name=draw(st.one_of(st.just(""), any_text)),
    )


@st.composite
def valid_fee(draw: st.DrawFn, sequence_no: str) -> pb.FeeItem:
    price, quantity = draw(st.integers(0, 100_000_000)), draw(st.integers(1, 100))
    return pb.FeeItem(
        sequence_no=sequence_no,
        catalog_code=draw(st.sampled_from(CATALOG)),
        unit_price_fen=price,
        quantity=quantity,
        amount_fen=price * quantity,
    )


@st.composite
def many_items(draw: st.DrawFn) -> list[pb.FeeItem]:
    """Empty to ~1200 items: copies of one item, numbered or all the same number."""
    count = draw(
        st.one_of(st.integers(0, 3), st.sampled_from([MAX_ITEMS, MAX_ITEMS + 1]), st.integers(0, 1200))
    )
    template = draw(st.one_of(valid_fee("0"), fee_item()))
    numbered = draw(st.booleans())
    items = []
    for i in range(count):
        item = pb.FeeItem()
        item.CopyFrom(template)
        if numbered:
            item.sequence_no = f"{i:04d}"
        items.append(item)
    return items


items = st.one_of(
    st.lists(fee_item(), max_size=8),
    many_items(),
    st.integers(1, 5).flatmap(lambda n: st.tuples(*(valid_fee(f"{i:04d}") for i in range(n))).map(list)),
)


@st.composite
def person(draw: st.DrawFn) -> pb.PersonRef:
    return pb.PersonRef(
        person_no=draw(st.one_of(st.sampled_from(PEOPLE), st.just(""), any_text)),
        certificate_type=draw(st.one_of(st.just(""), st.just("01"), any_text)),
        certificate_no=draw(st.one_of(st.just(""), st.just("630102197001010029"), any_text)),
    )


@st.composite
def visit(draw: st.DrawFn) -> pb.Visit:
    return pb.Visit(
        institution_code=draw(code(CANCER_HOSPITAL, *INSTITUTIONS)),
        person=draw(person()),
        disease_code=draw(code(*DISEASES)),
        visit_date=draw(day),
        insurance_type=draw(int32),
        medical_type=draw(int32),
    )


msgid = st.one_of(
    st.integers(0, 10**6).map(lambda n: f"FUZZ{n:07d}"),  # fresh, to settle and undo
    st.sampled_from(["FUZZ0000001", "FUZZ0000002"]),  # shared: retries and reuse
    any_text,
)


@st.composite
def settlement_request(draw: st.DrawFn) -> pb.SettlementRequest:
    return pb.SettlementRequest(
        msgid=draw(msgid),
        visit=draw(visit()),
        items=draw(items),
        operator=draw(st.one_of(st.just(""), any_text)),
    )


# "Almost valid": a request that settles, with at most one field broken.
VALID_VISITS = (
    ("63000000000000000009", "M00503", "2024-05-01"),
    ("65320000000000000002", "M00503", "2025-05-01"),
    ("63000000000000000001", "M00503", "2021-12-09"),
)
BREAKERS: dict[str, st.SearchStrategy[Any]] = {
    "msgid": any_text,
    "operator": any_text,
    "visit.institution_code": any_text,
    "visit.person.person_no": any_text,
    "visit.person.certificate_type": any_text,
    "visit.person.certificate_no": any_text,
    "visit.disease_code": any_text,
    "visit.visit_date": day,
    "visit.insurance_type": int32,
    "visit.medical_type": int32,
    "items.sequence_no": any_text,
    "items.catalog_code": any_text,
    "items.hospital_item_code": any_text,
    "items.unit_price_fen": int64,
    "items.quantity": int64,
    "items.amount_fen": int64,
    "items.item_name": any_text,
    "items": many_items(),
}


@st.composite
def almost_valid_request(draw: st.DrawFn) -> pb.SettlementRequest:
    person_no, disease, day_ = draw(st.sampled_from(VALID_VISITS))
    fees = draw(st.integers(1, 4).flatmap(lambda n: st.tuples(*(valid_fee(f"{i:04d}") for i in range(n)))))
    request = pb.SettlementRequest(
        msgid=f"ALMOST{draw(st.integers(0, 10**9)):010d}",
        visit=pb.Visit(
            institution_code=CANCER_HOSPITAL,
            person=pb.PersonRef(person_no=person_no),
            disease_code=disease,
            visit_date=day_,
            medical_type=pb.MEDICAL_TYPE_CHRONIC_SPECIAL_OUTPATIENT,
        ),
        items=fees,
        operator="fuzz",
    )
    path = draw(st.one_of(st.just(""), st.sampled_from(sorted(BREAKERS))))  # "": a valid request
    value = draw(BREAKERS[path]) if path else None
    if not path:
        pass
    elif path == "items":
        del request.items[:]
        request.items.extend(value)
    elif path.startswith("items."):
        setattr(request.items[draw(st.integers(0, len(request.items) - 1))], path.split(".")[1], value)
    else:
        *parents, name = path.split(".")
        target: Any = request
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return request


any_settlement_request = st.one_of(settlement_request(), almost_valid_request())
session = st.one_of(
    st.just(()),
    st.just((("x-settlesim-session", "fuzz-1"),)),  # a sandbox: state apart from the default ledger
    st.text(alphabet=string.printable.strip() + " ", max_size=80).map(
        lambda s: (("x-settlesim-session", s),)
    ),
)


# --- the checks on OK answers ----------------------------------------------------------------


def assert_settlement_answers(request: pb.SettlementRequest, settlement: pb.Settlement) -> None:
    """An OK settlement answer is about the visit asked, in documented formats,
    and its money adds up."""
    assert settlement.visit_date == request.visit.visit_date
    assert DOCUMENTED_DATE.fullmatch(settlement.visit_date)
    assert settlement.institution_code == request.visit.institution_code
    assert settlement.disease_code == request.visit.disease_code
    if settlement.settlement_id:
        assert settlement.msgid == request.msgid and DOCUMENTED_CODE.fullmatch(settlement.msgid)
    for value in (
        request.visit.institution_code,
        request.visit.disease_code,
        *(i.catalog_code for i in request.items),
    ):
        assert DOCUMENTED_CODE.fullmatch(value), value
    t = settlement.totals
    assert t.total_fen == sum(i.amount_fen for i in request.items)
    assert t.fund_pays_fen + t.patient_pays_fen == t.total_fen
    assert t.fund_pays_fen >= 0 and t.patient_pays_fen >= 0
    assert not t.HasField("cap_remaining_fen") or t.cap_remaining_fen >= 0
    assert 0 < len(request.items) <= MAX_ITEMS


# --- one test per RPC ----------------------------------------------------------------------------


def test_fuzz_verify_registration(fuzz_server, stub):
    @FUZZ
    @given(visit=st.one_of(visit(), almost_valid_request().map(lambda r: r.visit)), metadata=session)
    def run(visit: pb.Visit, metadata: tuple[tuple[str, str], ...]) -> None:
        answer = answer_of(stub.VerifyRegistration, pb.VerifyRegistrationRequest(visit=visit), metadata)
        if answer is not None:
            assert answer.eligible == (answer.reason == "")
            assert answer.eligible or answer.reason in REASONS
            assert DOCUMENTED_DATE.fullmatch(visit.visit_date)

    run()
    assert_still_sound(fuzz_server, "VerifyRegistration")


def test_fuzz_pre_settle(fuzz_server, stub):
    @FUZZ
    @given(request=any_settlement_request, metadata=session)
    def run(request: pb.SettlementRequest, metadata: tuple[tuple[str, str], ...]) -> None:
        answer = answer_of(stub.PreSettleVisit, pb.PreSettleVisitRequest(request=request), metadata)
        if answer is not None:
            assert_settlement_answers(request, answer.settlement)

    run()
    assert_still_sound(fuzz_server, "PreSettleVisit")


SETTLED: list[pb.Settlement] = []  # what the settle fuzz committed, for the undo fuzz


def test_fuzz_settle(fuzz_server, stub):
    @FUZZ
    @given(request=any_settlement_request, metadata=session)
    def run(request: pb.SettlementRequest, metadata: tuple[tuple[str, str], ...]) -> None:
        answer = answer_of(stub.SettleVisit, pb.SettleVisitRequest(request=request), metadata)
        if answer is not None:
            assert_settlement_answers(request, answer.settlement)
            if not metadata:
                SETTLED.append(answer.settlement)

    run()
    assert_still_sound(fuzz_server, "SettleVisit")


@pytest.fixture(scope="module")
def settled(stub: pb_grpc.SettlementServiceStub) -> list[pb.Settlement]:
    """Real settlements for the undo and read fuzz to aim at (the settle fuzz adds more).
    Each is one 1000-fen class A consultation for a visit of VALID_VISITS."""
    for n in range(30):
        person_no, disease, day_ = VALID_VISITS[n % len(VALID_VISITS)]
        request = pb.SettlementRequest(
            msgid=f"SEED{n:04d}",
            visit=pb.Visit(
                institution_code=CANCER_HOSPITAL,
                person=pb.PersonRef(person_no=person_no),
                disease_code=disease,
                visit_date=day_,
            ),
            items=[
                pb.FeeItem(
                    sequence_no="1",
                    catalog_code="A-CONSULT-001",
                    unit_price_fen=1000,
                    quantity=1,
                    amount_fen=1000,
                )
            ],
        )
        SETTLED.append(stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=10).settlement)
    return SETTLED


@st.composite
def undo_call(draw: st.DrawFn) -> tuple[str, str, str, str, tuple[tuple[str, str], ...]]:
    """(settlement_id, original msgid, own msgid, institution, metadata): half the
    time a plausible call about a real settlement, half the time anything."""
    if draw(st.booleans()):
        s = SETTLED[draw(st.integers(0, len(SETTLED) - 1))]
        return s.settlement_id, s.msgid, f"UNDO{draw(st.integers(0, 10**9)):010d}", CANCER_HOSPITAL, ()
    return (
        draw(code("S0000000000000000000")),
        draw(msgid),
        draw(msgid),
        draw(st.one_of(st.just(CANCER_HOSPITAL), code(*INSTITUTIONS))),
        draw(session),
    )


def test_fuzz_reverse(fuzz_server, stub, settled):
    @FUZZ
    @given(call=undo_call(), operator=any_text)
    def run(call: tuple[str, str, str, str, Any], operator: str) -> None:
        settlement_id, _, own_msgid, institution, metadata = call
        request = pb.ReverseSettlementRequest(
            msgid=own_msgid, institution_code=institution, settlement_id=settlement_id, operator=operator
        )
        answer = answer_of(stub.ReverseSettlement, request, metadata)
        if answer is not None:
            assert answer.settlement.settlement_id == settlement_id
            assert answer.settlement.status == pb.SETTLEMENT_STATUS_REVERSED

    run()
    assert_still_sound(fuzz_server, "ReverseSettlement")


def test_fuzz_void(fuzz_server, stub, settled):
    @FUZZ
    @given(call=undo_call(), infno=any_text)
    def run(call: tuple[str, str, str, str, Any], infno: str) -> None:
        _, original, own_msgid, institution, metadata = call
        request = pb.VoidByMessageIdRequest(
            msgid=own_msgid, institution_code=institution, original_msgid=original, original_infno=infno
        )
        answer = answer_of(stub.VoidByMessageId, request, metadata)
        if answer is not None and answer.voided_settlement:
            assert answer.settlement.msgid == original
            assert answer.settlement.status == pb.SETTLEMENT_STATUS_VOIDED

    run()
    assert_still_sound(fuzz_server, "VoidByMessageId")


def test_fuzz_get_settlement(fuzz_server, stub, settled):
    @FUZZ
    @given(call=undo_call(), which=st.sampled_from(["id", "msgid", "both", "neither"]))
    def run(call: tuple[str, str, str, str, Any], which: str) -> None:
        settlement_id, original, _, institution, metadata = call
        request = pb.GetSettlementRequest(
            institution_code=institution,
            settlement_id=settlement_id if which in {"id", "both"} else "",
            msgid=original if which in {"msgid", "both"} else "",
        )
        answer = answer_of(stub.GetSettlement, request, metadata)
        if answer is not None:
            assert answer.settlement.institution_code == institution
            if request.settlement_id:
                assert answer.settlement.settlement_id == request.settlement_id
            else:
                assert answer.settlement.msgid == request.msgid

    run()
    assert_still_sound(fuzz_server, "GetSettlement")


def test_fuzz_reconcile(fuzz_server, stub):
    figures = st.builds(
        pb.ReconcileFigures, count=int64, total_fen=int64, fund_pays_fen=int64, patient_pays_fen=int64
    )

    @FUZZ
    @given(
        institution=st.one_of(st.just(CANCER_HOSPITAL), code(*INSTITUTIONS)),
        start=day,
        end=day,
        hospital=figures,
        entries=st.booleans(),
        metadata=session,
        plausible=st.booleans(),
    )
    def run(
        institution: str, start: str, end: str, hospital: Any, entries: bool, metadata: Any, plausible: bool
    ) -> None:
        if plausible:  # the calling institution's own settlements over a real period
            institution, metadata = CANCER_HOSPITAL, ()
            start, end = sorted(d if DOCUMENTED_DATE.fullmatch(d) else "2024-01-01" for d in (start, end))
        request = pb.ReconcileRequest(
            institution_code=institution,
            start_date=start,
            end_date=end,
            hospital=hospital,
            include_entries=entries,
        )
        answer = answer_of(stub.Reconcile, request, metadata)
        if answer is not None:
            assert DOCUMENTED_DATE.fullmatch(start) and DOCUMENTED_DATE.fullmatch(end)
            p = answer.platform
            assert p.fund_pays_fen + p.patient_pays_fen == p.total_fen
            assert answer.matched == (not answer.mismatched_fields)
            assert not entries or len(answer.entries) == p.count

    run()
    assert_still_sound(fuzz_server, "Reconcile")


# --- the transport's limit, pinned ---------------------------------------------------------------


def test_a_request_over_the_size_limit_is_refused_by_the_transport(fuzz_server, stub):
    """1 MiB is gRPC's max_receive_message_length on the server: the request is
    refused before it is parsed, as RESOURCE_EXHAUSTED without ErrorInfo."""
    request = pb.SettlementRequest(msgid="BIG1", operator="x" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(grpc.RpcError) as caught:
        stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=30)
    rejection = rejection_of(caught.value)
    assert (rejection.code, rejection.reason) == ("RESOURCE_EXHAUSTED", "")
    with grpc.insecure_channel(fuzz_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# --- bytes that are not a message ----------------------------------------------------------------

METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["SettlementService"].methods]


@st.composite
def wire_bytes(draw: st.DrawFn) -> bytes:
    """Garbage, a valid settle request cut short or with bytes changed, and a
    string field holding invalid UTF-8 (field 1, the msgid of most requests)."""
    valid = pb.SettleVisitRequest(
        request=pb.SettlementRequest(
            msgid="H11010500001202412010000000001",
            visit=pb.Visit(institution_code=CANCER_HOSPITAL, disease_code="M00503", visit_date="2024-12-01"),
            items=[pb.FeeItem(sequence_no="1", catalog_code="A-CONSULT-001", unit_price_fen=5000, quantity=1)],
        )
    ).SerializeToString()
    kind = draw(st.sampled_from(["garbage", "truncated", "mutated", "bad-utf8"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=2_000))
    if kind == "truncated":
        return valid[: draw(st.integers(1, len(valid) - 1))]
    if kind == "mutated":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    bad = draw(st.binary(min_size=1, max_size=40).filter(_not_utf8))
    return b"\x0a" + bytes([len(bad)]) + bad


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("method", METHODS)
def test_fuzz_undecodable_bytes(fuzz_server, method):
    """Bytes that do not parse never reach the rules as INTERNAL: they are
    INVALID_ARGUMENT / MALFORMED_MESSAGE (or, when they happen to parse, any
    documented answer)."""
    channel = grpc.insecure_channel(fuzz_server.target)
    call = channel.unary_unary(f"/settlesim.v1.SettlementService/{method}")
    tally = OUTCOMES[f"bytes:{method}"]

    @FUZZ
    @given(data=wire_bytes())
    def check(data: bytes) -> None:
        parses = True
        try:
            getattr(pb, f"{method}Request").FromString(data)
        except Exception:
            parses = False
        try:
            call(data, timeout=30)
            tally["OK"] += 1
            assert parses
        except grpc.RpcError as error:
            rejection = rejection_of(error)
            tally[rejection.reason or rejection.code] += 1
            assert rejection.reason in REASONS, rejection
            assert grpc.StatusCode[rejection.code].value[0] == code_for(Reason(rejection.reason)), rejection
            if not parses:
                assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", "MALFORMED_MESSAGE")

    try:
        check()
    finally:
        channel.close()
    print(f"\nbytes to {method}: {dict(tally.most_common())}")
    assert tally["MALFORMED_MESSAGE"] > 0
    with grpc.insecure_channel(fuzz_server.target) as health_channel:
        answer = health_pb2_grpc.HealthStub(health_channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert fuzz_server.ledger.check() == []
