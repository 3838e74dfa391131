"""The reference platform through a real gRPC server on a free port.

Every expected money figure is derived by hand from the rules of docs/domain.md and
the bundled world's data (server/worlds/default); the derivation is written
beside it."""

from __future__ import annotations

import grpc
import pytest
from conftest import (
    CANCER_HOSPITAL,
    DATONG_HOME,
    FUWAI,
    SANYA_NAMED,
    SANYA_OTHER,
    SANYA_UNCONNECTED,
    SANYA_UNDESIGNATED,
    refused,
)
from settlesim.clients.hospital import Fee
from settlesim.v1 import settlement_service_pb2 as pb

QINGHAI_BREAST_CANCER = "63000000000000000001"
QINGHAI_RULES = "63000000000000000009"
BEIJING_IN_SANYA = "11000000000000000001"
HOTAN_CAP = "65320000000000000001"
HOTAN_ROUNDING = "65320000000000000002"
DATONG = "14020000000000000001"
TUMOUR, HYPERTENSION = "M00503", "M03900"



def totals(answer) -> tuple[int, int, int]:
    t = answer.settlement.totals
    return t.total_fen, t.fund_pays_fen, t.patient_pays_fen


# --- the seed stories ---------------------------------------------------------------------


def test_qinghai_breast_cancer_reference_case(hospital):
    """Seed 002: fees 179.63, fund 129.63, patient 50.00 at the Cancer Hospital CAMS.
    World assumption (policies/630000.yaml): 50-yuan deductible unused, ratio 100%, class A.
    in scope = 50.00 + 129.63 = 179.63 (both class A, no ceiling)
    deductible applied = min(17963, 5000 - 0) = 5000
    fund = round((17963 - 5000) × 100%) = 12963, under the cap (5,000,000 left)
    patient = 17963 - 12963 = 5000"""
    his = hospital(CANCER_HOSPITAL)
    fees = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
    answer = his.settle(QINGHAI_BREAST_CANCER, TUMOUR, "2021-12-09", fees)
    assert totals(answer) == (17963, 12963, 5000)
    t = answer.settlement.totals
    assert (t.in_scope_fen, t.deductible_applied_fen, t.ratio_bp) == (17963, 5000, 10000)
    assert t.cap_remaining_fen == 5_000_000 - 12963
    assert answer.settlement.insured_region == "630000"
    assert answer.settlement.treatment_region == "110105"
    assert answer.settlement.status == pb.SETTLEMENT_STATUS_SETTLED
    assert any("630000" in entry.source and "2021-01-01" in entry.source for entry in answer.settlement.trace)


def test_same_patient_at_fuwai_is_refused_tumour_not_opened(hospital):
    his = hospital(FUWAI)
    rejection = refused(
        lambda: his.settle(QINGHAI_BREAST_CANCER, TUMOUR, "2021-12-09", [Fee("A-CHEMO-001", 100)])
    )
    assert (rejection.code, rejection.reason) == ("FAILED_PRECONDITION", "DISEASE_NOT_OPENED")
    verdict = his.verify(QINGHAI_BREAST_CANCER, TUMOUR, "2021-12-09")
    assert not verdict.eligible and verdict.reason == "DISEASE_NOT_OPENED"


def test_beijing_institution_level_registration(hospital):
    """Beijing's scheme names institutions: the named Sanya hospital settles, another refuses.
    Beijing 310/M00503: deductible 0, ratio 90%, no cap. Hainan catalog: A-TARGET-001 class A.
    fund = round((100000 - 0) × 90%) = 90000; patient = 100000 - 90000 = 10000"""
    other = hospital(SANYA_OTHER)
    rejection = refused(
        lambda: other.settle(BEIJING_IN_SANYA, TUMOUR, "2025-06-01", [Fee("A-TARGET-001", 100000)])
    )
    assert rejection.reason == "INSTITUTION_NOT_IN_REGISTRATION"
    assert rejection.metadata["registration_id"] == "BJ-R-0001"
    named = hospital(SANYA_NAMED)
    verdict = named.verify(BEIJING_IN_SANYA, TUMOUR, "2025-06-01")
    assert verdict.eligible
    assert verdict.registration.scope == pb.REGISTRATION_SCOPE_INSTITUTION
    assert list(verdict.registration.institution_codes) == [SANYA_NAMED]
    answer = named.settle(BEIJING_IN_SANYA, TUMOUR, "2025-06-01", [Fee("A-TARGET-001", 100000)])
    assert totals(answer) == (100000, 90000, 10000)
    assert not answer.settlement.totals.HasField("cap_remaining_fen")


def test_beijing_hypertension_is_general_outpatient(hospital):
    verdict = hospital(SANYA_NAMED).verify(BEIJING_IN_SANYA, HYPERTENSION, "2025-06-01")
    assert not verdict.eligible
    assert verdict.reason == "GENERAL_OUTPATIENT_DISEASE"
    assert verdict.coverage == pb.COVERAGE_GENERAL_OUTPATIENT


def test_hotan_ratio_and_annual_cap_across_visits(hospital):
    """Hotan 390/M00503 from 2025: ratio 75%, cap 10,000,000 fen (100,000 yuan), deductible 0.
    visit 1: 12 × 1,000,000 = 12,000,000; fund round(12,000,000 × 75%) = 9,000,000 <= cap left
             10,000,000 -> pays 9,000,000, cap left 1,000,000; patient 3,000,000
    visit 2: 2,000,000; round(× 75%) = 1,500,000 > cap left 1,000,000 -> pays 1,000,000, cap left 0;
             patient 2,000,000 - 1,000,000 = 1,000,000
    visit 3: 100,000; round(× 75%) = 75,000 but cap left 0 -> fund 0, patient 100,000"""
    his = hospital(CANCER_HOSPITAL)
    first = his.settle(HOTAN_CAP, TUMOUR, "2025-03-01", [Fee("A-TARGET-001", 1_000_000, 12)])
    assert totals(first) == (12_000_000, 9_000_000, 3_000_000)
    assert first.settlement.totals.ratio_bp == 7500
    assert first.settlement.totals.cap_remaining_fen == 1_000_000
    second = his.settle(HOTAN_CAP, TUMOUR, "2025-04-01", [Fee("A-TARGET-001", 2_000_000)])
    assert totals(second) == (2_000_000, 1_000_000, 1_000_000)
    assert second.settlement.totals.cap_remaining_fen == 0
    third = his.settle(HOTAN_CAP, TUMOUR, "2025-05-01", [Fee("A-TARGET-001", 100_000)])
    assert totals(third) == (100_000, 0, 100_000)


def test_datong_settles_in_beijing_and_at_home(hospital):
    """Datong 390/M03900: deductible 10,000, ratio 60%, cap 400,000. Two visits in 2025:
    Fuwai (Beijing catalog, A-CONSULT-001 class A): in scope 30,000; deductible min(30000, 10000) =
      10000; fund round(20000 × 60%) = 12000; patient 18000.
    home (Shanxi catalog): in scope 20,000; deductible min(20000, 10000 - 10000) = 0;
      fund round(20000 × 60%) = 12000; patient 8000."""
    beijing = hospital(FUWAI).settle(DATONG, HYPERTENSION, "2025-02-01", [Fee("A-CONSULT-001", 30000)])
    assert totals(beijing) == (30000, 12000, 18000)
    home = hospital(DATONG_HOME).settle(DATONG, HYPERTENSION, "2025-03-01", [Fee("A-CONSULT-001", 20000)])
    assert totals(home) == (20000, 12000, 8000)
    assert home.settlement.totals.deductible_applied_fen == 0


# --- refusals, one reason each ------------------------------------------------------------


@pytest.mark.parametrize(
    ("person", "institution", "day", "reason"),
    [
        ("63000000000000000002", CANCER_HOSPITAL, "2025-03-01", "REGISTRATION_EXPIRED"),
        ("63000000000000000003", CANCER_HOSPITAL, "2025-04-01", "REGISTRATION_REVOKED"),
        ("11000000000000000004", SANYA_OTHER, "2025-07-01", "REGISTRATION_SUPERSEDED"),
        ("63000000000000000004", CANCER_HOSPITAL, "2025-03-01", "QUALIFICATION_NOT_FOUND"),
        ("63000000000000000005", CANCER_HOSPITAL, "2025-03-01", "QUALIFICATION_NOT_VALID"),
        ("63000000000000000006", CANCER_HOSPITAL, "2025-03-01", "PERSON_NOT_INSURED"),
        ("63000000000000000007", CANCER_HOSPITAL, "2025-03-01", "REGISTRATION_NOT_FOUND"),
        ("63000000000000000008", CANCER_HOSPITAL, "2025-03-01", "REGISTRATION_NOT_YET_VALID"),
        (BEIJING_IN_SANYA, SANYA_UNDESIGNATED, "2025-06-01", "INSTITUTION_NOT_DESIGNATED"),
        (BEIJING_IN_SANYA, SANYA_UNCONNECTED, "2025-06-01", "INSTITUTION_NOT_CONNECTED"),
        (BEIJING_IN_SANYA, CANCER_HOSPITAL, "2025-06-01", "NOT_CROSS_PROVINCE"),
        (HOTAN_CAP, SANYA_NAMED, "2025-06-01", "DESTINATION_MISMATCH"),
        (HOTAN_CAP, CANCER_HOSPITAL, "2024-06-01", "DISEASE_NOT_COVERED"),
        ("11000000000000000002", SANYA_NAMED, "2025-03-01", "TOO_MANY_INSTITUTIONS"),
        ("11000000000000000003", SANYA_NAMED, "2025-03-01", "RESIDENCE_TOO_SHORT"),
        ("99000000000000000000", CANCER_HOSPITAL, "2025-03-01", "PERSON_NOT_FOUND"),
    ],
)
def test_refusal_reasons(hospital, person, institution, day, reason):
    his = hospital(institution)
    rejection = refused(lambda: his.settle(person, TUMOUR, day, [Fee("A-CONSULT-001", 1000)]))
    assert (rejection.code, rejection.reason, rejection.domain) == (
        "FAILED_PRECONDITION",
        reason,
        "settlesim.v1",
    )
    assert rejection.message and rejection.localized  # a developer message and a Chinese one for staff
    verdict = his.verify(person, TUMOUR, day)
    assert (verdict.eligible, verdict.reason) == (False, reason)
    assert his.reconcile("2020-01-01", "2030-12-31").platform.count == 0  # nothing was written


# --- catalog rules, deductible, rounding ---------------------------------------------------


def test_class_b_share_class_c_and_price_ceiling(hospital):
    """Qinghai 390/M00503 in 2025: deductible 5000, ratio 100%, cap 5,000,000. Beijing catalog.
    B-DRUG-001 1 × 10025, class B 10%: pre-self-pay round(10025 × 10%) = round(1002.5) = 1003 (half up;
                                       half-even would give 1002); in scope 10025 - 1003 = 9022
    C-DRUG-001 2 × 1000, class C: full self-pay 2000
    A-CEIL-001 2 × 3500, class A, ceiling 3000: over-ceiling (3500 - 3000) × 2 = 1000; in scope 6000
    B-CEIL-001 1 × 9000, class B 5%, ceiling 8000: over 1000; pre round(8000 × 5%) = 400; in scope 7600
    NOT-IN-CATALOG 1 × 500: not listed, full self-pay 500
    total 10025 + 2000 + 7000 + 9000 + 500 = 28525
    full self-pay 2000 + 500 = 2500; over-ceiling 1000 + 1000 = 2000; pre 1003 + 400 = 1403
    in scope 9022 + 6000 + 7600 = 22622
    deductible min(22622, 5000) = 5000; fund round((22622 - 5000) × 100%) = 17622
    patient 28525 - 17622 = 10903 (= 2500 + 2000 + 1403 + 5000)"""
    fees = [
        Fee("B-DRUG-001", 10025),
        Fee("C-DRUG-001", 1000, 2),
        Fee("A-CEIL-001", 3500, 2),
        Fee("B-CEIL-001", 9000),
        Fee("NOT-IN-CATALOG", 500),
    ]
    answer = hospital(CANCER_HOSPITAL).settle(QINGHAI_RULES, TUMOUR, "2025-03-01", fees)
    t = answer.settlement.totals
    assert (t.total_fen, t.full_self_pay_fen, t.over_ceiling_self_pay_fen, t.pre_self_pay_fen) == (
        28525, 2500, 2000, 1403,
    )  # fmt: skip
    assert (t.in_scope_fen, t.deductible_applied_fen, t.fund_pays_fen, t.patient_pays_fen) == (
        22622, 5000, 17622, 10903,
    )  # fmt: skip
    classes = [item.catalog_class for item in answer.settlement.items]
    assert classes == [
        pb.CATALOG_CLASS_B, pb.CATALOG_CLASS_C, pb.CATALOG_CLASS_A, pb.CATALOG_CLASS_B, pb.CATALOG_CLASS_NOT_LISTED,
    ]  # fmt: skip
    b_item = answer.settlement.items[3]
    assert (b_item.self_pay_share_bp, b_item.price_ceiling_fen, b_item.over_ceiling_self_pay_fen) == (
        500,
        8000,
        1000,
    )


def test_deductible_used_up_across_visits(hospital):
    """Qinghai 390/M00503 in 2024: deductible 5000, ratio 100%.
    visit 1: in scope 3000; deductible min(3000, 5000 - 0) = 3000; fund 0; patient 3000; 2000 left
    visit 2: in scope 4000; deductible min(4000, 5000 - 3000) = 2000; fund 2000; patient 2000; 0 left
    visit 3: in scope 1000; deductible min(1000, 5000 - 5000) = 0; fund 1000; patient 0"""
    his = hospital(CANCER_HOSPITAL)
    first = his.settle(QINGHAI_RULES, TUMOUR, "2024-05-01", [Fee("A-CONSULT-001", 3000)])
    assert totals(first) == (3000, 0, 3000)
    assert first.settlement.totals.deductible_remaining_fen == 2000
    second = his.settle(QINGHAI_RULES, TUMOUR, "2024-06-01", [Fee("A-CONSULT-001", 4000)])
    assert totals(second) == (4000, 2000, 2000)
    assert second.settlement.totals.deductible_applied_fen == 2000
    third = his.settle(QINGHAI_RULES, TUMOUR, "2024-07-01", [Fee("A-CONSULT-001", 1000)])
    assert totals(third) == (1000, 1000, 0)


def test_half_up_rounding_of_the_ratio(hospital):
    """Hotan 75%, deductible 0: 6 fen in scope -> round(6 × 75%) = round(4.5) = 5 (half up; banker's
    rounding would give 4); patient 6 - 5 = 1."""
    answer = hospital(CANCER_HOSPITAL).settle(HOTAN_ROUNDING, TUMOUR, "2025-03-01", [Fee("A-CONSULT-001", 6)])
    assert totals(answer) == (6, 5, 1)


def test_policy_in_force_on_the_visit_date(hospital):
    """Qinghai 390/M00503: 100% until 2025-12-31, 95% from 2026-01-01 (deductible 5000 both).
    2026 visit: in scope 15000; deductible 5000; fund round(10000 × 95%) = 9500; patient 5500."""
    answer = hospital(CANCER_HOSPITAL).settle(
        QINGHAI_RULES, TUMOUR, "2026-02-01", [Fee("A-CONSULT-001", 15000)]
    )
    assert totals(answer) == (15000, 9500, 5500)
    assert answer.settlement.totals.ratio_bp == 9500


# --- pre-settle, idempotency, reversal, void ------------------------------------------------


def test_pre_settle_changes_nothing(hospital):
    """Qinghai 2025, deductible 5000 unused: in scope 8000 -> deductible 5000, fund 3000, patient 5000.
    Pre-settling twice gives the same figures (no deductible consumed), and so does the settle."""
    his = hospital(CANCER_HOSPITAL)
    fees = [Fee("A-CONSULT-001", 8000)]
    first = his.pre_settle(QINGHAI_RULES, TUMOUR, "2025-08-01", fees)
    second = his.pre_settle(QINGHAI_RULES, TUMOUR, "2025-08-01", fees)
    assert first.settlement_id == ""
    assert (first.totals.deductible_applied_fen, first.totals.fund_pays_fen) == (5000, 3000)
    assert second.totals == first.totals
    assert his.reconcile("2025-01-01", "2025-12-31").platform.count == 0
    settled = his.settle(QINGHAI_RULES, TUMOUR, "2025-08-01", fees)
    assert settled.settlement.totals == first.totals


def test_retry_with_same_msgid_returns_same_settlement(hospital):
    his = hospital(CANCER_HOSPITAL)
    request = his.settlement_request(QINGHAI_RULES, TUMOUR, "2025-09-01", [Fee("A-CONSULT-001", 7000)])
    first = his.settle_request(request)
    again = his.settle_request(request)
    assert not first.replayed and again.replayed
    assert again.settlement.settlement_id == first.settlement.settlement_id
    assert again.settlement.totals == first.settlement.totals
    assert his.reconcile("2025-09-01", "2025-09-01").platform.count == 1
    changed = his.settlement_request(
        QINGHAI_RULES, TUMOUR, "2025-09-01", [Fee("A-CONSULT-001", 7001)], request.msgid
    )
    rejection = refused(lambda: his.settle_request(changed))
    assert (rejection.code, rejection.reason) == ("ALREADY_EXISTS", "MSGID_REUSED")


def test_reversal_restores_totals_and_a_new_settle_gives_the_same_figures(hospital):
    """Qinghai 2023 (100%, deductible 5000): in scope 9000 -> deductible 5000, fund 4000, patient 5000.
    After the reversal the deductible is unused again, so a new settle gives the same figures."""
    his = hospital(CANCER_HOSPITAL)
    fees = [Fee("A-CONSULT-001", 9000)]
    first = his.settle(QINGHAI_RULES, TUMOUR, "2023-03-01", fees)
    assert totals(first) == (9000, 4000, 5000)
    reversed_ = his.reverse(first.settlement.settlement_id)
    assert reversed_.settlement.status == pb.SETTLEMENT_STATUS_REVERSED
    again = refused(lambda: his.reverse(first.settlement.settlement_id))
    assert again.reason == "ALREADY_REVERSED"
    second = his.settle(QINGHAI_RULES, TUMOUR, "2023-03-01", fees)
    assert second.settlement.settlement_id != first.settlement.settlement_id
    assert second.settlement.totals == first.settlement.totals
    assert his.get(first.settlement.settlement_id).status == pb.SETTLEMENT_STATUS_REVERSED


def test_void_by_msgid_and_void_before_settle_blocks_the_msgid(hospital):
    his = hospital(CANCER_HOSPITAL)
    answer = his.settle(QINGHAI_RULES, TUMOUR, "2022-03-01", [Fee("A-CONSULT-001", 9000)])
    voided = his.void(answer.settlement.msgid)
    assert voided.voided_settlement and voided.settlement.status == pb.SETTLEMENT_STATUS_VOIDED
    assert his.reconcile("2022-01-01", "2022-12-31").platform.count == 0
    # A void that arrives before its settle: the late settle must not go through.
    request = his.settlement_request(QINGHAI_RULES, TUMOUR, "2022-04-01", [Fee("A-CONSULT-001", 100)])
    early = his.void(request.msgid)
    assert not early.voided_settlement
    rejection = refused(lambda: his.settle_request(request))
    assert rejection.reason == "MSGID_VOIDED"


def test_another_institution_cannot_touch_a_settlement(hospital):
    owner = hospital(CANCER_HOSPITAL)
    answer = owner.settle(QINGHAI_RULES, TUMOUR, "2021-03-01", [Fee("A-CONSULT-001", 9000)])
    other = hospital(FUWAI)
    assert refused(lambda: other.reverse(answer.settlement.settlement_id)).reason == "INSTITUTION_NOT_CALLER"
    assert refused(lambda: other.get(answer.settlement.settlement_id)).code == "PERMISSION_DENIED"


def test_reconcile_match_and_mismatch(hospital):
    """Two Qinghai 2021 visits: 9000 (deductible 5000, fund 4000) then 1000 (fund 1000).
    Sums: count 2, total 10000, fund 5000, patient 5000."""
    his = hospital(CANCER_HOSPITAL)
    his.settle(QINGHAI_RULES, TUMOUR, "2021-05-01", [Fee("A-CONSULT-001", 9000)])
    his.settle(QINGHAI_RULES, TUMOUR, "2021-05-02", [Fee("A-CONSULT-001", 1000)])
    ours = pb.ReconcileFigures(count=2, total_fen=10000, fund_pays_fen=5000, patient_pays_fen=5000)
    answer = his.reconcile("2021-05-01", "2021-05-31", ours, include_entries=True)
    assert answer.matched and len(answer.entries) == 2
    wrong = pb.ReconcileFigures(count=2, total_fen=10000, fund_pays_fen=5001, patient_pays_fen=4999)
    answer = his.reconcile("2021-05-01", "2021-05-31", wrong)
    assert not answer.matched
    assert list(answer.mismatched_fields) == ["fund_pays_fen", "patient_pays_fen"]


def test_reconcile_lists_entries_only_up_to_its_limit(server, hospital):
    """The sums cover any period; the entries of more settlements than one answer
    lists are refused with TOO_MANY_ENTRIES (the limit lowered to 1 here; it is
    10,000 in service, so an answer stays far below gRPC's send limit)."""
    server.ledger.MAX_RECONCILE_ENTRIES = 1
    his = hospital(CANCER_HOSPITAL)
    his.settle(QINGHAI_RULES, TUMOUR, "2021-06-01", [Fee("A-CONSULT-001", 1000)])
    assert len(his.reconcile("2021-06-01", "2021-06-30", include_entries=True).entries) == 1
    his.settle(QINGHAI_RULES, TUMOUR, "2021-06-02", [Fee("A-CONSULT-001", 1000)])
    assert his.reconcile("2021-06-01", "2021-06-30").platform.count == 2
    rejection = refused(lambda: his.reconcile("2021-06-01", "2021-06-30", include_entries=True))
    assert (rejection.code, rejection.reason) == ("FAILED_PRECONDITION", "TOO_MANY_ENTRIES")
    assert len(his.reconcile("2021-06-02", "2021-06-02", include_entries=True).entries) == 1


# --- malformed requests ----------------------------------------------------------------------


def _raw(his, mutate):
    request = his.settlement_request(QINGHAI_RULES, TUMOUR, "2025-03-01", [Fee("A-CONSULT-001", 100, 2)])
    mutate(request)
    return refused(lambda: his.stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=5))


@pytest.mark.parametrize(
    ("mutate", "reason", "field"),
    [
        (lambda r: setattr(r.items[0], "quantity", 0), "QUANTITY_NOT_POSITIVE", "request.items[0].quantity"),
        (lambda r: setattr(r.items[0], "quantity", -3), "QUANTITY_NOT_POSITIVE", "request.items[0].quantity"),
        (lambda r: setattr(r.items[0], "amount_fen", 201), "AMOUNT_MISMATCH", "request.items[0].amount_fen"),
        (lambda r: setattr(r.items[0], "unit_price_fen", -1), "PRICE_NEGATIVE", "request.items[0].unit_price_fen"),
        (lambda r: r.ClearField("items"), "ITEMS_EMPTY", "request.items"),
        (lambda r: setattr(r, "msgid", ""), "FIELD_MISSING", "request.msgid"),
        (lambda r: setattr(r.visit, "institution_code", "H99999999999"), "UNKNOWN_INSTITUTION",
         "request.visit.institution_code"),
        (lambda r: setattr(r.visit, "disease_code", "X00000"), "UNKNOWN_DISEASE", "request.visit.disease_code"),
        (lambda r: setattr(r.visit, "visit_date", "2025-02-30"), "FIELD_INVALID", "request.visit.visit_date"),
        (lambda r: r.visit.ClearField("person"), "FIELD_MISSING", "request.visit.person"),
        (lambda r: r.items.extend([r.items[0]] * 600), "TOO_MANY_ITEMS", "request.items"),
        (lambda r: r.items.append(r.items[0]), "DUPLICATE_SEQUENCE_NO", "request.items[1].sequence_no"),
        (lambda r: setattr(r.items[0], "quantity", 10**15), "AMOUNT_OUT_OF_RANGE", "request.items[0].quantity"),
    ],
)  # fmt: skip
def test_malformed_requests_are_invalid_argument_with_field_violations(hospital, mutate, reason, field):
    rejection = _raw(hospital(CANCER_HOSPITAL), mutate)
    assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", reason)
    assert (field, reason) in [(f, r) for f, r, _ in rejection.violations]


def test_a_used_msgid_answers_as_what_it_was_even_when_the_new_request_is_refused(hospital):
    """A msgid names one message: once used, a request carrying it is judged by
    the ledger first. A different request that would also fail the registration
    check (an unknown person) is still MSGID_REUSED, and a voided msgid is
    MSGID_VOIDED whatever the request says, so an HIS learns what happened to
    its message rather than a reason about a request the platform never ran."""
    his = hospital(CANCER_HOSPITAL)
    first = his.settle(QINGHAI_RULES, TUMOUR, "2025-10-01", [Fee("A-CONSULT-001", 7000)])
    stranger = his.settlement_request(
        "63000000000099999999", TUMOUR, "2025-10-01", [Fee("A-CONSULT-001", 7000)], first.settlement.msgid
    )
    assert refused(lambda: his.settle_request(stranger)).reason == "MSGID_REUSED"
    blocked = his.next_msgid()
    assert not his.void(blocked).voided_settlement
    late = his.settlement_request(
        "63000000000099999999", TUMOUR, "2025-10-01", [Fee("A-CONSULT-001", 7000)], blocked
    )
    assert refused(lambda: his.settle_request(late)).reason == "MSGID_VOIDED"
    # A new msgid with the same refused request gets the registration check's reason.
    fresh = his.settlement_request("63000000000099999999", TUMOUR, "2025-10-01", [Fee("A-CONSULT-001", 7000)])
    assert refused(lambda: his.settle_request(fresh)).reason == "PERSON_NOT_FOUND"


def test_a_retry_after_the_world_changed_replays_the_settlement(tmp_path, server_process):
    """The Cancer Hospital settles, then the operator closes M00503 there and
    restarts on the same ledger. The HIS, which never saw the answer, retries
    the same msgid: the platform answers the settlement it committed (replayed)
    instead of refusing the retry as DISEASE_NOT_OPENED, which would leave the
    hospital believing nothing was settled. A new msgid is refused."""
    import shutil
    from pathlib import Path

    from settlesim.clients.hospital import Hospital

    world = tmp_path / "world"
    shutil.copytree(Path(__file__).resolve().parents[1] / "server" / "worlds" / "default", world)
    db = tmp_path / "ledger.db"
    first_server = server_process(db, "--world", str(world))
    his = Hospital.connect(first_server.target, CANCER_HOSPITAL)
    request = his.settlement_request(QINGHAI_RULES, TUMOUR, "2025-11-01", [Fee("A-CONSULT-001", 7000)])
    first = his.settle_request(request)
    his.close()
    assert first_server.stop() == 0
    institutions = world / "institutions.yaml"
    text = institutions.read_text(encoding="utf-8")
    closed = text.replace("opened_diseases: [M03900, M01600, M00503, M00504]", "opened_diseases: [M03900]", 1)
    assert closed != text
    institutions.write_text(closed, encoding="utf-8")
    second_server = server_process(db, "--world", str(world))
    his = Hospital.connect(second_server.target, CANCER_HOSPITAL)
    try:
        again = his.settle_request(request)
        assert again.replayed
        assert again.settlement.settlement_id == first.settlement.settlement_id
        assert again.settlement.totals == first.settlement.totals
        fresh = his.settlement_request(QINGHAI_RULES, TUMOUR, "2025-11-01", [Fee("A-CONSULT-001", 7000)])
        assert refused(lambda: his.settle_request(fresh)).reason == "DISEASE_NOT_OPENED"
    finally:
        his.close()


def test_person_mismatch_lists_the_field(hospital):
    """A malformed-input refusal always carries a BadRequest, even one found by
    the registration check (psn_no and certificate name different people)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    his = hospital(CANCER_HOSPITAL)
    request = his.settlement_request(QINGHAI_RULES, TUMOUR, "2025-10-01", [Fee("A-CONSULT-001", 7000)])
    request.visit.person.certificate_type = "01"
    request.visit.person.certificate_no = "630102197001010021"  # the breast-cancer patient's
    with pytest.raises(grpc.RpcError) as caught:
        his.stub.SettleVisit(pb.SettleVisitRequest(request=request), timeout=10)
    status = rpc_status.from_call(caught.value)
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [(v.field, v.reason) for v in bad.field_violations]
    assert fields == [("request.visit.person", "PERSON_MISMATCH")]
