"""Stable refusal reasons (ErrorInfo.reason). Mirrors `ErrorReason` in
protos/settlesim/v1/reasons.proto, which documents each one; a test keeps the two
equal."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    # malformed requests
    FIELD_MISSING = "FIELD_MISSING"
    FIELD_INVALID = "FIELD_INVALID"
    QUANTITY_NOT_POSITIVE = "QUANTITY_NOT_POSITIVE"
    PRICE_NEGATIVE = "PRICE_NEGATIVE"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    ITEMS_EMPTY = "ITEMS_EMPTY"
    TOO_MANY_ITEMS = "TOO_MANY_ITEMS"
    AMOUNT_OUT_OF_RANGE = "AMOUNT_OUT_OF_RANGE"
    DUPLICATE_SEQUENCE_NO = "DUPLICATE_SEQUENCE_NO"
    UNKNOWN_INSTITUTION = "UNKNOWN_INSTITUTION"
    UNKNOWN_DISEASE = "UNKNOWN_DISEASE"
    PERSON_MISMATCH = "PERSON_MISMATCH"
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    # registration check, in check order
    PERSON_NOT_FOUND = "PERSON_NOT_FOUND"
    PERSON_NOT_INSURED = "PERSON_NOT_INSURED"
    INSURANCE_TYPE_MISMATCH = "INSURANCE_TYPE_MISMATCH"
    NOT_CROSS_PROVINCE = "NOT_CROSS_PROVINCE"
    DISEASE_NOT_COVERED = "DISEASE_NOT_COVERED"
    GENERAL_OUTPATIENT_DISEASE = "GENERAL_OUTPATIENT_DISEASE"
    QUALIFICATION_NOT_FOUND = "QUALIFICATION_NOT_FOUND"
    QUALIFICATION_NOT_VALID = "QUALIFICATION_NOT_VALID"
    INSTITUTION_NOT_DESIGNATED = "INSTITUTION_NOT_DESIGNATED"
    INSTITUTION_NOT_CONNECTED = "INSTITUTION_NOT_CONNECTED"
    DISEASE_NOT_OPENED = "DISEASE_NOT_OPENED"
    REGISTRATION_NOT_FOUND = "REGISTRATION_NOT_FOUND"
    REGISTRATION_NOT_YET_VALID = "REGISTRATION_NOT_YET_VALID"
    REGISTRATION_EXPIRED = "REGISTRATION_EXPIRED"
    REGISTRATION_REVOKED = "REGISTRATION_REVOKED"
    REGISTRATION_SUPERSEDED = "REGISTRATION_SUPERSEDED"
    DESTINATION_MISMATCH = "DESTINATION_MISMATCH"
    INSTITUTION_NOT_IN_REGISTRATION = "INSTITUTION_NOT_IN_REGISTRATION"
    TOO_MANY_INSTITUTIONS = "TOO_MANY_INSTITUTIONS"
    RESIDENCE_TOO_SHORT = "RESIDENCE_TOO_SHORT"
    # ledger and message state
    MSGID_REUSED = "MSGID_REUSED"
    MSGID_VOIDED = "MSGID_VOIDED"
    SETTLEMENT_NOT_FOUND = "SETTLEMENT_NOT_FOUND"
    ALREADY_REVERSED = "ALREADY_REVERSED"
    ALREADY_VOIDED = "ALREADY_VOIDED"
    TOO_MANY_ENTRIES = "TOO_MANY_ENTRIES"
    # identity and access
    CALLER_UNAUTHENTICATED = "CALLER_UNAUTHENTICATED"
    INSTITUTION_NOT_CALLER = "INSTITUTION_NOT_CALLER"
    SESSIONS_DISABLED = "SESSIONS_DISABLED"
    # injected faults
    INJECTED_FAULT = "INJECTED_FAULT"
    # the audit log (branch audit)
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
    # storage (branch storage)
    LEDGER_UNAVAILABLE = "LEDGER_UNAVAILABLE"
    LEDGER_DAMAGED = "LEDGER_DAMAGED"
    LEDGER_LIMIT_EXCEEDED = "LEDGER_LIMIT_EXCEEDED"
    # check runs (branch hischeck)
    RUN_ALREADY_OPEN = "RUN_ALREADY_OPEN"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    # sessions and call metadata (branch sessions)
    DUPLICATE_HEADER = "DUPLICATE_HEADER"
    SESSION_NOT_YOURS = "SESSION_NOT_YOURS"
    # server limits (branch aio)
    SERVER_BUSY = "SERVER_BUSY"
    REQUEST_BODY_TIMEOUT = "REQUEST_BODY_TIMEOUT"
    # the national JSON door's visit flow (branch national)
    VISIT_NOT_FOUND = "VISIT_NOT_FOUND"
    VISIT_CANCELLED = "VISIT_CANCELLED"
    VISIT_SETTLED = "VISIT_SETTLED"
    SPLIT_MISMATCH = "SPLIT_MISMATCH"
    UNSUPPORTED_TRANSACTION = "UNSUPPORTED_TRANSACTION"


@dataclass(frozen=True, slots=True)
class Violation:
    """One malformed field (becomes a google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str
    reason: Reason


class Refusal(Exception):
    """A request the platform refuses, with its stable reason. Raised by
    validation, the rules and the ledger; the gRPC adapter turns it into a
    status with ErrorInfo (and BadRequest when `violations` are given)."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        violations: tuple[Violation, ...] = (),
        **metadata: str,
    ) -> None:
        super().__init__(message)
        self.reason, self.message, self.violations, self.metadata = reason, message, violations, metadata
