"""A fast path for person records, the bulk of a large world (1,000,000 people
in a generated world). It accepts only the plain common shape — strings, lists,
ISO dates — and shares repeated values (dates, periods, short codes); anything
else raises, and the loader re-reads that record with its careful parser, which
gives the same result or names the problem with file and path. So the fast path
changes speed and memory, never what is accepted."""

from __future__ import annotations

from collections.abc import Container
from datetime import date
from typing import Any

from settlesim.server.model import (
    InsuranceType,
    Period,
    Person,
    Qualification,
    Registration,
    RegistrationStatus,
    region_lineage,
)
from settlesim.server.world_keys import (
    CERTIFICATE_KEYS,
    PERIOD_KEYS,
    PERSON_KEYS,
    QUALIFICATION_KEYS,
    REGISTRATION_KEYS,
)

_INSURANCE_TYPES = {t.value: t for t in InsuranceType}  # the common spelling; others: the careful parser
_STATUSES = {s.value: s for s in RegistrationStatus}


class NotPlain(Exception):
    """The record is not in the plain common shape: use the careful parser."""


class PersonReader:
    """Reads plain person dicts, sharing repeated values across records."""

    def __init__(
        self, diseases: Container[str], institutions: Container[str], regions: Container[str]
    ) -> None:
        self.diseases, self.institutions, self.regions = diseases, institutions, regions
        self._dates: dict[str, date] = {}
        self._periods: dict[tuple[str, str | None], Period] = {}
        self._texts: dict[str, str] = {}
        self._known_regions: set[str] = set()

    def text(self, value: Any) -> str:
        if type(value) is not str or not value:
            raise NotPlain
        return self._texts.setdefault(value, value)

    def day(self, value: Any) -> date:
        found = self._dates.get(value) if type(value) is str else None
        if found is None:
            if type(value) is not str:
                raise NotPlain
            found = self._dates[value] = date.fromisoformat(value)
        return found

    def period(self, record: Any) -> Period:
        start, end = record["from"], record.get("to")
        found = self._periods.get((start, end))
        if found is None:
            first, last = self.day(start), None if end is None else self.day(end)
            if last is not None and last < first:
                raise NotPlain
            found = self._periods[(start, end)] = Period(first, last)
        return found

    def region(self, value: Any) -> str:
        code = self.text(value)
        if code not in self._known_regions:
            if (
                len(code) != 6
                or not code.isdigit()
                or not any(r in self.regions for r in region_lineage(code))
            ):
                raise NotPlain
            self._known_regions.add(code)
        return code

    def registration(self, record: Any) -> Registration:
        if not REGISTRATION_KEYS.issuperset(record):
            raise NotPlain
        status = _STATUSES[record.get("status", "active")]
        ended_on, resident_since = record.get("ended_on"), record.get("resident_since")
        if status is not RegistrationStatus.ACTIVE and ended_on is None:
            raise NotPlain
        institutions = tuple(self.text(code) for code in record.get("institutions") or ())
        if any(code not in self.institutions for code in institutions):
            raise NotPlain
        replaced_by = record.get("replaced_by") or ""
        if type(replaced_by) is not str:
            raise NotPlain
        return Registration(
            id=self.text(record["id"]),
            category=self.text(record["category"]),
            destination=self.region(record["destination"]),
            valid=self.period(record),
            institutions=institutions,
            status=status,
            ended_on=None if ended_on is None else self.day(ended_on),
            resident_since=None if resident_since is None else self.day(resident_since),
            replaced_by=replaced_by,
        )

    def person(self, record: Any) -> Person:
        """A Person from a plain dict; raises (anything) when the record is not plain."""
        if not PERSON_KEYS.issuperset(record):  # a misspelled key: the careful parser names it
            raise NotPlain
        if "medical_assistance" in record or "account_opening_fen" in record:
            raise NotPlain  # the few people with funds of their own: the careful parser reads them
        qualifications = []
        for q in record.get("qualifications") or ():
            if not QUALIFICATION_KEYS.issuperset(q):
                raise NotPlain
            disease = self.text(q["disease"])
            if disease not in self.diseases:
                raise NotPlain
            qualifications.append(Qualification(disease, self.period(q)))
        certificate = record["certificate"]
        name = record.get("name") or ""
        if type(name) is not str or type(certificate["number"]) is not str:
            raise NotPlain
        if not CERTIFICATE_KEYS.issuperset(certificate):
            raise NotPlain
        insured = record["insured"]
        for period in insured:
            if not PERIOD_KEYS.issuperset(period):
                raise NotPlain
        return Person(
            person_no=self.text(record["psn_no"]),
            name=name,
            certificate_type=self.text(certificate.get("type", "01")),
            certificate_no=certificate["number"],
            insured_region=self.region(record["insured_region"]),
            insurance_type=_INSURANCE_TYPES[record["insurance_type"]],
            insured=tuple(self.period(p) for p in insured),
            qualifications=tuple(qualifications),
            registrations=tuple(self.registration(r) for r in record.get("registrations") or ()),
        )
