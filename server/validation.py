"""Request validation: turns protobuf requests into plain data for the rules, or
refuses them with every malformed field listed (INVALID_ARGUMENT + BadRequest).

Limits (documented in docs/errors.md) keep absurd input from reaching the rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date
from typing import NamedTuple

from settlesim.server.model import FeeLine, InsuranceType, VisitKey, World, new_tuple
from settlesim.server.rules.reasons import Reason, Refusal, Violation
from settlesim.v1 import settlement_service_pb2 as pb

MAX_ITEMS = 500  # fee lines per visit
MAX_UNIT_PRICE_FEN = 100_000_000  # 1,000,000 yuan per unit
MAX_QUANTITY = 100_000
# A visit's total (the items' amounts added up). The item limits alone allow
# 500 × 1e8 × 1e5 = 5e15 fen a visit, enough for a person's yearly sums to pass
# int64 in 2,050 visits; the ledger bounds the yearly sums (Ledger.MAX_*_FEN),
# this keeps one visit far below them: 1e10 fen = 100,000,000 yuan.
MAX_VISIT_TOTAL_FEN = 10**10
MAX_CODE_LENGTH = 64
MIN_YEAR, MAX_YEAR = 1990, 2100
# A refusal travels in gRPC trailers, which clients drop past 8-16 KiB: list at
# most this many violations, and quote bad input briefly and in ASCII.
MAX_LISTED_VIOLATIONS = 10
QUOTED_CHARS = 20
MAX_DESCRIPTION = 200
CODE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:/-]*\Z")  # \Z: `$` would allow a final newline
DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_INSURANCE_TYPES = {int(t.value): t for t in InsuranceType}
_MEDICAL_TYPES = {pb.MEDICAL_TYPE_UNSPECIFIED, pb.MEDICAL_TYPE_CHRONIC_SPECIAL_OUTPATIENT}


class SettlementInput(NamedTuple):
    """A validated settle or pre-settle request."""

    msgid: str
    visit: VisitKey
    lines: tuple[FeeLine, ...]
    use_account: bool = False  # acct_used_flag


def is_code(value: str) -> bool:
    """A well-formed code or id (msgid, institution, person, disease, ...)."""
    if value.isascii() and value.isalnum():  # letters and digits alone, the common code: no regex
        return len(value) <= MAX_CODE_LENGTH
    return 0 < len(value) <= MAX_CODE_LENGTH and CODE.match(value) is not None


_RECURRING_CODES: set[str] = set()  # well-formed codes seen before (institutions, diseases, catalog items)
_RECURRING_KEPT = 100_000  # at most this many (~15 MB of 64-character codes): past it, new ones are matched each time


def is_recurring_code(value: str) -> bool:
    """is_code for the codes every request repeats (the world's institutions and diseases, catalog
    item codes): a set lookup instead of a regular expression once seen. Not for what a client
    makes new each time (msgids, sequence numbers, its own item codes), which would only fill it."""
    if value in _RECURRING_CODES:
        return True
    if not is_code(value):
        return False
    if len(_RECURRING_CODES) < _RECURRING_KEPT:
        _RECURRING_CODES.add(value)
    return True


def quoted(value: str) -> str:
    """Bad input as a description quotes it: briefly, in ASCII."""
    return f"{value[:QUOTED_CHARS]!a}"


class _Checker:
    """Collects violations so one answer lists every problem."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, field: str, description: str, reason: Reason) -> None:
        self.violations.append(Violation(field, description[:MAX_DESCRIPTION], reason))

    def code(self, field: str, value: str, *, required: bool = True) -> str:
        if not value:
            if required:
                self.add(field, "required", Reason.FIELD_MISSING)
            return value
        if not is_code(value):
            self.add(
                field,
                f"must be 1-{MAX_CODE_LENGTH} letters, digits or ._:/- (got {quoted(value)})",
                Reason.FIELD_INVALID,
            )
        return value

    def text(self, field: str, value: str) -> None:
        """Free text the platform only records (operator 经办人, original infno)."""
        if len(value) > MAX_CODE_LENGTH:
            self.add(field, f"at most {MAX_CODE_LENGTH} characters", Reason.FIELD_INVALID)

    def day(self, field: str, value: str) -> date | None:
        if not value:
            self.add(field, "required (YYYY-MM-DD)", Reason.FIELD_MISSING)
            return None
        try:
            # fromisoformat alone also reads week dates ("2024-W18-3") and basic format
            parsed = date.fromisoformat(value) if DAY.fullmatch(value) else None
        except ValueError:
            parsed = None
        if parsed is None or not MIN_YEAR <= parsed.year <= MAX_YEAR:
            self.add(field, f"must be a date YYYY-MM-DD in {MIN_YEAR}..{MAX_YEAR}", Reason.FIELD_INVALID)
            return None
        return parsed

    def refuse_if_any(self) -> None:
        if self.violations:
            first = self.violations[0]
            listed = tuple(self.violations[:MAX_LISTED_VIOLATIONS])
            message = "; ".join(f"{v.field}: {v.description}" for v in listed)
            if len(self.violations) > len(listed):
                message += f" (and {len(self.violations) - len(listed)} more)"
            raise Refusal(first.reason, f"malformed request: {message}", listed)


def _valid_visit(visit: pb.Visit, world: World) -> VisitKey | None:
    """The visit when every check of `_visit` passes (no field names made), else None. Each field
    is read once: a message's field is looked up by name and made a Python object on every read."""
    institution, person, disease, day_text = visit.institution_code, visit.person, visit.disease_code, visit.visit_date
    person_no, certificate_type, certificate_no = person.person_no, person.certificate_type, person.certificate_no
    if not (
        institution in world.institutions  # the world's codes only are remembered as well-formed
        and (institution in _RECURRING_CODES or is_recurring_code(institution))
        and (not person_no or is_code(person_no))
        and (not certificate_type or is_code(certificate_type))
        and (not certificate_no or is_code(certificate_no))
        and (person_no or certificate_no)
        and disease in world.diseases
        and (disease in _RECURRING_CODES or is_recurring_code(disease))
        and visit.medical_type in _MEDICAL_TYPES
        and DAY.fullmatch(day_text)
    ):
        return None
    insurance_type, given_type = None, visit.insurance_type
    if given_type != pb.INSURANCE_TYPE_UNSPECIFIED:
        insurance_type = _INSURANCE_TYPES.get(given_type)
        if insurance_type is None:
            return None
    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        return None
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        return None
    return new_tuple(VisitKey, (institution, disease, day, person_no, certificate_type, certificate_no, insurance_type))


def _plain_line(item: pb.FeeItem, seen: set[str]) -> FeeLine | None:
    """The item's fee line when it passes every check of `_lines` on its own (its sequence
    number not in `seen`), with no field names made; else None."""
    sequence_no, catalog_code, hospital_code = item.sequence_no, item.catalog_code, item.hospital_item_code
    unit_price, quantity = item.unit_price_fen, item.quantity
    if (
        is_code(sequence_no)
        and sequence_no not in seen
        and (catalog_code in _RECURRING_CODES or is_recurring_code(catalog_code))
        and (not hospital_code or is_code(hospital_code))
        and 0 <= unit_price <= MAX_UNIT_PRICE_FEN
        and 0 < quantity <= MAX_QUANTITY
        and item.amount_fen == unit_price * quantity
    ):
        return new_tuple(FeeLine, (sequence_no, catalog_code, unit_price, quantity, hospital_code))
    return None


def _valid_lines(items: Sequence[pb.FeeItem]) -> tuple[FeeLine, ...] | None:
    """The fee lines when every check of `_lines` passes (no field names made), else None."""
    if not 0 < len(items) <= MAX_ITEMS:
        return None
    lines, seen, total = [], set(), 0
    for item in items:
        line = _plain_line(item, seen)
        if line is None:
            return None
        seen.add(line.sequence_no)
        total += line.unit_price * line.quantity  # (FeeLine.amount is a property: a call)
        lines.append(line)
    return tuple(lines) if total <= MAX_VISIT_TOTAL_FEN else None


def _valid_input(request: pb.SettlementRequest, world: World) -> SettlementInput | None:
    """The request as plain data when every check of `settlement_input` passes, else None: the
    valid path makes no checker and no field names."""
    msgid = request.msgid
    if not is_code(msgid) or len(request.operator) > MAX_CODE_LENGTH:
        return None
    visit = _valid_visit(request.visit, world)
    if visit is None:
        return None
    lines = _valid_lines(request.items)
    if lines is None:
        return None
    return new_tuple(SettlementInput, (msgid, visit, lines, request.use_personal_account))


def _visit(check: _Checker, visit: pb.Visit, world: World, prefix: str) -> VisitKey | None:
    if not check.violations and (valid := _valid_visit(visit, world)) is not None:
        return valid
    institution = check.code(f"{prefix}.institution_code", visit.institution_code)
    if institution and not check.violations and institution not in world.institutions:
        check.add(
            f"{prefix}.institution_code", f"unknown institution {institution}", Reason.UNKNOWN_INSTITUTION
        )
    person = visit.person
    check.code(f"{prefix}.person.person_no", person.person_no, required=False)
    check.code(f"{prefix}.person.certificate_type", person.certificate_type, required=False)
    check.code(f"{prefix}.person.certificate_no", person.certificate_no, required=False)
    if not person.person_no and not person.certificate_no:
        check.add(f"{prefix}.person", "give person_no or certificate_no", Reason.FIELD_MISSING)
    disease = check.code(f"{prefix}.disease_code", visit.disease_code)
    if disease and CODE.match(disease) and disease not in world.diseases:
        check.add(f"{prefix}.disease_code", f"unknown disease {disease[:64]}", Reason.UNKNOWN_DISEASE)
    day = check.day(f"{prefix}.visit_date", visit.visit_date)
    insurance_type = None
    if visit.insurance_type != pb.INSURANCE_TYPE_UNSPECIFIED:
        insurance_type = _INSURANCE_TYPES.get(visit.insurance_type)
        if insurance_type is None:
            check.add(
                f"{prefix}.insurance_type", f"unknown value {visit.insurance_type}", Reason.FIELD_INVALID
            )
    if visit.medical_type not in _MEDICAL_TYPES:
        check.add(f"{prefix}.medical_type", "only 14 (门诊慢特病) is settled here", Reason.FIELD_INVALID)
    if check.violations or day is None:
        return None
    return VisitKey(
        institution_code=institution,
        disease_code=disease,
        visit_date=day,
        person_no=person.person_no,
        certificate_type=person.certificate_type,
        certificate_no=person.certificate_no,
        insurance_type=insurance_type,
    )


def _lines(check: _Checker, items: Iterable[pb.FeeItem], count: int, prefix: str) -> tuple[FeeLine, ...]:
    if count == 0:
        check.add(prefix, "at least one fee item is required", Reason.ITEMS_EMPTY)
        return ()
    if count > MAX_ITEMS:
        check.add(prefix, f"{count} items; at most {MAX_ITEMS} per visit", Reason.TOO_MANY_ITEMS)
        return ()
    lines, seen = [], set()
    for i, item in enumerate(items):
        # The valid path first: no field names are made unless something is wrong.
        line = _plain_line(item, seen)
        if line is not None:
            seen.add(line.sequence_no)
            lines.append(line)
            continue
        at = f"{prefix}[{i}]"
        before = len(check.violations)
        sequence_no = check.code(f"{at}.sequence_no", item.sequence_no)
        if sequence_no in seen:
            check.add(
                f"{at}.sequence_no",
                f"duplicate sequence_no {quoted(sequence_no)}",
                Reason.DUPLICATE_SEQUENCE_NO,
            )
        seen.add(sequence_no)
        check.code(f"{at}.catalog_code", item.catalog_code)
        check.code(f"{at}.hospital_item_code", item.hospital_item_code, required=False)
        if item.unit_price_fen < 0:
            check.add(f"{at}.unit_price_fen", "must not be negative", Reason.PRICE_NEGATIVE)
        elif item.unit_price_fen > MAX_UNIT_PRICE_FEN:
            check.add(
                f"{at}.unit_price_fen", f"above the limit {MAX_UNIT_PRICE_FEN}", Reason.AMOUNT_OUT_OF_RANGE
            )
        if item.quantity <= 0:
            check.add(f"{at}.quantity", "must be positive", Reason.QUANTITY_NOT_POSITIVE)
        elif item.quantity > MAX_QUANTITY:
            check.add(f"{at}.quantity", f"above the limit {MAX_QUANTITY}", Reason.AMOUNT_OUT_OF_RANGE)
        if len(check.violations) == before:
            if item.amount_fen != item.unit_price_fen * item.quantity:
                check.add(
                    f"{at}.amount_fen",
                    f"{item.amount_fen} is not unit_price_fen × quantity "
                    f"= {item.unit_price_fen * item.quantity}",
                    Reason.AMOUNT_MISMATCH,
                )
            else:
                lines.append(
                    FeeLine(
                        sequence_no,
                        item.catalog_code,
                        item.unit_price_fen,
                        item.quantity,
                        item.hospital_item_code,
                    )
                )
    total = sum(line.unit_price * line.quantity for line in lines)
    if not check.violations and total > MAX_VISIT_TOTAL_FEN:
        check.add(
            prefix,
            f"the items total {total} fen, above the limit {MAX_VISIT_TOTAL_FEN} a visit",
            Reason.AMOUNT_OUT_OF_RANGE,
        )
    return tuple(lines)


def visit_key(visit: pb.Visit, world: World) -> VisitKey:
    check = _Checker()
    key = _visit(check, visit, world, "visit")
    check.refuse_if_any()
    assert key is not None
    return key


def settlement_input(request: pb.SettlementRequest, world: World) -> SettlementInput:
    valid = _valid_input(request, world)
    return valid if valid is not None else _checked_input(request, world)


def _checked_input(request: pb.SettlementRequest, world: World) -> SettlementInput:
    """settlement_input the careful way: every check by field, each problem named."""
    check = _Checker()
    msgid = check.code("request.msgid", request.msgid)
    check.text("request.operator", request.operator)
    key = _visit(check, request.visit, world, "request.visit")
    lines = _lines(check, request.items, len(request.items), "request.items")
    check.refuse_if_any()
    assert key is not None
    return SettlementInput(msgid, key, lines, request.use_personal_account)


def required_codes(texts: dict[str, str] | None = None, **fields: str) -> None:
    """Check plain id fields (msgid, settlement_id, ...) of the other calls, and
    the length of their free-text fields."""
    check = _Checker()
    for name, value in fields.items():
        check.code(name, value)
    for name, value in (texts or {}).items():
        check.text(name, value)
    check.refuse_if_any()


def date_range(start: str, end: str) -> tuple[date, date]:
    check = _Checker()
    first, last = check.day("start_date", start), check.day("end_date", end)
    if first and last and last < first:
        check.add("end_date", "is before start_date", Reason.FIELD_INVALID)
    check.refuse_if_any()
    assert first is not None and last is not None
    return first, last
