"""Settling through a network that loses answers, the way a careful HIS does.

A settle that gets no answer may or may not have committed. "No answer" is a
status without a google.rpc.ErrorInfo reason (UNAVAILABLE, DEADLINE_EXCEEDED,
INTERNAL, UNKNOWN, CANCELLED, a transport RESOURCE_EXHAUSTED, ...; see
hospital.answer_lost); a refusal WITH a reason is the platform's answer and
settled nothing, whatever its code. The HIS retries
with the SAME msgid (the platform answers a retry with the original
settlement, never a second one); when retries run out it voids the msgid
(冲正, VoidByMessageId — itself retried with its own fixed msgid), which undoes
the settlement if it was committed and blocks it if it was not. Either way the
visit is then known to be NOT settled, and the patient is settled again later
or pays in full.

The HospitalBook is the hospital's side of reconciliation (对账): the
settlements it believes are in force, to compare with the platform's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import grpc
from settlesim.clients.hospital import Fee, Hospital, MessageTooLarge, SettlementUncertain, answer_lost
from settlesim.v1 import settlement_service_pb2 as pb


class VoidUncertain(Exception):
    """Even the void got no answer: the visit's state is unknown until a later
    void (same void msgid) or a GetSettlement by msgid answers."""

    def __init__(self, original_msgid: str, void_msgid: str) -> None:
        super().__init__(f"no answer voiding {original_msgid} (void msgid {void_msgid})")
        self.original_msgid, self.void_msgid = original_msgid, void_msgid


@dataclass(frozen=True, slots=True)
class BookEntry:
    """One settlement as the hospital recorded it from the platform's answer."""

    settlement_id: str
    msgid: str
    visit_date: str
    total_fen: int
    fund_pays_fen: int
    patient_pays_fen: int

    @classmethod
    def of(cls, s: pb.Settlement) -> BookEntry:
        t = s.totals
        return cls(s.settlement_id, s.msgid, s.visit_date, t.total_fen, t.fund_pays_fen, t.patient_pays_fen)

    @classmethod
    def of_reconcile(cls, e: pb.ReconcileEntry) -> BookEntry:
        return cls(e.settlement_id, e.msgid, e.visit_date, e.total_fen, e.fund_pays_fen, e.patient_pays_fen)


class HospitalBook:
    """The settlements a hospital believes are in force (thread-safe)."""

    def __init__(self) -> None:
        self._entries: dict[str, BookEntry] = {}
        self._lock = threading.Lock()

    def add(self, entry: BookEntry) -> None:
        with self._lock:
            self._entries[entry.settlement_id] = entry

    def remove(self, settlement_id: str) -> None:
        with self._lock:
            self._entries.pop(settlement_id, None)

    def entries(self, start: str | date = "0000-01-01", end: str | date = "9999-12-31") -> list[BookEntry]:
        with self._lock:
            return sorted(
                (e for e in self._entries.values() if str(start) <= e.visit_date <= str(end)),
                key=lambda e: (e.visit_date, e.settlement_id),
            )

    def figures(self, start: str | date, end: str | date) -> pb.ReconcileFigures:
        """The hospital's totals for 对账, in integer fen."""
        entries = self.entries(start, end)
        return pb.ReconcileFigures(
            count=len(entries),
            total_fen=sum(e.total_fen for e in entries),
            fund_pays_fen=sum(e.fund_pays_fen for e in entries),
            patient_pays_fen=sum(e.patient_pays_fen for e in entries),
        )


@dataclass(frozen=True, slots=True)
class VisitOutcome:
    msgid: str
    entry: BookEntry | None  # None: the visit is not settled (voided after a lost answer)
    voided: bool = False  # a void ran (and undid a committed settlement when `undid`)
    undid: bool = False
    replayed: bool = False  # the answer came to a retry: an earlier attempt had committed


def void_reliably(his: Hospital, original_msgid: str, rounds: int = 10) -> pb.VoidByMessageIdResponse:
    """Void `original_msgid`, retrying the SAME void msgid through `rounds`
    rounds of the client's own retries while the answer is lost (answer_lost):
    a void is idempotent too. A definite refusal is raised as it came."""
    void_msgid = his.next_msgid()
    for attempt in range(rounds):
        try:
            return his.void(original_msgid, msgid=void_msgid)
        except grpc.RpcError as error:
            if isinstance(error, MessageTooLarge) and error.ran:
                raise VoidUncertain(original_msgid, void_msgid) from error
            if not answer_lost(error):
                raise
            time.sleep(his.backoff * min(2**attempt, 20))
    raise VoidUncertain(original_msgid, void_msgid)


def settle_reliably(
    his: Hospital,
    book: HospitalBook,
    person_no: str,
    disease_code: str,
    visit_date: str | date,
    fees: Iterable[Fee],
) -> VisitOutcome:
    """Settle a visit so that the hospital's book and the platform agree, whatever
    answers are lost: retry with the same msgid, and void when retries run out.

    What is raised instead is certain to have settled nothing: a refusal with an
    ErrorInfo reason (the patient is not eligible, ...), TlsHandshakeRefused (no
    request left the hospital) and MessageTooLarge for the request (refused
    before it ran). Only a lost answer — a status without ErrorInfo, whatever
    its code — leaves the outcome uncertain, and only that is retried and voided."""
    request = his.settlement_request(person_no, disease_code, visit_date, fees)
    try:
        answer = his.settle_request(request)
    except SettlementUncertain:
        voided = void_reliably(his, request.msgid)
        return VisitOutcome(request.msgid, None, voided=True, undid=voided.voided_settlement)
    entry = BookEntry.of(answer.settlement)
    book.add(entry)
    return VisitOutcome(request.msgid, entry, replayed=answer.replayed)
