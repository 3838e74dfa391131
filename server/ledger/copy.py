"""`settlesim ledger copy --from A --to B`: a ledger moved between stores (SQLite file or
PostgreSQL database, either way) with its figures unchanged, and checked.

The source is only read (one snapshot) and must be sound (`ledger check`) and of the current
schema version; the destination must be new or empty. Every table is copied row by row in one
transaction (settlements in the order they were made), then the destination's rows per table
and, per namespace, institution and visit year, the count and sums of the settlements in
force (what Reconcile answers) are compared with the source's; any difference and nothing is
kept. Then `ledger check` runs on the copy. Each store hands its tables over in one neutral
form (dates as `date`, times as UTC `datetime`, bytes): server/ledger/sqlite/tables.py,
server/ledger/postgres/tables.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

# The tables of schema version 7 and 8 (8 only drops a SQLite index) and their columns, named alike in both stores.
TABLES: dict[str, tuple[str, ...]] = {
    "sessions": ("session", "institutions", "created_at"),
    "settlements": (
        "settlement_id", "session", "msgid", "institution_code", "person_no", "disease_code", "visit_date",
        "year", "status", "total", "fund_pays", "patient_pays", "deductible_applied", "undone_by_msgid",
        "created_at", "answer", "full_self_pay", "over_ceiling", "pre_self_pay", "in_scope", "ratio_bp",
        "pooled_pays", "serious_threshold", "serious_pays", "assistance_pays", "account_pays",
    ),
    "settlement_items": (
        "settlement_id", "sequence_no", "catalog_code", "hospital_item_code", "unit_price", "quantity", "amount",
        "catalog_class", "self_pay_share_bp", "price_ceiling", "full_self_pay", "over_ceiling", "pre_self_pay",
        "in_scope",
    ),
    "yearly_totals": (
        "session", "person_no", "disease_code", "year", "deductible_used", "fund_paid", "serious_threshold_used",
        "serious_paid", "assistance_paid", "account_paid",
    ),
    "institution_totals": ("session", "institution_code", "year", "total"),
    "messages": ("session", "msgid", "kind", "institution_code", "request_hash", "settlement_id", "created_at"),
    "audit_anchors": ("audit_path", "records", "size", "head", "updated_at"),
    "national_visits": (
        "session", "institution_code", "mdtrt_id", "psn_no", "insutype", "begntime", "status", "med_type",
        "dise_codg", "settle_msgid", "created_at",
    ),
    "national_fee_lines": (
        "session", "institution_code", "mdtrt_id", "feedetl_sn", "chrg_bchno", "med_list_codg",
        "medins_list_codg", "pric", "cnt", "amount", "status", "created_at",
    ),
    "national_answers": (
        "session", "institution_code", "msgid", "infno", "request_hash", "output", "created_at",
    ),
}  # fmt: skip
TIME_COLUMNS = {"created_at", "updated_at"}
DATE_COLUMNS = {"visit_date"}

# Per namespace, institution and visit year: settlements in force, their total, fund and patient.
IN_FORCE = (
    "SELECT session, institution_code, year, COUNT(*), CAST(SUM(total) AS BIGINT), "
    "CAST(SUM(fund_pays) AS BIGINT), CAST(SUM(patient_pays) AS BIGINT) "
    "FROM settlements WHERE status = 'settled' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


class CopyError(Exception):
    """A copy that was not made (or not kept): one line saying why."""


@dataclass(frozen=True, slots=True)
class Figures:
    rows: dict[str, int]
    in_force: list[tuple[Any, ...]]  # (session, institution, year, count, total, fund, patient)


@dataclass(frozen=True, slots=True)
class CopyReport:
    source: str
    destination: str
    figures: Figures


class Tables(Protocol):
    """A store's tables as `ledger copy` reads and writes them."""

    name: str

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]: ...
    def write(self, table: str, rows: Iterator[tuple[Any, ...]]) -> None: ...
    def figures(self) -> Figures: ...


def _store(where: str) -> Any:
    """The module of the store `where` names (source_tables, destination_tables)."""
    from settlesim.server.ledger import is_database_url

    if is_database_url(where):
        from settlesim.server.ledger.postgres import tables
    else:
        from settlesim.server.ledger.sqlite import tables
    return tables


def copy_ledger(source: str, destination: str, check: Callable[[str], list[str]]) -> CopyReport:
    """Copy `source` to `destination`; `check(where)` returns a ledger's problems (the invariants
    of `settlesim ledger check`), run on both ends. Raises CopyError."""
    if problems := check(source):
        raise CopyError(
            f"{source} fails its check ({len(problems)} problem(s), first: {problems[0]}); nothing copied"
        )
    opened_source: AbstractContextManager[Tables] = _store(source).source_tables(source)
    with opened_source as src:
        before = src.figures()
        opened: AbstractContextManager[Tables] = _store(destination).destination_tables(destination)
        with opened as dst:
            held = {table: n for table, n in dst.figures().rows.items() if n}
            if held:
                listed = ", ".join(f"{n} {table}" for table, n in sorted(held.items()))
                raise CopyError(f"{dst.name} is not empty ({listed}): copy into an empty database")
            for table in TABLES:
                dst.write(table, src.rows(table))
            after = dst.figures()
            _require_equal(before, after, src.name, dst.name)
    if problems := check(destination):  # committed: say what is wrong with it
        raise CopyError(f"{dst.name} fails its check after the copy: {problems[0]}")
    return CopyReport(src.name, dst.name, after)


def _require_equal(before: Figures, after: Figures, source: str, destination: str) -> None:
    differences = [
        f"{table}: {before.rows[table]} rows at {source}, {after.rows.get(table)} at {destination}"
        for table in TABLES
        if before.rows[table] != after.rows.get(table)
    ]
    if not differences and before.in_force != after.in_force:
        differences = [f"the settlements in force sum differently at {source} and {destination}"]
    if differences:
        raise CopyError(f"the copy differs, nothing kept: {differences[0]}")
