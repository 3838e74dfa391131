"""Stored answers checked against what the ledger knows.

Each settlement keeps the exact answer it returned (protobuf `settlesim.v1.Settlement`
bytes) beside its figures as columns and its fee lines as rows. The ledger
(server/ledger/) knows no protobuf; this module decodes the answers:

- `decode` for the server: a stored answer that does not decode, or disagrees
  with its settlement's columns, is refused as DATA_LOSS / LEDGER_DAMAGED
  instead of being served (a flipped bit once made GetSettlement say fund 0);
- `settlement_problems` for `settlesim ledger check`: every stored answer decodes and
  agrees with its columns and, from schema version 2 on, with its item rows (the
  store hands it each settlement's row and item rows: server/ledger/sqlite/answer_rows.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError
from settlesim.server.ledger.contract import StoredSettlement
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.v1 import settlement_service_pb2 as pb

# (column, the answer's value): what a settlement's row and its answer both say.
_HEADER = ("settlement_id", "msgid", "institution_code", "person_no", "disease_code")
_TOTALS = (
    ("total", "total_fen"),
    ("fund_pays", "fund_pays_fen"),
    ("patient_pays", "patient_pays_fen"),
    ("deductible_applied", "deductible_applied_fen"),
    ("full_self_pay", "full_self_pay_fen"),  # this and below: NULL before schema version 2
    ("over_ceiling", "over_ceiling_self_pay_fen"),
    ("pre_self_pay", "pre_self_pay_fen"),
    ("in_scope", "in_scope_fen"),
    ("ratio_bp", "ratio_bp"),
    ("pooled_pays", "pooled_fund_fen"),  # this and below: NULL before schema version 7
    ("serious_threshold", "serious_threshold_applied_fen"),
    ("serious_pays", "serious_illness_fen+large_amount_fen"),  # one of them is 0 (by insurance type)
    ("assistance_pays", "medical_assistance_fen"),
    ("account_pays", "account_pays_fen"),
)


def _figure(totals: pb.SettlementTotals, field: str) -> int:
    return sum(getattr(totals, name) for name in field.split("+"))
_CLASSES = {"A": pb.CATALOG_CLASS_A, "B": pb.CATALOG_CLASS_B, "C": pb.CATALOG_CLASS_C,
            "not_listed": pb.CATALOG_CLASS_NOT_LISTED}  # fmt: skip
_ITEM = (
    ("catalog_code", "catalog_code"),
    ("amount", "amount_fen"),
    ("self_pay_share_bp", "self_pay_share_bp"),
    ("full_self_pay", "full_self_pay_fen"),
    ("over_ceiling", "over_ceiling_self_pay_fen"),
    ("pre_self_pay", "pre_self_pay_fen"),
    ("in_scope", "in_scope_fen"),
)


def _disagreements(answer: pb.Settlement, columns: Mapping[str, Any]) -> list[str]:
    found = [
        f"stored answer says {name} {getattr(answer, name)!r} but the column says {columns[name]!r}"
        for name in _HEADER
        if getattr(answer, name) != columns[name]
    ]
    if answer.visit_date != columns["visit_date"]:
        found.append(
            f"stored answer says visit_date {answer.visit_date!r} but the column says {columns['visit_date']!r}"
        )
    found += [
        f"stored answer says {column} {_figure(answer.totals, field)} but the column says {columns[column]}"
        for column, field in _TOTALS
        if columns.get(column) is not None and _figure(answer.totals, field) != columns[column]
    ]
    return found


def decode(stored: StoredSettlement) -> pb.Settlement:
    """The stored answer, when it decodes and agrees with the settlement's columns;
    otherwise LEDGER_DAMAGED (the damage is logged by the caller's refusal)."""
    try:
        answer = pb.Settlement.FromString(stored.answer)
    except DecodeError as error:
        raise _damaged(stored.settlement_id, f"its stored answer does not decode ({error})") from None
    columns = {name: getattr(stored, name) for name in _HEADER}
    columns["visit_date"] = stored.visit_date.isoformat()
    columns.update((column, getattr(stored, column)) for column, _ in _TOTALS)
    if found := _disagreements(answer, columns):
        raise _damaged(stored.settlement_id, found[0])
    return answer


def _damaged(settlement_id: str, why: str) -> Refusal:
    return Refusal(
        Reason.LEDGER_DAMAGED,
        f"settlement {settlement_id} is damaged in the ledger: {why}; it is not served "
        "(settlesim ledger check lists the damage)",
        settlement_id=settlement_id,
    )


def settlement_problems(settlement: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> list[str]:
    """For `settlesim ledger check` (the contract's AnswerCheck): a settlement's stored
    answer decodes, agrees with its columns and (figures present: schema version 2 on)
    with its item rows, item for item by sequence number. One line per disagreement."""
    sid = settlement["settlement_id"]
    try:
        answer = pb.Settlement.FromString(settlement["answer"])
    except DecodeError as error:
        return [f"settlement {sid}: stored answer does not decode ({error})"]
    found = [f"settlement {sid}: {problem}" for problem in _disagreements(answer, settlement)]
    if settlement["ratio_bp"] is not None:
        found += [f"settlement {sid} {problem}" for problem in _item_disagreements(answer, rows)]
    return found


def _item_disagreements(answer: pb.Settlement, rows: list[Mapping[str, Any]]) -> list[str]:
    by_sequence = {row["sequence_no"]: row for row in rows}
    answered = {item.sequence_no: item for item in answer.items}
    found = [f"item {seq}: in the stored answer but has no row" for seq in answered if seq not in by_sequence]
    found += [
        f"item {seq}: has a row but is not in the stored answer" for seq in by_sequence if seq not in answered
    ]
    for seq, item in answered.items():
        row = by_sequence.get(seq)
        if row is None:
            continue
        found += [
            f"item {seq}: stored answer says {column} {getattr(item, field)!r} but the row says {row[column]!r}"
            for column, field in _ITEM
            if getattr(item, field) != row[column]
        ]
        if _CLASSES.get(row["catalog_class"]) != item.catalog_class:
            found.append(
                f"item {seq}: stored answer says catalog_class {pb.CatalogClass.Name(item.catalog_class)} "
                f"but the row says {row['catalog_class']!r}"
            )
        ceiling = item.price_ceiling_fen if item.HasField("price_ceiling_fen") else None
        if ceiling != row["price_ceiling"]:
            found.append(
                f"item {seq}: stored answer says price_ceiling {ceiling} but the row says {row['price_ceiling']}"
            )
    return found
