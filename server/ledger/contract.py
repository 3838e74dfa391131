"""The ledger's contract: what the service, the national door, the console, the audit
log, the HIS-check service, the processes supervisor and the CLI may ask of a ledger
(`LedgerStore`), and the plain data it answers with. No storage engine here: the
embedded SQLite store (server/ledger/sqlite/) implements it, and a PostgreSQL store
plugs in behind the same contract (server/ledger/__init__.py's `open_ledger`).

Every call is keyed by a `session` ("" by default): a sandbox namespace (docs/sessions.md).
Within a session, msgids are keyed by the institution that sent them (报文ID).
Refusals are `Refusal`s with a stable reason; storage failures too (LEDGER_UNAVAILABLE,
LEDGER_DAMAGED), never an engine's own exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from settlesim.server.model import YearlyTotals


class LedgerFileError(Exception):
    """A file that is not a settlesim ledger this version can use (empty, not a
    database, damaged, tables missing or not those of its version, or a schema
    newer than this code)."""


class StoredItem(NamedTuple):
    """费用明细 as settled: a fee line and the parts the rules gave it, fen. A
    tuple: its fields are the row of settlement_items after the settlement id."""

    sequence_no: str
    catalog_code: str
    hospital_item_code: str
    unit_price: int
    quantity: int
    amount: int
    catalog_class: str  # A, B, C or not_listed
    self_pay_share_bp: int
    price_ceiling: int | None
    full_self_pay: int
    over_ceiling: int
    pre_self_pay: int
    in_scope: int


@dataclass(slots=True)
class StoredSettlement:
    """A settlement as the ledger keeps it. `answer` is the caller's encoded
    answer (opaque bytes here), returned as-is to a retry. The figures and
    `items` are also rows, for operators' SQL and `ledger check`; reads do not
    load the items (the answer has them). Settlements made before schema
    version 2 have None figures and no item rows.

    Not frozen, though nothing changes one once made (`replace()` makes another): every settle
    makes one, and a frozen dataclass sets each of its 25 fields through object.__setattr__
    (about 4 us a settle on the event loop; 0.7 us as a plain slotted one)."""

    settlement_id: str
    session: str
    msgid: str
    institution_code: str
    person_no: str
    disease_code: str
    visit_date: date
    total: int
    fund_pays: int
    patient_pays: int
    deductible_applied: int
    answer: bytes = b""
    status: str = "settled"
    undone_by_msgid: str = ""
    full_self_pay: int | None = None
    over_ceiling: int | None = None
    pre_self_pay: int | None = None
    in_scope: int | None = None
    ratio_bp: int | None = None
    items: tuple[StoredItem, ...] = ()
    # version 7 (None before): the funds after the pooled one and the personal account
    # (server/rules/funds.py). fund_pays is every fund; pooled_pays the basic pooled fund alone,
    # what yearly_totals.fund_paid sums (before version 7 the pooled fund was every fund).
    pooled_pays: int | None = None
    serious_threshold: int | None = None  # the serious-illness / large-amount threshold met
    serious_pays: int | None = None  # hifmi_pay or hifob_pay
    assistance_pays: int | None = None  # maf_pay
    account_pays: int | None = None  # acct_pay (part of patient_pays)

    @property
    def pooled(self) -> int:
        """The pooled fund's part (hifp_pay): what the yearly fund_paid counts."""
        return self.fund_pays if self.pooled_pays is None else self.pooled_pays


@dataclass(frozen=True, slots=True)
class AuditAnchor:
    """The head of an audit log's chain: how many records, how many bytes up to
    the end of the last one, and that record's digest (GENESIS when none)."""

    records: int
    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class ReconcileSums:
    count: int
    total: int
    fund_pays: int
    patient_pays: int
    entries: tuple[StoredSettlement, ...] = ()


@dataclass(frozen=True, slots=True)
class VoidOutcome:
    settlement: StoredSettlement | None  # None: nothing had settled; the msgid is now blocked
    replayed: bool


@dataclass(frozen=True, slots=True)
class Figures:
    """Settlements of one namespace, or of several (the sandboxes added up): counts by status and
    the money of those in force (fen)."""

    sessions: int = 0  # how many sandboxes these figures add up (0: the real ledger)
    counts: dict[str, int] = field(default_factory=dict)
    in_force: int = 0
    total: int = 0
    fund_pays: int = 0
    patient_pays: int = 0

    def plus(self, other: Figures) -> Figures:
        counts = dict(self.counts)
        for status, n in other.counts.items():
            counts[status] = counts.get(status, 0) + n
        return Figures(
            self.sessions + max(other.sessions, 1), counts, self.in_force + other.in_force,
            self.total + other.total, self.fund_pays + other.fund_pays, self.patient_pays + other.patient_pays,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class CheckReport:
    problems: list[str]
    counts: dict[str, int]  # settlements by status, every namespace
    schema_version: int
    # The real ledger (namespace "") and each sandbox apart; a session's owners (version 5 on).
    namespaces: dict[str, Figures] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    @property
    def real(self) -> Figures:
        return self.namespaces.get("", Figures())

    @property
    def sandboxes(self) -> Figures:
        total = Figures()
        for session, figures in self.namespaces.items():
            if session:
                total = total.plus(figures)
        return total


@dataclass(frozen=True, slots=True)
class Visit:
    """A national 2201 visit (就诊, mdtrt_id) as the ledger keeps it; settlement_status is
    '' before any settlement, else that of the settlement its 2207 msgid made."""

    institution_code: str
    mdtrt_id: str
    psn_no: str
    insutype: str
    begntime: str
    status: str  # registered | cancelled
    med_type: str
    dise_codg: str
    settle_msgid: str
    settlement_status: str  # '' | settled | reversed | voided


@dataclass(frozen=True, slots=True)
class FeeLine:
    """A national 2204 fee line (费用明细) as uploaded, money in fen."""

    feedetl_sn: str
    chrg_bchno: str
    med_list_codg: str
    medins_list_codg: str
    pric: int
    cnt: int
    amount: int


class LedgerNotAvailable(LedgerFileError):
    """A --db the factory knows but whose store this settlesim cannot open (the
    PostgreSQL store before it is built): refused in one line, not a traceback."""


# Checks `check_ledger` runs beside the store's own, one settlement at a time: its row
# (column -> value, figures None before schema version 2) and its fee-item rows; one line
# per problem (server/stored_answers.py decodes the stored answers this way).
AnswerCheck = Callable[[Mapping[str, Any], list[Mapping[str, Any]]], list[str]]


class NationalWrites(Protocol):
    """The national visit flow's writes, inside one ledger transaction of one session
    and institution (server/national/visits.py). Each refuses with a Refusal; a refusal
    rolls back everything of its transaction."""

    def register(self, psn_no: str, insutype: str, begntime: str) -> str:
        """2201 门诊挂号: a new visit; its mdtrt_id."""

    def cancel(self, mdtrt_id: str) -> None:
        """2202 挂号撤销: refused while a settlement of the visit is in force."""

    def describe(self, mdtrt_id: str, med_type: str, dise_codg: str, begntime: str) -> Visit:
        """2203 就诊信息上传: the visit's medical type, main diagnosis and date."""

    def upload(self, mdtrt_id: str, lines: list[FeeLine]) -> None:
        """2204 费用明细上传: a feedetl_sn already uploaded (and not cancelled) is refused."""

    def cancel_lines(self, mdtrt_id: str, chrg_bchno: str) -> int:
        """2205 费用明细撤销: the batch's lines ("0000": every line); how many."""

    def link(self, mdtrt_id: str, msgid: str) -> None:
        """The visit's settlement by its 2207 msgid (inside that settlement's transaction)."""

    def refuse_if_money_msgid(self, msgid: str) -> None:
        """MSGID_REUSED when a money call (settle, reverse, void) used `msgid`."""

    def refuse_if_visit_msgid(self, msgid: str) -> None:
        """MSGID_REUSED when a visit-flow call (2201-2205) used `msgid`."""


Compute = Callable[[YearlyTotals], "tuple[StoredSettlement, YearlyTotals]"]
OnSettled = Callable[[NationalWrites, "StoredSettlement"], None]


class LedgerStore(Protocol):
    """What may be asked of a ledger. Writes are atomic and durable once they return
    (group commit); `settle` runs the caller's pure `compute(totals)` inside the write
    transaction, so reading this year's totals, settling and updating them are one step."""

    # Bounds (fen) a store keeps so that nothing it accepts overflows int64 later.
    MAX_RECONCILE_ENTRIES: int
    MAX_PERSON_YEAR_FEN: int
    MAX_INSTITUTION_YEAR_FEN: int
    path: Path  # where it is (a file; a store on a server names its location)
    upgraded_from: int | None  # the schema version this process upgraded from; None: current
    # The audit log's (absolute path, head), committed with every write transaction.
    audit_head: Callable[[], tuple[str, AuditAnchor]] | None
    on_commit: Callable[[int, float], None] | None  # (writes, seconds) after each commit
    shared: bool  # other processes write it too (serve --processes)

    # --- money: settle (2207), reverse (2208), void (2601) --------------------------------
    def settle(
        self, session: str, msgid: str, institution_code: str, request_hash: str, person_no: str,
        disease_code: str, year: int, compute: Compute, on_settled: OnSettled | None = None,
    ) -> tuple[StoredSettlement, bool]: ...  # fmt: skip
    async def settle_async(
        self, session: str, msgid: str, institution_code: str, request_hash: str, person_no: str,
        disease_code: str, year: int, compute: Compute, on_settled: OnSettled | None = None,
    ) -> tuple[StoredSettlement, bool]: ...  # fmt: skip
    def reverse(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> tuple[StoredSettlement, bool]: ...
    async def reverse_async(
        self, session: str, msgid: str, institution_code: str, request_hash: str, settlement_id: str
    ) -> tuple[StoredSettlement, bool]: ...
    def void(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> VoidOutcome: ...
    async def void_async(
        self, session: str, msgid: str, institution_code: str, request_hash: str, original_msgid: str
    ) -> VoidOutcome: ...

    # --- reads ---------------------------------------------------------------------------
    def get(
        self, session: str, institution_code: str, settlement_id: str = "", msgid: str = ""
    ) -> StoredSettlement: ...
    def find_message(self, session: str, institution_code: str, msgid: str) -> tuple[str, str, str] | None: ...
    def reconcile(
        self, session: str, institution_code: str, start: date, end: date, with_entries: bool
    ) -> ReconcileSums: ...
    def session_settlements(self, session: str) -> list[StoredSettlement]: ...
    def yearly_totals(self, session: str, person_no: str, disease_code: str, year: int) -> YearlyTotals: ...
    def settlement_by_id(self, settlement_id: str) -> StoredSettlement | None:
        """Any session's settlement by id (the console's settlement page)."""
    def person_totals(self, session: str, person_no: str) -> list[tuple[str, int, int, int]]:
        """(disease, year, deductible used, fund paid) of a person, newest year first."""

    # --- sandboxes (server/sandboxes.py) --------------------------------------------------
    def session_group(self, session: str) -> frozenset[str] | None: ...
    def open_session(self, session: str, institutions: frozenset[str]) -> frozenset[str]: ...
    async def open_session_async(self, session: str, institutions: frozenset[str]) -> frozenset[str]: ...

    # --- the national visit flow (server/national/visits.py) --------------------------------
    def national_once(
        self, session: str, institution: str, msgid: str, infno: str, request_hash: str,
        work: Callable[[NationalWrites], dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        """`work(writes)` once per visit-flow msgid, in one transaction with the answer it
        gave; a retry of the same request answers the kept output."""
    def national_visit(self, session: str, institution: str, mdtrt_id: str) -> Visit: ...
    def national_fee_lines(self, session: str, institution: str, mdtrt_id: str) -> list[FeeLine]: ...

    # --- the audit log's anchor (server/audit.py) -------------------------------------------
    def anchor_audit(self) -> None: ...
    def audit_anchor(self, audit_path: str) -> AuditAnchor | None: ...
    def retire_audit_anchor(self, audit_path: str) -> None: ...

    # --- health, invariants, life ---------------------------------------------------------
    def watch_health(self, listener: Callable[[bool], None]) -> None: ...
    def queue_depth(self) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def check(self, answer_check: AnswerCheck | None = None) -> list[str]: ...
    def close(self) -> None: ...
