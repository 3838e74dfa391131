"""Unit tests of the registration check (docs/domain.md "Registration check") over
the bundled world: one test per refusal reason, each with the person of
server/worlds/default/people/cast.yaml that exists to exercise it, and the
positive cases."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import date

import pytest
from settlesim.server.model import Coverage, InsuranceType, VisitKey, World
from settlesim.server.rules.eligibility import Eligibility, check_registration
from settlesim.server.rules.reasons import Reason
from settlesim.server.world_loader import load_world

CANCER_HOSPITAL = "H11010500001"  # Beijing 110105; opened M03900, M01600, M00503, M00504
FUWAI = "H11010200002"  # Beijing 110102; opened M03900, M01600, M07801, M07803, M07804, M08300
SANYA_NAMED = "H46020000001"  # Sanya; the Beijing patient's named hospital
SANYA_SECOND = "H46020000002"  # Sanya; designated, connected, opened M00503
SANYA_NOT_DESIGNATED = "H46020000003"
SANYA_NOT_CONNECTED = "H46020000004"
DATONG_HOME = "H14020000001"  # Datong 140200
TAIYUAN = "H14010000001"  # Taiyuan 140100: Shanxi, but not Datong

TUMOUR = "M00503"
HYPERTENSION = "M03900"
MID_2025 = date(2025, 6, 1)


@pytest.fixture(scope="module")
def world() -> World:
    return load_world()


def check(
    world: World,
    person: str,
    institution: str = CANCER_HOSPITAL,
    disease: str = TUMOUR,
    day: date = MID_2025,
    **visit: object,
) -> Eligibility:
    return check_registration(world, VisitKey(institution, disease, day, person_no=person, **visit))  # type: ignore[arg-type]


def refused(result: Eligibility, reason: Reason) -> None:
    assert result.reason is reason, result.message
    assert not result.eligible
    assert result.message


# --- 1. the person ------------------------------------------------------------------------------


def test_person_not_found(world: World) -> None:
    refused(check(world, "99999999999999999999"), Reason.PERSON_NOT_FOUND)
    by_certificate = check_registration(
        world, VisitKey(CANCER_HOSPITAL, TUMOUR, MID_2025, certificate_no="000000000000000000")
    )
    refused(by_certificate, Reason.PERSON_NOT_FOUND)


def test_person_found_by_certificate_alone(world: World) -> None:
    result = check_registration(
        world,
        VisitKey(
            CANCER_HOSPITAL,
            TUMOUR,
            date(2021, 12, 9),
            certificate_type="01",
            certificate_no="630102197001010021",
        ),
    )
    assert result.eligible, result.message
    assert result.person is not None and result.person.person_no == "63000000000000000001"


def test_person_mismatch(world: World) -> None:
    # psn_no of the Qinghai reference patient, certificate of the expired-registration person
    result = check(world, "63000000000000000001", certificate_type="01", certificate_no="630102197001010022")
    refused(result, Reason.PERSON_MISMATCH)
    # an unknown certificate with a known psn_no does not match either
    unknown = check(world, "63000000000000000001", certificate_no="000000000000000000")
    refused(unknown, Reason.PERSON_MISMATCH)


def test_person_not_insured(world: World) -> None:
    # insured until 2024-12-31
    assert check(world, "63000000000000000006", day=date(2024, 12, 31)).eligible
    refused(check(world, "63000000000000000006", day=date(2025, 1, 1)), Reason.PERSON_NOT_INSURED)


def test_insurance_type_mismatch(world: World) -> None:
    # the Qinghai reference patient is insured as residents (390)
    result = check(world, "63000000000000000001", insurance_type=InsuranceType.EMPLOYEE)
    refused(result, Reason.INSURANCE_TYPE_MISMATCH)
    assert check(world, "63000000000000000001", insurance_type=InsuranceType.RESIDENT).eligible


# --- 2. cross-province ----------------------------------------------------------------------------


def test_not_cross_province(world: World) -> None:
    # a Beijing person at a Beijing hospital; Beijing's scheme does not allow settling at home
    refused(check(world, "11000000000000000001", CANCER_HOSPITAL), Reason.NOT_CROSS_PROVINCE)


def test_datong_at_home_only_from_2025(world: World) -> None:
    # the 2021 Datong scheme does not allow settling at home; the 2025 one does
    refused(
        check(world, "14020000000000000001", DATONG_HOME, HYPERTENSION, date(2024, 12, 31)),
        Reason.NOT_CROSS_PROVINCE,
    )


def test_datong_home_is_the_city_not_the_province(world: World) -> None:
    """Settling at home (Datong 2025) is in Datong itself: at a Taiyuan hospital, elsewhere in
    Shanxi, the same person on the same day is refused as not cross-province."""
    assert check(world, "14020000000000000001", DATONG_HOME, HYPERTENSION).eligible
    refused(check(world, "14020000000000000001", TAIYUAN, HYPERTENSION), Reason.NOT_CROSS_PROVINCE)


def test_same_province_without_a_policy_in_force_is_not_cross_province(world: World) -> None:
    """Step 2 comes before step 3 even when the insured region has no policy in
    force (Hotan's starts 2025-01-01): a Hotan person at a hospital in Xinjiang
    is refused as NOT_CROSS_PROVINCE, not DISEASE_NOT_COVERED."""
    from dataclasses import replace

    in_xinjiang = replace(world.institutions[SANYA_SECOND], code="H65010000001", region="650100")
    moved = replace(world, institutions={**world.institutions, in_xinjiang.code: in_xinjiang})
    refused(check(moved, "65320000000000000001", in_xinjiang.code, day=date(2024, 12, 31)), Reason.NOT_CROSS_PROVINCE)
    refused(check(moved, "65320000000000000001", day=date(2024, 12, 31)), Reason.DISEASE_NOT_COVERED)


# --- 3. the disease -------------------------------------------------------------------------------


def test_disease_not_covered(world: World) -> None:
    # Hotan's policy has no hypertension, though the person is qualified for it
    result = check(world, "65320000000000000001", FUWAI, HYPERTENSION)
    refused(result, Reason.DISEASE_NOT_COVERED)


def test_disease_not_covered_before_policy_starts(world: World) -> None:
    # Hotan's policy (and its scheme) starts 2025-01-01
    refused(check(world, "65320000000000000001", day=date(2024, 12, 31)), Reason.DISEASE_NOT_COVERED)
    assert check(world, "65320000000000000001", day=date(2025, 1, 1)).eligible


def test_general_outpatient_disease(world: World) -> None:
    # Beijing covers hypertension under general outpatient; at a Sanya hospital so the visit is cross-province
    result = check(world, "11000000000000000001", SANYA_NAMED, HYPERTENSION)
    refused(result, Reason.GENERAL_OUTPATIENT_DISEASE)
    assert result.coverage is Coverage.GENERAL_OUTPATIENT


# --- 4. the qualification -------------------------------------------------------------------------


def test_qualification_not_found(world: World) -> None:
    refused(check(world, "63000000000000000004"), Reason.QUALIFICATION_NOT_FOUND)


def test_qualification_not_valid(world: World) -> None:
    # qualification ended 2024-06-30
    assert check(world, "63000000000000000005", day=date(2024, 6, 30)).eligible
    refused(check(world, "63000000000000000005", day=date(2024, 7, 1)), Reason.QUALIFICATION_NOT_VALID)


# --- 5. the institution ---------------------------------------------------------------------------


def test_institution_not_designated(world: World) -> None:
    refused(check(world, "11000000000000000001", SANYA_NOT_DESIGNATED), Reason.INSTITUTION_NOT_DESIGNATED)


def test_institution_not_connected(world: World) -> None:
    refused(check(world, "11000000000000000001", SANYA_NOT_CONNECTED), Reason.INSTITUTION_NOT_CONNECTED)


def test_disease_not_opened(world: World) -> None:
    # Fuwai did not open malignant tumour
    result = check(world, "63000000000000000001", FUWAI, TUMOUR, date(2021, 12, 9))
    refused(result, Reason.DISEASE_NOT_OPENED)


# --- 6. the registration --------------------------------------------------------------------------


def test_registration_not_found(world: World) -> None:
    result = check(world, "63000000000000000007")
    refused(result, Reason.REGISTRATION_NOT_FOUND)
    assert result.registration is None


def test_registration_not_yet_valid(world: World) -> None:
    # registration from 2026-01-01
    refused(check(world, "63000000000000000008", day=date(2025, 12, 31)), Reason.REGISTRATION_NOT_YET_VALID)
    assert check(world, "63000000000000000008", day=date(2026, 1, 1)).eligible


def test_registration_expired(world: World) -> None:
    # registration 2022-01-01..2023-12-31
    assert check(world, "63000000000000000002", day=date(2023, 12, 31)).eligible
    result = check(world, "63000000000000000002", day=date(2024, 1, 1))
    refused(result, Reason.REGISTRATION_EXPIRED)
    assert result.registration is not None and result.registration.id == "QH-R-0002"


def test_registration_revoked(world: World) -> None:
    # revoked from 2025-03-01
    assert check(world, "63000000000000000003", day=date(2025, 2, 28)).eligible
    refused(check(world, "63000000000000000003", day=date(2025, 3, 1)), Reason.REGISTRATION_REVOKED)


def test_registration_superseded(world: World) -> None:
    # BJ-R-0004A named H46020000002 until 2025-06-01, replaced by BJ-R-0004B naming H46020000001
    assert check(world, "11000000000000000004", SANYA_SECOND, day=date(2025, 5, 31)).eligible
    result = check(world, "11000000000000000004", SANYA_SECOND, day=date(2025, 6, 1))
    refused(result, Reason.REGISTRATION_SUPERSEDED)
    assert result.registration is not None and result.registration.id == "BJ-R-0004A"


def test_destination_mismatch(world: World) -> None:
    # the Hotan patient is registered to Beijing (110000), visits a Sanya hospital
    result = check(world, "65320000000000000001", SANYA_NAMED)
    refused(result, Reason.DESTINATION_MISMATCH)
    assert result.registration is not None and result.registration.destination == "110000"


def test_institution_not_in_registration(world: World) -> None:
    # the Beijing patient's registration names H46020000001 only
    refused(check(world, "11000000000000000001", SANYA_SECOND), Reason.INSTITUTION_NOT_IN_REGISTRATION)


def test_too_many_institutions(world: World) -> None:
    # two registrations in force name H46020000001, H46020000002 and H11010500001: 3 > 2
    refused(check(world, "11000000000000000002", SANYA_NAMED), Reason.TOO_MANY_INSTITUTIONS)
    # before the second registration starts (2025-02-01) only two are named
    assert check(world, "11000000000000000002", SANYA_NAMED, day=date(2025, 1, 31)).eligible


def test_residence_too_short(world: World) -> None:
    # resident since 2024-10-01, registration from 2025-01-01: under six months
    refused(check(world, "11000000000000000003", SANYA_NAMED), Reason.RESIDENCE_TOO_SHORT)


# --- eligible visits ------------------------------------------------------------------------------


def test_beijing_patient_at_named_sanya_hospital(world: World) -> None:
    result = check(world, "11000000000000000001", SANYA_NAMED)
    assert result.eligible, result.message
    assert result.reason is None
    assert result.registration is not None and result.registration.id == "BJ-R-0001"
    assert result.policy is not None and result.policy.region == "110000"
    assert result.terms is not None and result.terms.ratio_bp == 9000  # Beijing 310 M00503: 90%
    assert result.coverage is Coverage.CHRONIC_SPECIAL
    assert result.trace


def test_qinghai_reference_patient(world: World) -> None:
    result = check(world, "63000000000000000001", day=date(2021, 12, 9))
    assert result.eligible, result.message
    assert result.registration is not None and result.registration.id == "QH-R-0001"
    assert result.terms is not None and result.terms.deductible == 5000


def test_datong_patient_in_beijing(world: World) -> None:
    result = check(world, "14020000000000000001", FUWAI, HYPERTENSION)
    assert result.eligible, result.message
    assert result.registration is not None and result.registration.id == "DT-R-0001"
    assert result.policy is not None and result.policy.region == "140200"


def test_datong_patient_at_home(world: World) -> None:
    # Datong's 2025 scheme allows settling at home with a valid registration
    result = check(world, "14020000000000000001", DATONG_HOME, HYPERTENSION)
    assert result.eligible, result.message
    assert result.scheme is not None and result.scheme.allow_settle_at_home
    assert result.registration is not None and result.registration.id == "DT-R-0001"


def test_changed_registration_at_new_institution(world: World) -> None:
    result = check(world, "11000000000000000004", SANYA_NAMED, day=date(2025, 6, 1))
    assert result.eligible, result.message
    assert result.registration is not None and result.registration.id == "BJ-R-0004B"


def test_policy_terms_effective_date(world: World) -> None:
    old = check(world, "63000000000000000009", day=date(2025, 12, 31))
    new = check(world, "63000000000000000009", day=date(2026, 1, 1))
    assert old.terms is not None and old.terms.ratio_bp == 10_000 and old.terms_since == date(2021, 1, 1)
    assert new.terms is not None and new.terms.ratio_bp == 9_500 and new.terms_since == date(2026, 1, 1)


# --- the reason table and the engine's purity ---------------------------------------------------


def test_reasons_match_the_proto() -> None:
    from settlesim.v1 import reasons_pb2

    proto = {v.name for v in reasons_pb2.ErrorReason.DESCRIPTOR.values} - {"ERROR_REASON_UNSPECIFIED"}
    assert set(Reason.__members__) == proto
    assert all(member.value == name for name, member in Reason.__members__.items())


def test_rules_import_without_grpc_or_sqlite() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("grpc", "grpc_status", "sqlite3", "_sqlite3"):
            sys.modules[name] = None  # any import of these now raises ImportError
        import settlesim.server.model
        import settlesim.server.rules.eligibility
        import settlesim.server.rules.settlement
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- conditions that a mutation pass found untested (issue 9 item 21) -----------------------------


def _with_person(world: World, person_no: str, **changes: object) -> World:
    from dataclasses import replace

    person = replace(world.people[person_no], **changes)  # type: ignore[arg-type]
    return replace(world, people={**world.people, person_no: person})


def test_a_certificate_without_its_type_is_a_resident_identity_card(world: World) -> None:
    """An empty certificate_type means "01" (居民身份证), the type the world assumes too."""
    result = check_registration(
        world, VisitKey(CANCER_HOSPITAL, TUMOUR, date(2021, 12, 9), certificate_no="630102197001010021")
    )
    assert result.eligible and result.person is not None, result.message
    assert result.person.person_no == "63000000000000000001"


@pytest.mark.parametrize(
    ("since", "reason"), [(date(2024, 7, 1), None), (date(2024, 7, 2), Reason.RESIDENCE_TOO_SHORT)]
)
def test_six_months_residence_exactly_is_enough(world: World, since: date, reason: Reason | None) -> None:
    """Beijing requires 6 months' residence before the registration starts (2025-01-01): resident
    since 2024-07-01 is exactly 6 months and enough; one day later is not."""
    from dataclasses import replace

    registration = replace(world.people["11000000000000000003"].registrations[0], resident_since=since)
    moved = _with_person(world, "11000000000000000003", registrations=(registration,))
    assert check(moved, "11000000000000000003", SANYA_NAMED).reason is reason


def test_the_newest_covering_registration_applies(world: World) -> None:
    """Two registrations both valid and both reaching the institution: the answer names the one
    that started last (a renewal replaces what it renews)."""
    from dataclasses import replace

    old = world.people["63000000000000000001"].registrations[0]  # QH-R-0001 from 2021-11-01
    new = replace(old, id="QH-R-RENEWED", valid=replace(old.valid, start=date(2025, 1, 1)))
    for order in ((old, new), (new, old)):
        renewed = _with_person(world, "63000000000000000001", registrations=order)
        result = check(renewed, "63000000000000000001", CANCER_HOSPITAL, TUMOUR, MID_2025)
        assert result.eligible and result.registration is not None
        assert result.registration.id == "QH-R-RENEWED"


def test_coverage_none_is_not_covered(world: World) -> None:
    """A disease listed with `coverage: none` from a date is not covered from then on, exactly like
    an absent one (docs/world-format.md)."""
    from dataclasses import replace

    from settlesim.server.model import Dated, DiseaseTerms

    policy = world.policies["630000"]
    key = (InsuranceType.RESIDENT, TUMOUR)
    terms = {**policy.terms, key: Dated.of({date(2021, 1, 1): DiseaseTerms(Coverage.NONE)})}
    changed = replace(world, policies={**world.policies, "630000": replace(policy, terms=terms)})
    result = check(changed, "63000000000000000001", CANCER_HOSPITAL, TUMOUR, date(2021, 12, 9))
    refused(result, Reason.DISEASE_NOT_COVERED)
