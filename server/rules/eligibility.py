"""The registration check (what VerifyRegistration decides), in the order of
docs/domain.md: person, cross-province, disease, qualification, institution,
registration. The first failing step gives the one reason."""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

from settlesim.server.model import (
    Coverage,
    DiseaseTerms,
    Institution,
    Period,
    Person,
    RegionPolicy,
    Registration,
    RegistrationScope,
    RegistrationStatus,
    Scheme,
    TraceEntry,
    VisitKey,
    World,
    add_months,
    new_tuple,
    province_of,
    region_covers,
)
from settlesim.server.rules.reasons import Reason
from settlesim.server.rules.words import day_text


class Eligibility(NamedTuple):
    """The answer of the registration check. When `reason` is None the visit may
    settle and `person`, `policy`, `terms` and `registration` are all set."""

    reason: Reason | None
    message: str
    person: Person | None = None
    institution: Institution | None = None
    policy: RegionPolicy | None = None
    terms: DiseaseTerms | None = None
    terms_since: date | None = None
    scheme: Scheme | None = None
    coverage: Coverage = Coverage.NONE
    registration: Registration | None = None
    trace: tuple[TraceEntry, ...] = ()

    @property
    def eligible(self) -> bool:
        return self.reason is None


def find_person(world: World, visit: VisitKey) -> tuple[Person | None, Reason | None]:
    """Step 1a: the person by psn_no and/or certificate; both must agree."""
    by_cert = None
    if visit.certificate_no:
        by_cert = world.people_by_certificate.get((visit.certificate_type or "01", visit.certificate_no))
    if visit.person_no:
        person = world.people.get(visit.person_no)
        if person is None:
            return None, Reason.PERSON_NOT_FOUND
        if visit.certificate_no and by_cert != person.person_no:
            return None, Reason.PERSON_MISMATCH
        return person, None
    if by_cert is None:
        return None, Reason.PERSON_NOT_FOUND
    return world.people[by_cert], None


def registration_state(registration: Registration, day: date) -> Reason | None:
    """Why `registration` does not apply on `day`, or None when it does."""
    ended = registration.ended_on is not None and day >= registration.ended_on
    if registration.status is RegistrationStatus.REVOKED and ended:
        return Reason.REGISTRATION_REVOKED
    if registration.status is RegistrationStatus.SUPERSEDED and ended:
        return Reason.REGISTRATION_SUPERSEDED
    if day < registration.valid.start:
        return Reason.REGISTRATION_NOT_YET_VALID
    if registration.valid.end is not None and day > registration.valid.end:
        return Reason.REGISTRATION_EXPIRED
    return None


def registration_covers(
    registration: Registration, institution: Institution, scheme: Scheme, at_home: bool
) -> Reason | None:
    """Why `registration` does not reach `institution`, or None when it does.
    At home (a policy that allows it) any valid registration suffices."""
    if at_home:
        return None
    if scheme.scope is RegistrationScope.INSTITUTION:
        if institution.code in registration.institutions:
            return None
        return Reason.INSTITUTION_NOT_IN_REGISTRATION
    if region_covers(registration.destination, institution.region):
        return None
    return Reason.DESTINATION_MISMATCH


def scheme_limits(person: Person, registration: Registration, scheme: Scheme, day: date) -> Reason | None:
    """Beijing-style scheme limits: at most N institutions named at a time, and
    a minimum residence before the registration starts (checked when the
    registration records `resident_since`)."""
    if scheme.scope is RegistrationScope.INSTITUTION:
        named = {
            code
            for r in person.registrations
            if registration_state(r, day) is None
            for code in r.institutions
        }
        if len(named) > scheme.max_institutions:
            return Reason.TOO_MANY_INSTITUTIONS
    if scheme.min_residence_months and registration.resident_since is not None:
        earliest = add_months(registration.resident_since, scheme.min_residence_months)
        if registration.valid.start < earliest:
            return Reason.RESIDENCE_TOO_SHORT
    return None


def choose_registration(
    person: Person, institution: Institution, scheme: Scheme, day: date, at_home: bool
) -> tuple[Registration | None, Reason | None]:
    """Step 6: the registration that covers the visit; else the closest one and
    why it fails. Registrations that name the institution explain best (expired,
    revoked, ...), then ones valid today but elsewhere."""
    registrations = person.registrations
    newest_first = (
        registrations if len(registrations) < 2 else sorted(registrations, key=lambda r: r.valid.start, reverse=True)
    )
    for registration in newest_first:
        if (
            registration_state(registration, day) is None
            and registration_covers(registration, institution, scheme, at_home) is None
        ):
            return registration, scheme_limits(person, registration, scheme, day)
    for registration in newest_first:
        if registration_covers(registration, institution, scheme, at_home) is None:
            return registration, registration_state(registration, day)
    for registration in newest_first:
        if registration_state(registration, day) is None:
            return registration, registration_covers(registration, institution, scheme, at_home)
    return None, Reason.REGISTRATION_NOT_FOUND


def check_registration(world: World, visit: VisitKey) -> Eligibility:
    """资格与备案校验: may this visit settle as a cross-province chronic/special
    disease visit? Assumes the institution and disease codes are known."""
    day = visit.visit_date
    institution = world.institutions[visit.institution_code]

    # 1. person, insured on the visit date, insurance type
    person, reason = find_person(world, visit)
    if person is None:
        assert reason is not None
        return Eligibility(reason, f"no insured person matches {_who(visit)}", institution=institution)
    if not _on_any(person.insured, day):
        return Eligibility(
            Reason.PERSON_NOT_INSURED, f"{person.person_no} is not insured on {day}", **_known(person, institution)
        )
    if visit.insurance_type is not None and visit.insurance_type != person.insurance_type:
        return Eligibility(
            Reason.INSURANCE_TYPE_MISMATCH,
            f"{person.person_no} is insured as {person.insurance_type}, not {visit.insurance_type}",
            **_known(person, institution),
        )

    # 2. cross-province, unless the insured region's policy allows settling at home
    policy = world.policy_for(person.insured_region)
    scheme_on = policy.scheme.on(day) if policy else None
    same_province = province_of(person.insured_region) == province_of(institution.region)
    # "Settle back home" (Datong 2025) means the insured region itself, not its whole province;
    # with no scheme in force nothing allows it, so step 2 still comes before step 3.
    at_home = (
        same_province
        and scheme_on is not None
        and scheme_on[1].allow_settle_at_home
        and region_covers(person.insured_region, institution.region)
    )
    if same_province and not at_home:
        return Eligibility(
            Reason.NOT_CROSS_PROVINCE,
            f"{institution.code} ({institution.region}) is in the insured province of "
            f"{person.insured_region}; this is not a cross-province visit",
            **_known(person, institution),
        )
    if policy is None or scheme_on is None:
        return Eligibility(
            Reason.DISEASE_NOT_COVERED,
            f"insured region {person.insured_region} has no policy in force on {day}",
            **_known(person, institution),
        )
    scheme_since, scheme = scheme_on

    # 3. the disease is chronic/special under the insured region's policy
    dated = policy.terms.get((person.insurance_type, visit.disease_code))
    terms_on = dated.on(day) if dated else None
    if terms_on is None or terms_on[1].coverage is Coverage.NONE:
        return Eligibility(
            Reason.DISEASE_NOT_COVERED,
            f"{person.insured_region} does not cover {visit.disease_code} for insurance type "
            f"{person.insurance_type} on {day}",
            **_known(person, institution, policy, scheme),
        )
    terms_since, terms = terms_on
    if terms.coverage is Coverage.GENERAL_OUTPATIENT:
        return Eligibility(
            Reason.GENERAL_OUTPATIENT_DISEASE,
            f"{person.insured_region} covers {visit.disease_code} under general outpatient "
            "(普通门诊), not as a chronic/special disease",
            **_known(person, institution, policy, scheme, terms, terms_since),
        )

    # 4. a qualification for the disease valid on the visit date
    held = _qualification(person, visit.disease_code, day)
    if held is None:
        return Eligibility(
            Reason.QUALIFICATION_NOT_FOUND,
            f"{person.person_no} holds no qualification for {visit.disease_code}",
            **_known(person, institution, policy, scheme, terms, terms_since),
        )
    if not held:
        return Eligibility(
            Reason.QUALIFICATION_NOT_VALID,
            f"{person.person_no}'s qualification for {visit.disease_code} is not valid on {day}",
            **_known(person, institution, policy, scheme, terms, terms_since),
        )

    # 5. the institution: designated, connected, disease opened
    if not institution.designated:
        return Eligibility(
            Reason.INSTITUTION_NOT_DESIGNATED,
            f"{institution.code} is not designated",
            **_known(person, institution, policy, scheme, terms, terms_since),
        )
    if not institution.connected:
        return Eligibility(
            Reason.INSTITUTION_NOT_CONNECTED,
            f"{institution.code} is not connected to the national platform",
            **_known(person, institution, policy, scheme, terms, terms_since),
        )
    if visit.disease_code not in institution.opened_diseases:
        return Eligibility(
            Reason.DISEASE_NOT_OPENED,
            f"{institution.code} has not opened {visit.disease_code} for cross-province settlement",
            **_known(person, institution, policy, scheme, terms, terms_since),
        )

    # 6. a registration valid on the visit date that reaches the institution
    registration, reason = choose_registration(person, institution, scheme, day, at_home)
    if reason is not None:
        return Eligibility(
            reason,
            _registration_message(reason, registration, institution, day),
            **_known(person, institution, policy, scheme, terms, terms_since),
            registration=registration,
        )

    trace = (_eligible_entry(policy, scheme_since, scheme, registration, institution),)
    return new_tuple(Eligibility, (  # every field, in order: made for every settle
        None, "eligible", person, institution, policy, terms, terms_since, scheme, terms.coverage, registration, trace
    ))  # fmt: skip


def _on_any(periods: tuple[Period, ...], day: date) -> bool:
    """Whether one of `periods` contains `day` (Period.contains, without a call per period)."""
    for p in periods:  # noqa: SIM110 - a loop: any() would make a generator per check
        if p.start <= day and (p.end is None or day <= p.end):
            return True
    return False


def _qualification(person: Person, disease: str, day: date) -> bool | None:
    """Step 4: whether a qualification the person holds for `disease` is valid on `day`; None when
    the person holds none for it."""
    held = None
    for q in person.qualifications:
        if q.disease == disease:
            if _on_any((q.valid,), day):
                return True
            held = False
    return held


def _eligible_entry(
    policy: RegionPolicy, scheme_since: date, scheme: Scheme, registration: Registration, institution: Institution
) -> TraceEntry:
    """The trace's first entry: the scheme and the registration that let the visit settle. The
    scheme's words are made once per policy version (RegionPolicy.sources); dates are days' texts."""
    key = ("scheme", scheme_since)
    words = policy.sources.get(key)
    if words is None:
        words = policy.sources[key] = f"policy {policy.region} scheme since {scheme_since}; registration "
    rid, valid = registration.id, registration.valid
    end = "open" if valid.end is None else day_text(valid.end)
    return new_tuple(TraceEntry, (
        "eligibility", "check_registration", words + rid,
        f"{scheme.scope} scheme; registration {rid} valid {day_text(valid.start)}..{end} reaches {institution.code}",
    ))  # fmt: skip


def _known(
    person: Person,
    institution: Institution,
    policy: RegionPolicy | None = None,
    scheme: Scheme | None = None,
    terms: DiseaseTerms | None = None,
    terms_since: date | None = None,
) -> dict[str, object]:
    """What a refusal after the person was found carries of what the check found so far."""
    known: dict[str, object] = {"person": person, "institution": institution}
    if policy is not None:
        known |= {"policy": policy, "scheme": scheme}
    if terms is not None:
        known |= {"terms": terms, "terms_since": terms_since, "coverage": terms.coverage}
    return known


def _who(visit: VisitKey) -> str:
    if visit.person_no:
        return f"psn_no {visit.person_no}"
    return f"certificate {visit.certificate_type or '01'}/{visit.certificate_no}"


def _registration_message(
    reason: Reason, registration: Registration | None, institution: Institution, day: date
) -> str:
    if registration is None:
        return "the person has no cross-province registration"
    rid = registration.id
    return {
        Reason.REGISTRATION_NOT_YET_VALID: (
            f"registration {rid} starts {registration.valid.start}, after {day}"
        ),
        Reason.REGISTRATION_EXPIRED: f"registration {rid} ended {registration.valid.end}, before {day}",
        Reason.REGISTRATION_REVOKED: f"registration {rid} was revoked from {registration.ended_on}",
        Reason.REGISTRATION_SUPERSEDED: f"registration {rid} was replaced by "
        f"{registration.replaced_by or 'a newer one'} from {registration.ended_on}",
        Reason.DESTINATION_MISMATCH: f"registration {rid} is for {registration.destination}, "
        f"not {institution.region} where {institution.code} is",
        Reason.INSTITUTION_NOT_IN_REGISTRATION: f"registration {rid} names "
        f"{', '.join(registration.institutions) or 'no institution'}, not {institution.code}",
        Reason.TOO_MANY_INSTITUTIONS: f"registrations in force on {day} name more institutions "
        "than the scheme allows",
        Reason.RESIDENCE_TOO_SHORT: f"registration {rid} starts before the required residence "
        f"since {registration.resident_since} is met",
    }.get(reason, reason.value)
