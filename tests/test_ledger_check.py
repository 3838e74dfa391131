"""`settlesim ledger check --db PATH` reads and never writes: a file that is not a
settlesim ledger is refused in one line (exit 2) and left byte-identical, with no
file created beside it; a ledger is checked read-only (SQLite's quick_check, then
the invariants, each msgid in its sender's namespace)."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from contextlib import closing
from datetime import date
from pathlib import Path

import pytest
from conftest import CANCER_HOSPITAL, FUWAI, ledger_check
from settlesim.server.ledger import StoredSettlement
from settlesim.server.ledger.sqlite import SCHEMA_VERSION
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.model import YearlyTotals
from test_ledger_migration import answer_of, old_ledger

QINGHAI, TUMOUR = "63000000000000000009", "M00503"



def snapshot(folder: Path) -> dict[str, str]:
    """Every file under the folder and a digest of its bytes."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def assert_refused_in_one_line(check: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert check.returncode == 2, check.stdout + check.stderr
    assert check.stdout == ""
    lines = check.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("settlesim: error: "), check.stderr
    for text in expected:
        assert text in lines[0]


def settle(
    ledger: Ledger, msgid: str, institution: str, sid: str, day: date, total: int, fund: int, ded: int
):
    def compute(totals: YearlyTotals) -> tuple[StoredSettlement, YearlyTotals]:
        answer = answer_of(sid, "", msgid, institution, QINGHAI, TUMOUR, day.isoformat(), "", total, fund,
                           total - fund, ded, "")  # fmt: skip
        stored = StoredSettlement(
            sid, "", msgid, institution, QINGHAI, TUMOUR, day, total, fund, total - fund, ded, answer
        )
        return stored, YearlyTotals(totals.deductible_used + ded, totals.fund_paid + fund)

    return ledger.settle("", msgid, institution, f"h-{msgid}", QINGHAI, TUMOUR, day.year, compute)[0]


@pytest.fixture
def sound(tmp_path: Path) -> Path:
    """A closed ledger (Qinghai 630000/390/M00503 in 2024: deductible 5000, 100%):
    S1 9000 (deductible 5000, fund 4000) settled; S2 3000 reversed by R2; S3 2000 voided
    by V3; M4 voided before it settled (blocked); Fuwai's S5 under the same msgid M1."""
    path = tmp_path / "ledger" / "sound.db"
    ledger = Ledger(path)
    try:
        settle(ledger, "M1", CANCER_HOSPITAL, "S1", date(2024, 3, 1), 9000, 4000, 5000)
        settle(ledger, "M2", CANCER_HOSPITAL, "S2", date(2024, 4, 1), 3000, 3000, 0)
        settle(ledger, "M3", CANCER_HOSPITAL, "S3", date(2024, 5, 1), 2000, 2000, 0)
        ledger.reverse("", "R2", CANCER_HOSPITAL, "h-R2", "S2")
        ledger.void("", "V3", CANCER_HOSPITAL, "h-V3", "M3")
        ledger.void("", "V4", CANCER_HOSPITAL, "h-V4", "M4")
        settle(ledger, "M1", FUWAI, "S5", date(2024, 6, 1), 1000, 1000, 0)
        assert ledger.check() == []
    finally:
        ledger.close()
    return path


# --- not a ledger: refused in one line, nothing touched ----------------------------------------


def test_an_unrelated_sqlite_file_is_refused_and_left_byte_identical(tmp_path):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('not a ledger')")
    db.close()
    before = snapshot(tmp_path)
    check = ledger_check(other)
    assert_refused_in_one_line(check, str(other), "is not a settlesim ledger", "no table settlements")
    assert snapshot(tmp_path) == before  # no tables added, no WAL switch, no .lock, no -wal/-shm


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.txt", b"hello, this is text and not a database\n" * 50, "file is not a database"),
        ("random.bin", bytes(range(256)) * 16, "file is not a database"),
        ("empty.db", b"", "empty (0 bytes)"),
    ],
)
def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    before = snapshot(tmp_path)
    check = ledger_check(path)
    assert_refused_in_one_line(check, "is not a settlesim ledger", expected)
    assert "Traceback" not in check.stderr
    assert snapshot(tmp_path) == before


def test_a_table_without_the_ledger_columns_is_refused(tmp_path):
    path = tmp_path / "lookalike.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE settlements (id)")
        db.execute("CREATE TABLE yearly_totals (id)")
        db.execute("CREATE TABLE messages (id)")
    db.close()
    assert_refused_in_one_line(ledger_check(path), "table settlements has no column")


def test_a_newer_schema_is_refused_and_a_missing_file_is_one_line(tmp_path, sound):
    future = tmp_path / "future.db"
    shutil.copy(sound, future)
    with sqlite3.connect(future) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    assert_refused_in_one_line(ledger_check(future), "newer than this settlesim")
    assert_refused_in_one_line(ledger_check(tmp_path / "absent.db"), "no ledger at")
    assert_refused_in_one_line(ledger_check(tmp_path), "no ledger at")  # a directory


def test_a_truncated_ledger_is_not_a_traceback(tmp_path, sound):
    cut = tmp_path / "cut.db"
    cut.write_bytes(sound.read_bytes()[:5000])
    check = ledger_check(cut)
    assert check.returncode in (1, 2) and "Traceback" not in check.stderr, check.stdout + check.stderr
    if check.returncode == 2:
        assert_refused_in_one_line(check)


# --- a ledger: checked, never written -------------------------------------------------------


def test_a_sound_ledger_passes_and_is_not_modified(sound):
    before = snapshot(sound.parent)
    assert not Path(f"{sound}-wal").exists()
    check = ledger_check(sound)
    assert check.returncode == 0, check.stdout + check.stderr
    # In force: S1 9000 (fund 4000, patient 5000) + S5 1000 (fund 1000, patient 0).
    assert check.stdout == (
        "  real ledger: 1 reversed, 2 settled, 1 voided; in force 2: total 10000, fund 5000, patient 5000 fen\n"
        "  sandboxes: none\n"
        f"ledger {sound}: OK; 1 reversed, 2 settled, 1 voided\n"
    )
    assert snapshot(sound.parent) == before  # no -wal, no -shm either


def test_a_ledger_is_checked_beside_a_running_server(sound):
    """A server holds the file open with a write not yet checkpointed: the check
    reads it (WAL included) and changes nothing."""
    ledger = Ledger(sound)
    try:
        settle(ledger, "M9", CANCER_HOSPITAL, "S9", date(2024, 7, 1), 500, 500, 0)
        before = hashlib.sha256(sound.read_bytes()).hexdigest()
        check = ledger_check(sound)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "OK; 1 reversed, 3 settled, 1 voided" in check.stdout
        assert hashlib.sha256(sound.read_bytes()).hexdigest() == before
        assert ledger.check() == []
    finally:
        ledger.close()


def test_an_old_schema_ledger_is_checked_and_not_upgraded(tmp_path):
    """Version 0 (before msgids were per institution) is checked as it is; only a
    server upgrades it."""
    old = old_ledger(tmp_path)
    with closing(sqlite3.connect(old)) as db:  # the last connection to close folds the WAL in
        db.execute("SELECT COUNT(*) FROM messages").fetchone()
    assert not Path(f"{old}-wal").exists()
    before = snapshot(tmp_path)
    check = ledger_check(old)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK; 1 reversed, 3 settled, 1 voided (schema version 0" in check.stdout
    assert snapshot(tmp_path) == before


CORRUPTIONS = {
    # A reversal whose settlement was put back in force (the totals moved back too).
    "reversal whose settlement is still settled": (
        [
            "UPDATE settlements SET status = 'settled', undone_by_msgid = '' WHERE settlement_id = 'S2'",
            "UPDATE yearly_totals SET fund_paid = fund_paid + 3000",
        ],
        "reverse msgid R2 of H11010500001 undid settlement S2, which is still settled",
    ),
    "void whose settlement is missing": (
        ["DELETE FROM settlements WHERE settlement_id = 'S3'"],
        "void msgid V3 of H11010500001 undid settlement S3, which is missing",
    ),
    "negative yearly totals": (
        ["UPDATE yearly_totals SET deductible_used = -5000"],
        "('', '63000000000000000009', 'M00503', 2024): deductible/fund (-5000, 5000) is negative",
    ),
    # Fuwai's settle message under M1 claims the Cancer Hospital's settlement: the old
    # check, blind to the institution, saw S1 with "its" settle message.
    "settle message in another institution's namespace": (
        ["DELETE FROM messages WHERE institution_code = 'H11010500001' AND msgid = 'M1'",
         "UPDATE messages SET settlement_id = 'S1' WHERE institution_code = 'H11010200002' AND msgid = 'M1'"],
        "settlement S1 has no settle message 'M1' from H11010500001",
    ),
    "two settlements for one institution's msgid": (
        ["UPDATE settlements SET msgid = 'M1' WHERE settlement_id = 'S3'"],
        "msgid M1 of H11010500001 has 2 settlements",
    ),
    "a reversal by another institution": (
        ["UPDATE messages SET institution_code = 'H11010200002' WHERE msgid = 'R2'"],
        "settlement S2 is reversed but no reverse message 'R2' undid it",
    ),
    # The Cancer Hospital's 2024 settlements in force: S1 9000 (S2 reversed, S3 voided).
    "institution's yearly total off": (
        ["UPDATE institution_totals SET total = total + 1 WHERE institution_code = 'H11010500001'"],
        "institution totals ('', 'H11010500001', 2024): total 9001 but settlements in force sum to 9000",
    ),
    "a stored answer that disagrees with its column": (
        ["UPDATE settlements SET fund_pays = 3000, patient_pays = 6000 WHERE settlement_id = 'S1'",
         "UPDATE yearly_totals SET fund_paid = fund_paid - 1000"],
        "settlement S1: stored answer says fund_pays 4000 but the column says 3000",
    ),
}  # fmt: skip


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_check_names_each_broken_invariant(tmp_path, sound, corruption):
    statements, expected = CORRUPTIONS[corruption]
    broken = tmp_path / "broken.db"
    shutil.copy(sound, broken)
    db = sqlite3.connect(broken, isolation_level=None)
    for statement in statements:
        db.execute(statement)
    db.close()
    before = snapshot(tmp_path)
    check = ledger_check(broken)
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"FAIL {expected}" in check.stdout or any(
        line.startswith("FAIL ") and expected in line for line in check.stdout.splitlines()
    ), check.stdout
    assert "problem(s)" in check.stdout.splitlines()[-1]
    assert snapshot(tmp_path) == before


def test_check_reports_a_damaged_file(tmp_path, sound):
    """Bytes overwritten inside the settlements table's page: SQLite's quick_check
    says where (or, when it cannot even finish, that the image is malformed), and
    the command still ends in its summary line, exit 1, no traceback."""
    broken = tmp_path / "damaged.db"
    shutil.copy(sound, broken)
    with closing(sqlite3.connect(broken)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'settlements'").fetchone()
    data = bytearray(broken.read_bytes())
    cells = (root - 1) * page_size + 8  # a leaf page's cell pointers follow its 8-byte header
    data[cells : cells + 8] = b"\xff" * 8
    broken.write_bytes(bytes(data))
    check = ledger_check(broken)
    assert check.returncode == 1, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert lines[0].startswith("FAIL sqlite quick_check: "), check.stdout
    assert "problem(s)" in lines[-1] and "Traceback" not in check.stderr
