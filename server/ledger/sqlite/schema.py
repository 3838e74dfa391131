"""The SQLite ledger's schema: its tables by version (PRAGMA user_version,
SCHEMA_VERSION), and what tells a settlesim ledger of a version from any other file
(a server and `settlesim ledger check` refuse anything else with the same line)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from settlesim.server.ledger.contract import LedgerFileError

# PRAGMA user_version. 0: msgids keyed by (session, msgid), before versions;
# 1: keyed by (session, institution, msgid); 2: each settlement's figures and fee
# items as rows (a settlement from before 2 has NULL figures and no item rows);
# 3: the audit log's anchor (audit_anchors); 4: institution_totals, the running
# yearly total that bounds every Reconcile sum.
# 5: `sessions`, the institutions each sandbox belongs to (server/sandboxes.py).
# 6: the national door's visit flow (national_visits, national_fee_lines, national_answers).
# 7: the fund breakdown and the personal account: five settlement columns (FUND_COLUMNS, NULL
#    before) and four yearly counters (COUNTER_COLUMNS, 0 before).
# 8: no index settlements_by_msgid: a settlement is found by its msgid through messages' key,
#    which every settle writes anyway (the index cost a random page a settle in every COMMIT).
# 9: messages and settlement_items are rowid tables (they were WITHOUT ROWID), and
#    settlement_items has no key: a settle's rows append where the batch's other rows go,
#    and messages' random page a settle is a narrow index entry instead of the whole row
#    (the frames a COMMIT writes: docs/performance.md, "The ledger's write path (session 11)").
# 10: the CHECKs of messages.kind and settlements.status are comparisons joined by OR, not IN
#    lists: SQLite builds a temporary b-tree of an IN list's values each time a statement
#    checks one, which cost every settle a sixth of its SQL on the loop (IN_LIST_CHECKS).
SCHEMA_VERSION = 10

# Version 9's CHECKs and version 10's, the same constraint (docs/ledger.md, versions).
IN_LIST_CHECKS = {
    "messages": (
        "CHECK (kind IN ('settle', 'reverse', 'void', 'blocked'))",
        "CHECK (kind = 'settle' OR kind = 'reverse' OR kind = 'void' OR kind = 'blocked')",
    ),
    "settlements": (
        "CHECK (status IN ('settled', 'reversed', 'voided'))",
        "CHECK (status = 'settled' OR status = 'reversed' OR status = 'voided')",
    ),
}

# Every msgid the platform has seen: settle, reverse, void, and 'blocked' for an
# original msgid voided before it ever settled. A msgid is its sender's message id
# (报文ID): each institution has its own namespace of them. The columns keep the
# order of version 0, only the key changed. From version 9 a rowid table: the rows
# append in the order they come (a batch's share pages) and the key is an index of its
# own (sqlite_autoindex_messages_1), whose entries are a third of a row's width, so the
# random leaf each settle dirties there splits a third as often (WITHOUT ROWID kept the
# whole row in the key's b-tree, its interior pages too).
MESSAGES = """
CREATE TABLE IF NOT EXISTS {table} (
    session          TEXT NOT NULL,
    msgid            TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind = 'settle' OR kind = 'reverse' OR kind = 'void' OR kind = 'blocked'),
    institution_code TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    settlement_id    TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, msgid)
)"""

# 费用明细 as settled (version 2): the fee line and the parts the rules gave it, fen. From
# version 9 a rowid table without a key: a settle's lines append after the batch's others
# (a WITHOUT ROWID key of (settlement_id, sequence_no) split its right edge over three
# pages every few batches). Nothing looks a settlement's lines up (answers are stored
# whole); `ledger check` reads them all, sorted, and `ledger copy` all of them; validation
# refuses a request that repeats a sequence number (validation.py), so none is stored twice.
SETTLEMENT_ITEMS = """
CREATE TABLE IF NOT EXISTS {table} (
    settlement_id      TEXT NOT NULL,
    sequence_no        TEXT NOT NULL,
    catalog_code       TEXT NOT NULL,
    hospital_item_code TEXT NOT NULL,
    unit_price         INTEGER NOT NULL,
    quantity           INTEGER NOT NULL,
    amount             INTEGER NOT NULL,
    catalog_class      TEXT NOT NULL,
    self_pay_share_bp  INTEGER NOT NULL,
    price_ceiling      INTEGER,
    full_self_pay      INTEGER NOT NULL,
    over_ceiling       INTEGER NOT NULL,
    pre_self_pay       INTEGER NOT NULL,
    in_scope           INTEGER NOT NULL
)"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS settlements (
    settlement_id      TEXT PRIMARY KEY,
    session            TEXT NOT NULL,
    msgid              TEXT NOT NULL,
    institution_code   TEXT NOT NULL,
    person_no          TEXT NOT NULL,
    disease_code       TEXT NOT NULL,
    visit_date         TEXT NOT NULL,
    year               INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status = 'settled' OR status = 'reversed' OR status = 'voided'),
    total              INTEGER NOT NULL,
    fund_pays          INTEGER NOT NULL,
    patient_pays       INTEGER NOT NULL,
    deductible_applied INTEGER NOT NULL,
    undone_by_msgid    TEXT NOT NULL DEFAULT '',
    created_at         TEXT NOT NULL,
    answer             BLOB NOT NULL,
    -- version 2 (ALTER TABLE appends them, so new files put them last too)
    full_self_pay      INTEGER,
    over_ceiling       INTEGER,
    pre_self_pay       INTEGER,
    in_scope           INTEGER,
    ratio_bp           INTEGER,
    -- version 7: the funds after the pooled one and the personal account (NULL before)
    pooled_pays        INTEGER,
    serious_threshold  INTEGER,
    serious_pays       INTEGER,
    assistance_pays    INTEGER,
    account_pays       INTEGER
);
CREATE INDEX IF NOT EXISTS settlements_by_institution
    ON settlements (session, institution_code, visit_date);

CREATE TABLE IF NOT EXISTS yearly_totals (
    session         TEXT NOT NULL,
    person_no       TEXT NOT NULL,
    disease_code    TEXT NOT NULL,
    year            INTEGER NOT NULL,
    deductible_used INTEGER NOT NULL,
    fund_paid       INTEGER NOT NULL,
    -- version 7: each fund's and the personal account's yearly counters
    serious_threshold_used INTEGER NOT NULL DEFAULT 0,
    serious_paid           INTEGER NOT NULL DEFAULT 0,
    assistance_paid        INTEGER NOT NULL DEFAULT 0,
    account_paid           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session, person_no, disease_code, year)
) WITHOUT ROWID;
{MESSAGES.format(table="messages")};

{SETTLEMENT_ITEMS.format(table="settlement_items")};

-- The audit log's head as of the last commit (version 3, server/audit.py): records,
-- bytes and the digest of its last record. audit_path is the file's absolute path,
-- renamed '<path> retired <time>' when a new chain is started there (--audit-new-chain).
CREATE TABLE IF NOT EXISTS audit_anchors (
    audit_path TEXT PRIMARY KEY,
    records    INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    head       TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;

-- version 4: the total of an institution's settlements in force per visit year,
-- kept in the settle transaction and bounded (Ledger.MAX_INSTITUTION_YEAR_FEN) so that
-- no Reconcile sum can overflow.
CREATE TABLE IF NOT EXISTS institution_totals (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    year             INTEGER NOT NULL,
    total            INTEGER NOT NULL,
    PRIMARY KEY (session, institution_code, year)
) WITHOUT ROWID;

-- version 5: each x-settlesim-session sandbox and the institutions it belongs to (sorted codes,
-- comma-separated), recorded by its first write.
CREATE TABLE IF NOT EXISTS sessions (
    session      TEXT PRIMARY KEY,
    institutions TEXT NOT NULL,
    created_at   TEXT NOT NULL
) WITHOUT ROWID;

-- version 6: the national door's visit flow (server/national/visits.py). A 2201
-- visit (就诊, mdtrt_id) and what 2203 told of it: settle_msgid is the 2207 msgid of
-- its latest settlement (written in that settlement's transaction).
CREATE TABLE IF NOT EXISTS national_visits (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    mdtrt_id         TEXT NOT NULL,
    psn_no           TEXT NOT NULL,
    insutype         TEXT NOT NULL,
    begntime         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('registered', 'cancelled')),
    med_type         TEXT NOT NULL DEFAULT '',
    dise_codg        TEXT NOT NULL DEFAULT '',
    settle_msgid     TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, mdtrt_id)
) WITHOUT ROWID;
-- 2204 fee lines (费用明细) as uploaded, money in fen (2205 marks them cancelled).
CREATE TABLE IF NOT EXISTS national_fee_lines (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    mdtrt_id         TEXT NOT NULL,
    feedetl_sn       TEXT NOT NULL,
    chrg_bchno       TEXT NOT NULL,
    med_list_codg    TEXT NOT NULL,
    medins_list_codg TEXT NOT NULL,
    pric             INTEGER NOT NULL,
    cnt              INTEGER NOT NULL,
    amount           INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('uploaded', 'cancelled')),
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, mdtrt_id, feedetl_sn)
) WITHOUT ROWID;
-- The answer each national visit-flow msgid (2201-2205) got: a retry with the same
-- msgid and request gets it again (the money calls use messages, as gRPC does).
CREATE TABLE IF NOT EXISTS national_answers (
    session          TEXT NOT NULL,
    institution_code TEXT NOT NULL,
    msgid            TEXT NOT NULL,
    infno            TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    output           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, msgid)
) WITHOUT ROWID;
"""
INSTITUTION_TOTALS_FROM_SETTLEMENTS = (
    "INSERT INTO institution_totals SELECT session, institution_code, year, SUM(total) FROM settlements "
    "WHERE status = 'settled' GROUP BY session, institution_code, year"
)
FIGURE_COLUMNS = ("full_self_pay", "over_ceiling", "pre_self_pay", "in_scope", "ratio_bp")
FUND_COLUMNS = ("pooled_pays", "serious_threshold", "serious_pays", "assistance_pays", "account_pays")
COUNTER_COLUMNS = ("serious_threshold_used", "serious_paid", "assistance_paid", "account_paid")

# The columns `settlesim ledger check` needs before it calls a file a ledger.
LEDGER_COLUMNS = {
    "settlements": {
        "settlement_id", "session", "msgid", "institution_code", "person_no", "disease_code",
        "visit_date", "year", "status", "total", "fund_pays", "patient_pays", "deductible_applied",
        "undone_by_msgid",
    },
    "yearly_totals": {"session", "person_no", "disease_code", "year", "deductible_used", "fund_paid"},
    "messages": {"session", "msgid", "kind", "institution_code", "request_hash", "settlement_id"},
}  # fmt: skip


def user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def table_exists(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def index_exists(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)).fetchone() is not None


def without_rowid(db: sqlite3.Connection, table: str) -> bool:
    """Whether `table` was made WITHOUT ROWID (messages and settlement_items before version 9)."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return row is not None and "WITHOUT ROWID" in row[0].upper()


def in_list_checks(db: sqlite3.Connection) -> list[str]:
    """The tables whose CHECK is still version 9's IN list (IN_LIST_CHECKS)."""
    found = []
    for table, (before, _after) in IN_LIST_CHECKS.items():
        row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if row is not None and before in row[0]:
            found.append(table)
    return found


def tables_version(db: sqlite3.Connection) -> int | None:
    """The schema version the ledger's tables are, whatever user_version says;
    None when none of them exists."""
    if not any(table_exists(db, table) for table in LEDGER_COLUMNS):
        return None
    if table_exists(db, "national_visits"):
        settlement_columns = {row[1] for row in db.execute("PRAGMA table_info(settlements)")}
        if "pooled_pays" not in settlement_columns:
            return 6
        if index_exists(db, "settlements_by_msgid"):
            return 7
        if without_rowid(db, "messages"):
            return 8
        return 9 if in_list_checks(db) else 10
    if table_exists(db, "sessions"):
        return 5
    if table_exists(db, "institution_totals"):
        return 4
    if table_exists(db, "audit_anchors"):
        return 3
    columns = {row[1] for row in db.execute("PRAGMA table_info(settlements)")}
    if table_exists(db, "settlement_items") or "full_self_pay" in columns:
        return 2
    key = {row[1] for row in db.execute("PRAGMA table_info(messages)") if row[5]}
    return 1 if "institution_code" in key else 0


EMPTY = (
    "{path} is not a settlesim ledger: it is empty (0 bytes); if it held settlements, restore it "
    "from a backup; to start a new ledger, delete it"
)


def statements(script: str) -> list[str]:
    """The statements of a script, to run one by one inside a transaction
    (sqlite3's executescript would COMMIT first)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def require_ledger(db: sqlite3.Connection, path: Path, version: int) -> None:
    """A settlesim ledger whose tables are those of its user_version (a server
    and `ledger check` refuse anything else with the same line)."""
    if version > SCHEMA_VERSION:
        present = tables_version(db)
        hint = (
            f" (its tables are those of version {present}: if no newer settlesim wrote it, "
            "its header is damaged)"
            if present is not None
            else ""
        )
        raise LedgerFileError(
            f"{path}: its header says schema user_version {version}, newer than this settlesim "
            f"knows ({SCHEMA_VERSION}); upgrade settlesim{hint}"
        )
    for table, columns in LEDGER_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise LedgerFileError(f"{path} is not a settlesim ledger: it has no table {table}")
        if missing := columns - have:
            raise LedgerFileError(
                f"{path} is not a settlesim ledger: table {table} has no column {', '.join(sorted(missing))}"
            )
    present = tables_version(db)
    if present != version:
        raise LedgerFileError(
            f"{path}: its header says schema user_version {version} but its tables are those of "
            f"version {present}: the header was changed or damaged; restore the file from a backup "
            f"(or, if you know its tables are sound, set PRAGMA user_version = {present})"
        )

