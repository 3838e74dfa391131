"""Schema version 0 -> 1: ledgers written before msgids were per institution
(messages keyed by (session, msgid)) are re-keyed by (session, institution_code,
msgid) the first time a server opens them: once, in one write transaction, even
when several server processes open the file at the same moment, and without
losing a row (an acknowledged settlement above all)."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
from contextlib import closing
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from conftest import CANCER_HOSPITAL, FUWAI
from settlesim.server.ledger import AuditAnchor, LedgerFileError, StoredItem, StoredSettlement
from settlesim.server.ledger.sqlite import SCHEMA_VERSION, check_file, migrations, read_audit_anchors, schema
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.model import YearlyTotals
from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.v1 import settlement_service_pb2 as pb

# The schema as released before versions (server/ledger.py at 5d13505), verbatim.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS settlements (
    settlement_id      TEXT PRIMARY KEY,
    session            TEXT NOT NULL,
    msgid              TEXT NOT NULL,
    institution_code   TEXT NOT NULL,
    person_no          TEXT NOT NULL,
    disease_code       TEXT NOT NULL,
    visit_date         TEXT NOT NULL,
    year               INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('settled', 'reversed', 'voided')),
    total              INTEGER NOT NULL,
    fund_pays          INTEGER NOT NULL,
    patient_pays       INTEGER NOT NULL,
    deductible_applied INTEGER NOT NULL,
    undone_by_msgid    TEXT NOT NULL DEFAULT '',
    created_at         TEXT NOT NULL,
    answer             BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS settlements_by_institution
    ON settlements (session, institution_code, visit_date);
CREATE INDEX IF NOT EXISTS settlements_by_msgid ON settlements (session, msgid);

CREATE TABLE IF NOT EXISTS yearly_totals (
    session         TEXT NOT NULL,
    person_no       TEXT NOT NULL,
    disease_code    TEXT NOT NULL,
    year            INTEGER NOT NULL,
    deductible_used INTEGER NOT NULL,
    fund_paid       INTEGER NOT NULL,
    PRIMARY KEY (session, person_no, disease_code, year)
) WITHOUT ROWID;

-- Every msgid the platform has seen: settle, reverse, void, and 'blocked' for an
-- original msgid voided before it ever settled.
CREATE TABLE IF NOT EXISTS messages (
    session          TEXT NOT NULL,
    msgid            TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('settle', 'reverse', 'void', 'blocked')),
    institution_code TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    settlement_id    TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, msgid)
) WITHOUT ROWID;
"""

QINGHAI, TUMOUR = "63000000000000000009", "M00503"
DATONG, HYPERTENSION = "14020000000000000001", "M03900"
AT = "2025-01-01T00:00:00.000000+00:00"
# (settlement_id, session, msgid, institution, person, disease, visit, status, total, fund, patient,
#  deductible, undone_by): a sound ledger as the old code wrote it.
SETTLEMENTS = [
    ("S1", "", "M1", CANCER_HOSPITAL, QINGHAI, TUMOUR, "2024-03-01", "settled", 9000, 4000, 5000, 5000, ""),
    ("S2", "", "M2", CANCER_HOSPITAL, QINGHAI, TUMOUR, "2024-04-01", "reversed", 3000, 3000, 0, 0, "R1"),
    ("S3", "", "M3", CANCER_HOSPITAL, QINGHAI, TUMOUR, "2024-05-01", "voided", 2000, 2000, 0, 0, "V1"),
    ("S4", "", "F1", FUWAI, DATONG, HYPERTENSION, "2025-02-01", "settled", 30000, 12000, 18000, 10000, ""),
    ("S5", "sandbox", "M1", CANCER_HOSPITAL, QINGHAI, TUMOUR, "2024-03-01", "settled", 9000, 4000, 5000, 5000, ""),
]  # fmt: skip
MESSAGES = [  # (session, msgid, kind, institution, request_hash, settlement_id)
    ("", "M1", "settle", CANCER_HOSPITAL, "h-M1", "S1"),
    ("", "M2", "settle", CANCER_HOSPITAL, "h-M2", "S2"),
    ("", "R1", "reverse", CANCER_HOSPITAL, "h-R1", "S2"),
    ("", "M3", "settle", CANCER_HOSPITAL, "h-M3", "S3"),
    ("", "V1", "void", CANCER_HOSPITAL, "h-V1", "S3"),
    ("", "M4", "blocked", CANCER_HOSPITAL, "", ""),  # voided (V2) before it ever settled
    ("", "V2", "void", CANCER_HOSPITAL, "h-V2", "-"),
    ("", "F1", "settle", FUWAI, "h-F1", "S4"),
    ("sandbox", "M1", "settle", CANCER_HOSPITAL, "h-M1", "S5"),
]
YEARLY = [
    ("", QINGHAI, TUMOUR, 2024, 5000, 4000),
    ("", DATONG, HYPERTENSION, 2025, 10000, 12000),
    ("sandbox", QINGHAI, TUMOUR, 2024, 5000, 4000),
]


def answer_of(sid, _session, msgid, institution, person, disease, visit, _status, total, fund, patient, ded, _by):
    """The answer a settlement of the old code returned (what `ledger check` decodes)."""
    totals = pb.SettlementTotals(
        total_fen=total, fund_pays_fen=fund, patient_pays_fen=patient, deductible_applied_fen=ded
    )
    return pb.Settlement(
        settlement_id=sid, msgid=msgid, institution_code=institution, person_no=person,
        disease_code=disease, visit_date=visit, totals=totals,
    ).SerializeToString()  # fmt: skip


def old_ledger(folder: Path) -> Path:
    """A version-0 ledger as a server leaves it when killed: WAL mode, every
    committed row still in the -wal file (never checkpointed into the main file)."""
    live = folder / "live"
    live.mkdir()
    db = sqlite3.connect(live / "ledger.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(OLD_SCHEMA)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema in the main file, the rows only in the WAL
    for s in SETTLEMENTS:
        db.execute(
            "INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*s[:7], int(s[6][:4]), *s[7:], AT, answer_of(*s)),
        )
    for m in MESSAGES:
        db.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", (*m, AT))
    for y in YEARLY:
        db.execute("INSERT INTO yearly_totals VALUES (?, ?, ?, ?, ?, ?)", y)
    crashed = folder / "crashed.db"
    shutil.copy(live / "ledger.db", crashed)  # a copy taken while the server was up = a crash
    shutil.copy(live / "ledger.db-wal", f"{crashed}-wal")
    db.close()
    return crashed


def read_only(path: Path, *flags: str) -> sqlite3.Connection:
    """A connection that cannot checkpoint the WAL away (the fixture's crash state stays)."""
    return sqlite3.connect(f"file:{path}?" + "&".join(("mode=ro", *flags)), uri=True)


# The columns of version 0; later versions only add to them.
V0_COLUMNS = {
    "settlements": "settlement_id, session, msgid, institution_code, person_no, disease_code, visit_date, "
    "year, status, total, fund_pays, patient_pays, deductible_applied, undone_by_msgid, created_at, answer",
    "messages": "session, msgid, kind, institution_code, request_hash, settlement_id, created_at",
    "yearly_totals": "session, person_no, disease_code, year, deductible_used, fund_paid",
}


def rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(read_only(path)) as db:
        return {
            t: sorted(db.execute(f"SELECT {columns} FROM {t}").fetchall())
            for t, columns in V0_COLUMNS.items()
        }


def layout(path: Path) -> tuple[int, list[str], list[str]]:
    """(user_version, messages' key columns in order, settlements_by_msgid's columns: none from 8)."""
    with closing(read_only(path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        key = [
            name for pk, name in sorted((r[5], r[1]) for r in db.execute("PRAGMA table_info(messages)")) if pk
        ]
        index = [r[2] for r in db.execute("PRAGMA index_info(settlements_by_msgid)")]
    return version, key, index


def settle(ledger: Ledger, msgid: str, institution: str, settlement_id: str) -> tuple[StoredSettlement, bool]:
    """A 1000-fen class-A visit, all of it the fund's (the deductible is met)."""

    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        stored = StoredSettlement(
            settlement_id, "", msgid, institution, QINGHAI, TUMOUR, date(2024, 6, 1), 1000, 1000, 0, 0, b"new"
        )
        return stored, YearlyTotals(totals.deductible_used, totals.fund_paid + 1000)

    return ledger.settle("", msgid, institution, f"h-{msgid}", QINGHAI, TUMOUR, 2024, compute)


def test_the_fixture_is_a_sound_version_0_ledger(tmp_path):
    old = old_ledger(tmp_path)
    report = check_file(old)
    assert (report.problems, report.counts, report.schema_version) == (
        [],
        {"settled": 3, "reversed": 1, "voided": 1},
        0,
    )
    assert layout(old) == (0, ["session", "msgid"], ["session", "msgid"])


def test_upgrade_keeps_every_row_and_rekeys_messages(tmp_path):
    old = old_ledger(tmp_path)
    before = rows(old)
    assert len(before["messages"]) == len(MESSAGES) and len(before["settlements"]) == len(SETTLEMENTS)
    with closing(read_only(old, "immutable=1")) as main_file_only:  # the WAL unread
        assert main_file_only.execute("SELECT COUNT(*) FROM settlements").fetchone() == (0,)

    ledger = Ledger(old)
    try:
        assert ledger.upgraded_from == 0
        assert rows(old) == before  # every settlement, message and yearly total, byte for byte
        # Version 2's figures are unknown (NULL) for settlements made before it, with no item rows.
        with closing(read_only(old)) as db:
            assert db.execute(
                "SELECT COUNT(*) FROM settlements WHERE full_self_pay IS NULL AND over_ceiling IS NULL "
                "AND pre_self_pay IS NULL AND in_scope IS NULL AND ratio_bp IS NULL"
            ).fetchone() == (len(SETTLEMENTS),)
            assert db.execute("SELECT COUNT(*) FROM settlement_items").fetchone() == (0,)
        # Version 8 has no index on settlements by msgid: the messages' key finds them.
        assert layout(old) == (SCHEMA_VERSION, ["session", "institution_code", "msgid"], [])
        assert ledger.check() == []
        # The old messages still answer as before, each in its sender's namespace now.
        assert settle(ledger, "M1", CANCER_HOSPITAL, "unused") == (
            ledger.get("", CANCER_HOSPITAL, "S1"),
            True,
        )
        with pytest.raises(Refusal) as refused:
            settle(ledger, "M4", CANCER_HOSPITAL, "unused")
        assert refused.value.reason == Reason.MSGID_VOIDED
        assert ledger.find_message("", CANCER_HOSPITAL, "R1") == ("reverse", "h-R1", "S2")
        assert ledger.get("", FUWAI, msgid="F1").settlement_id == "S4"
        # M4 was blocked for the Cancer Hospital only, and M1 is the Cancer Hospital's only.
        assert settle(ledger, "M4", FUWAI, "S6")[1] is False
        assert settle(ledger, "M1", FUWAI, "S7")[1] is False
        assert ledger.get("", FUWAI, msgid="M1").settlement_id == "S7"
        assert ledger.get("", CANCER_HOSPITAL, msgid="M1").settlement_id == "S1"
        assert ledger.check() == []
    finally:
        ledger.close()
    again = Ledger(old)
    try:
        assert again.upgraded_from is None  # once
    finally:
        again.close()


def test_a_failed_upgrade_changes_nothing(tmp_path, monkeypatch):
    old = old_ledger(tmp_path)
    before = rows(old)
    rekey = migrations._rekey_messages

    def rekey_then_fail(db: sqlite3.Connection) -> None:
        rekey(db)
        raise OSError("disk full")

    monkeypatch.setattr(migrations, "_rekey_messages", rekey_then_fail)
    with pytest.raises(OSError, match="disk full"):
        Ledger(old)
    assert layout(old) == (0, ["session", "msgid"], ["session", "msgid"])
    assert rows(old) == before
    monkeypatch.undo()
    ledger = Ledger(old)  # and the next start upgrades it
    try:
        assert ledger.upgraded_from == 0 and ledger.check() == []
    finally:
        ledger.close()
    assert rows(old) == before


def test_a_ledger_newer_than_the_code_is_refused(tmp_path):
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerFileError, match="newer than this settlesim"):
        Ledger(path)


def _open(path: Path, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        ledger = Ledger(path)
        results.put(("opened", ledger.upgraded_from))
        ledger.close()
    except Exception as error:  # reported to the parent, which asserts there were none
        results.put(("failed", repr(error)))


@pytest.mark.parametrize("processes", [2, 6])
def test_processes_opening_an_old_ledger_at_once_upgrade_it_once(tmp_path, processes):
    """`serve --processes N` on a version-0 file: all start, exactly one upgrades,
    the others wait for its transaction and find the version current."""
    context = multiprocessing.get_context("fork")
    for round_no in range(4):
        folder = tmp_path / f"round{round_no}"
        folder.mkdir()
        old = old_ledger(folder)
        before = rows(old)
        barrier, results = context.Barrier(processes), context.Queue()
        started = [context.Process(target=_open, args=(old, barrier, results)) for _ in range(processes)]
        for process in started:
            process.start()
        for process in started:
            process.join(60)
        assert [p.exitcode for p in started] == [0] * processes
        outcomes = sorted((results.get(timeout=5) for _ in range(processes)), key=repr)
        assert outcomes == sorted([("opened", 0)] + [("opened", None)] * (processes - 1), key=repr)
        assert rows(old) == before
        assert layout(old)[0] == SCHEMA_VERSION
        assert check_file(old).problems == []


def test_a_version_1_ledger_gains_the_figure_columns_and_item_rows(tmp_path):
    """Version 1 -> 2 only adds: the messages (already per institution) are left
    as they are, the old settlements get NULL figures, and a new settlement is
    written with its figures and one row per fee item."""
    old = old_ledger(tmp_path)
    with closing(sqlite3.connect(old, isolation_level=None)) as db:  # make it what version 1 left
        db.execute("BEGIN IMMEDIATE")
        migrations._rekey_messages(db)
        db.execute("PRAGMA user_version = 1")
        db.execute("COMMIT")
    before = rows(old)
    ledger = Ledger(old)
    try:
        assert ledger.upgraded_from == 1
        assert rows(old) == before
        assert layout(old)[0] == SCHEMA_VERSION
        item = StoredItem("0001", "A-CONSULT-001", "HIS-1", 500, 2, 1000, "A", 0, None, 0, 0, 0, 1000)

        def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
            stored = StoredSettlement(
                "S9", "", "M9", CANCER_HOSPITAL, QINGHAI, TUMOUR, date(2024, 6, 1), 1000, 1000, 0, 0, b"new",
                full_self_pay=0, over_ceiling=0, pre_self_pay=0, in_scope=1000, ratio_bp=10000, items=(item,),
            )  # fmt: skip
            return stored, YearlyTotals(totals.deductible_used, totals.fund_paid + 1000)

        ledger.settle("", "M9", CANCER_HOSPITAL, "h-M9", QINGHAI, TUMOUR, 2024, compute)
        assert ledger.check() == []
        with closing(read_only(old)) as db:
            assert db.execute(
                "SELECT in_scope, ratio_bp FROM settlements WHERE settlement_id = 'S9'"
            ).fetchone() == (
                1000,
                10000,
            )
            assert db.execute(
                "SELECT settlement_id, sequence_no, amount FROM settlement_items"
            ).fetchall() == [("S9", "0001", 1000)]
    finally:
        ledger.close()


def test_a_version_2_ledger_gains_the_audit_anchors_and_keeps_every_row(tmp_path):
    """Version 2 -> 3 only adds the audit_anchors table (server/audit.py): a
    version-2 file has no anchor, and its rows stay as they were."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    settle(ledger, "M1", CANCER_HOSPITAL, "S1")
    ledger.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # make it what version 2 left
        db.execute("DROP TABLE audit_anchors")
        db.execute("DROP TABLE institution_totals")
        db.execute("DROP TABLE sessions")  # version 5's
        for table in VERSION_6_TABLES:
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 2")
    assert read_audit_anchors(path) == {}
    before = rows(path)
    ledger = Ledger(path)
    try:
        assert ledger.upgraded_from == 2 and layout(path)[0] == SCHEMA_VERSION
        assert rows(path) == before and ledger.check() == []
        assert ledger.audit_anchor("/var/log/audit.jsonl") is None
        ledger.audit_head = lambda: ("/var/log/audit.jsonl", AuditAnchor(2, 300, "ab" * 32))
        ledger.anchor_audit()
    finally:
        ledger.close()
    assert read_audit_anchors(path) == {
        "/var/log/audit.jsonl": AuditAnchor(2, 300, "ab" * 32)
    }


def test_a_session_used_before_version_4_belongs_to_the_institutions_that_used_it(tmp_path):
    """The upgrade to version 4 records each sandbox's owners from its messages: the fixture's "sandbox"
    holds only the Cancer Hospital's M1, so it is the Cancer Hospital's, and nobody else's."""
    old = old_ledger(tmp_path)
    ledger = Ledger(old)
    try:
        assert ledger.session_group("sandbox") == frozenset({CANCER_HOSPITAL})
        assert ledger.session_group("") is None  # the real ledger is no sandbox
        assert ledger.open_session("sandbox", frozenset({FUWAI})) == frozenset({CANCER_HOSPITAL})
        assert ledger.check() == []
    finally:
        ledger.close()
    assert check_file(old).owners == {"sandbox": CANCER_HOSPITAL}


def test_a_version_4_ledger_gains_the_owners_of_its_sessions(tmp_path):
    """Version 4 -> 5 only adds `sessions`, filled from the messages each session holds."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    try:
        ledger.void("replay-1", "V1", FUWAI, "h-V1", "NEVER-SENT")  # a message in a session
    finally:
        ledger.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # make it what version 4 left
        db.execute("DROP TABLE sessions")
        for table in VERSION_6_TABLES:  # version 6's
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 4")
    before = rows(path)
    ledger = Ledger(path)
    try:
        assert ledger.upgraded_from == 4 and rows(path) == before
        assert ledger.session_group("replay-1") == frozenset({FUWAI}) and ledger.check() == []
    finally:
        ledger.close()


VERSION_6_TABLES = ("national_visits", "national_fee_lines", "national_answers")


def test_a_version_5_ledger_gains_the_national_visit_tables_and_keeps_every_row(tmp_path):
    """Version 5 -> 6 only adds the national door's visit-flow tables: the rows of a
    version-5 file stay as they were, and the new tables start empty."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    settle(ledger, "M1", CANCER_HOSPITAL, "S1")
    ledger.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # make it what version 5 left
        for table in VERSION_6_TABLES:
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 5")
    before = rows(path)
    ledger = Ledger(path)
    try:
        assert ledger.upgraded_from == 5 and layout(path)[0] == SCHEMA_VERSION == 10
        assert rows(path) == before and ledger.check() == []
        with closing(sqlite3.connect(path)) as db:  # beside the open ledger (WAL)
            for table in VERSION_6_TABLES:
                assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)
    finally:
        ledger.close()


def version_7_of(path: Path) -> None:
    """Make a current ledger what version 7 left: its index of settlements by msgid."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE INDEX settlements_by_msgid ON settlements (session, msgid, institution_code)")
        db.execute("PRAGMA user_version = 7")


def test_a_version_7_ledger_loses_the_msgid_index_and_finds_settlements_by_msgid_as_before(tmp_path):
    """Version 7 -> 8 drops settlements_by_msgid (a random index page written by every settle):
    every row stays, and a settlement is found by its msgid through its settle message, voided
    ones too, while a blocked msgid (voided before it settled) still finds none."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    settle(ledger, "M1", CANCER_HOSPITAL, "S1")
    settle(ledger, "M2", FUWAI, "S2")
    ledger.void("", "V1", FUWAI, "h-V1", "M2")
    ledger.void("", "V2", CANCER_HOSPITAL, "h-V2", "NEVER-SENT")
    ledger.close()
    version_8_of(path)
    version_7_of(path)
    before = rows(path)
    assert layout(path) == (7, ["session", "institution_code", "msgid"], ["session", "msgid", "institution_code"])
    ledger = Ledger(path)
    try:
        assert ledger.upgraded_from == 7
        assert layout(path) == (SCHEMA_VERSION, ["session", "institution_code", "msgid"], [])
        assert rows(path) == before and ledger.check() == []
        assert ledger.get("", CANCER_HOSPITAL, msgid="M1").settlement_id == "S1"
        voided = ledger.get("", FUWAI, msgid="M2")
        assert (voided.settlement_id, voided.status) == ("S2", "voided")
        for institution, msgid in ((CANCER_HOSPITAL, "NEVER-SENT"), (FUWAI, "M1"), (CANCER_HOSPITAL, "V2")):
            with pytest.raises(Refusal) as refused:  # blocked, another's msgid, a void's own msgid
                ledger.get("", institution, msgid=msgid)
            assert refused.value.reason == Reason.SETTLEMENT_NOT_FOUND
    finally:
        ledger.close()


def test_the_msgid_index_tells_versions_7_and_8_apart(tmp_path):
    """A header that says 8 on version 7's tables, or 7 on version 8's, is refused naming both."""
    seven, eight = tmp_path / "seven.db", tmp_path / "eight.db"
    for path in (seven, eight):
        ledger = Ledger(path)
        settle(ledger, "M1", CANCER_HOSPITAL, "S1")
        ledger.close()
        version_8_of(path)  # the tables of version 8 (version 9 changed two of them)
    version_7_of(seven)
    with closing(sqlite3.connect(seven, isolation_level=None)) as db:
        db.execute("PRAGMA user_version = 8")
    with closing(sqlite3.connect(eight, isolation_level=None)) as db:
        db.execute("PRAGMA user_version = 7")
    for path, header, tables in ((seven, 8, 7), (eight, 7, 8)):
        with pytest.raises(LedgerFileError) as refused:
            Ledger(path)
        assert f"user_version {header} but its tables are those of version {tables}" in str(refused.value)


# Version 8's two WITHOUT ROWID tables that version 9 makes rowid tables (server/ledger/sqlite/
# schema.py at af410c5), verbatim.
VERSION_8_TABLES = {
    "messages": """
CREATE TABLE {table} (
    session          TEXT NOT NULL,
    msgid            TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('settle', 'reverse', 'void', 'blocked')),
    institution_code TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    settlement_id    TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    PRIMARY KEY (session, institution_code, msgid)
) WITHOUT ROWID""",
    "settlement_items": """
CREATE TABLE {table} (
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
    in_scope           INTEGER NOT NULL,
    PRIMARY KEY (settlement_id, sequence_no)
) WITHOUT ROWID""",
}


def two_settles_one_voided(path: Path) -> Path:
    """A current ledger at `path` with settlements S1 and S2 (two fee lines each), S2 voided."""
    ledger = Ledger(path)
    settle_with_lines(ledger, "M1", "S1")
    settle_with_lines(ledger, "M2", "S2")
    ledger.void("", "V1", CANCER_HOSPITAL, "h-V1", "M2")
    ledger.close()
    return path


def version_8_of(path: Path) -> None:
    """Make a current ledger what version 8 left: messages and settlement_items WITHOUT ROWID."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        for table, layout_8 in VERSION_8_TABLES.items():
            db.execute(layout_8.format(table=f"{table}_8"))
            db.execute(f"INSERT INTO {table}_8 SELECT * FROM {table}")
            db.execute(f"DROP TABLE {table}")
            db.execute(f"ALTER TABLE {table}_8 RENAME TO {table}")
        db.execute("PRAGMA user_version = 8")
        db.execute("COMMIT")


def settle_with_lines(ledger: Ledger, msgid: str, settlement_id: str) -> tuple[StoredSettlement, bool]:
    """A 1000-fen visit of two class-A lines (400 + 600), all of it the fund's."""
    lines = tuple(
        StoredItem(no, "A-CONSULT-001", f"HIS-{no}", fen, 1, fen, "A", 0, None, 0, 0, 0, fen)
        for no, fen in (("0001", 400), ("0002", 600))
    )

    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        stored = StoredSettlement(
            settlement_id, "", msgid, CANCER_HOSPITAL, QINGHAI, TUMOUR, date(2024, 6, 1), 1000, 1000, 0, 0,
            b"new", full_self_pay=0, over_ceiling=0, pre_self_pay=0, in_scope=1000, ratio_bp=10000, items=lines,
        )  # fmt: skip
        return stored, YearlyTotals(totals.deductible_used, totals.fund_paid + 1000)

    return ledger.settle("", msgid, CANCER_HOSPITAL, f"h-{msgid}", QINGHAI, TUMOUR, 2024, compute)


def item_rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(read_only(path)) as db:
        return sorted(db.execute("SELECT * FROM settlement_items").fetchall())


def test_a_version_8_ledger_gets_rowid_messages_and_items_and_keeps_every_row(tmp_path):
    """Version 8 -> 9 makes messages and settlement_items rowid tables: every row stays (the
    settlements' lines too), messages keep their key (a msgid is still once per institution:
    the same settle again is its replay, a second row with the key is refused by SQLite), and
    the ledger's check passes."""
    path = two_settles_one_voided(tmp_path / "ledger.db")
    version_8_of(path)
    before, lines = rows(path), item_rows(path)
    assert layout(path) == (8, ["session", "institution_code", "msgid"], []) and len(lines) == 4
    with closing(read_only(path)) as db:
        assert [schema.without_rowid(db, t) for t in VERSION_8_TABLES] == [True, True]
        assert schema.tables_version(db) == 8
    ledger = Ledger(path)
    try:
        assert ledger.upgraded_from == 8
        assert layout(path) == (SCHEMA_VERSION, ["session", "institution_code", "msgid"], [])
        assert rows(path) == before and item_rows(path) == lines and ledger.check() == []
        with closing(read_only(path)) as db:
            assert [schema.without_rowid(db, t) for t in VERSION_8_TABLES] == [False, False]
            assert schema.tables_version(db) == SCHEMA_VERSION
        assert settle_with_lines(ledger, "M1", "S-AGAIN") == (ledger.get("", CANCER_HOSPITAL, "S1"), True)
        assert settle_with_lines(ledger, "M3", "S3")[1] is False
        assert ledger.get("", CANCER_HOSPITAL, msgid="M3").settlement_id == "S3"
        with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO messages VALUES ('', 'M3', 'settle', ?, 'h', 'S9', 'now')", (CANCER_HOSPITAL,))
        assert ledger.check() == [] and len(item_rows(path)) == 6
    finally:
        ledger.close()


def version_9_of(path: Path) -> None:
    """Make a current ledger what version 9 left: messages' and settlements' CHECKs as IN lists
    (server/ledger/sqlite/schema.py at 3e83835), edited in place as version 10's upgrade does."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        (cookie,) = db.execute("PRAGMA schema_version").fetchone()
        db.execute("PRAGMA writable_schema = ON")
        for table, (in_list, comparisons) in schema.IN_LIST_CHECKS.items():
            edit = "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE name = ?"
            db.execute(edit, (comparisons, in_list, table))
        db.execute(f"PRAGMA schema_version = {cookie + 1}")
        db.execute("PRAGMA writable_schema = RESET")
        db.execute("PRAGMA user_version = 9")
        db.execute("COMMIT")


def test_a_version_9_ledger_gets_its_checks_without_in_lists_and_keeps_every_row(tmp_path):
    """Version 9 -> 10 writes the CHECKs of messages.kind and settlements.status as comparisons
    joined by OR (SQLite built a temporary b-tree of an IN list each time a row was checked):
    every row stays, the file is sound, and the constraints refuse and accept exactly what they
    did: each kind and status of the lists, nothing else."""
    path = two_settles_one_voided(tmp_path / "ledger.db")
    version_9_of(path)
    before, lines = rows(path), item_rows(path)
    with closing(read_only(path)) as db:
        assert schema.tables_version(db) == 9 and schema.in_list_checks(db) == ["messages", "settlements"]
    ledger = Ledger(path)
    try:
        assert ledger.upgraded_from == 9
        assert rows(path) == before and item_rows(path) == lines and ledger.check() == []
        with closing(read_only(path)) as db:
            assert schema.tables_version(db) == SCHEMA_VERSION == 10 and schema.in_list_checks(db) == []
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert settle_with_lines(ledger, "M3", "S3")[1] is False and ledger.check() == []
    finally:
        ledger.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        for kind in ("settle", "reverse", "void", "blocked"):
            db.execute("INSERT INTO messages VALUES ('', ?, ?, ?, 'h', '', 'now')", (f"K-{kind}", kind, FUWAI))
        for status in ("reversed", "voided", "settled"):
            db.execute("UPDATE settlements SET status = ? WHERE settlement_id = 'S1'", (status,))
        for bad in ("Settle", "settle ", "", "settled"):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
                db.execute("INSERT INTO messages VALUES ('', 'K-bad', ?, ?, 'h', '', 'now')", (bad, FUWAI))
        for bad in ("void", "Settled", ""):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
                db.execute("UPDATE settlements SET status = ? WHERE settlement_id = 'S1'", (bad,))
        db.execute("ROLLBACK")


@pytest.mark.parametrize("older, newer", [(8, 9), (9, 10)])
def test_a_header_that_says_the_other_version_is_refused_naming_both(tmp_path, older, newer):
    """A header that says `newer` on version `older`'s tables, or `older` on `newer`'s, is
    refused naming both (8 and 9 differ in their tables' layout, 9 and 10 in their CHECKs)."""
    made = {8: version_8_of, 9: version_9_of, 10: lambda path: None}  # 10: a current ledger
    paths = {older: tmp_path / f"v{older}.db", newer: tmp_path / f"v{newer}.db"}
    for version, path in paths.items():
        ledger = Ledger(path)
        settle_with_lines(ledger, "M1", "S1")
        ledger.close()
        made[version](path)
    for tables, header in ((older, newer), (newer, older)):
        with closing(sqlite3.connect(paths[tables], isolation_level=None)) as db:
            db.execute(f"PRAGMA user_version = {header}")
    for tables, header in ((older, newer), (newer, older)):
        with pytest.raises(LedgerFileError) as refused:
            Ledger(paths[tables])
        assert f"user_version {header} but its tables are those of version {tables}" in str(refused.value)
