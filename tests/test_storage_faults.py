"""Storage faults (issue 9, items 4-7): a full disk, sums that would overflow,
an empty or damaged ledger file and a damaged stored answer each end in a
documented status (UNAVAILABLE / LEDGER_UNAVAILABLE, DATA_LOSS / LEDGER_DAMAGED,
FAILED_PRECONDITION / LEDGER_LIMIT_EXCEEDED, INVALID_ARGUMENT /
AMOUNT_OUT_OF_RANGE) or one clear line; nothing acknowledged is lost, and
`settlesim ledger check` finds every corruption."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL, SANYA_NAMED, ledger_check, refused
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.rejections import Rejection, rejection_of
from settlesim.server import app, validation
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.ledger.health import WriteHealth
from settlesim.server.ledger.sqlite import SCHEMA_VERSION
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.v1 import settlement_service_pb2 as pb

INT64_MAX = 2**63 - 1
QINGHAI, TUMOUR = "63000000000000000001", "M00503"  # Cancer Hospital CAMS, 2021-11..2027
QINGHAI_FEES = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
# Beijing's lung-cancer patient at the Sanya hospital her registration names:
# 110000's policy pays 90 % of class-A items with no deductible and no annual cap
# (policies/110000.yaml), so nothing in the rules stops her yearly fund growing.
BEIJING = "11000000000000000001"


def server_on(db: Path) -> RunningServer:
    return start(ServerConfig(port=0, db_path=db, max_workers=8))


def health_of(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def wait_for_health(target: str, status: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while health_of(target) != status:
        assert time.monotonic() < deadline, f"health never became {status}"
        time.sleep(0.1)


def serve_exits(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`settlesim serve` on `db`: it must refuse and exit, not start serving."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--db", str(db), *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as timed_out:
        raise AssertionError(f"serve started on {db} instead of refusing it: {timed_out.stdout!r}") from None


def one_line(process: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2 and a single `settlesim: error:` line on stderr containing `expected`."""
    assert process.returncode == 2, process.stdout + process.stderr
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("settlesim: error: "), process.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0].removeprefix("settlesim: error: ")


# --- a ledger made by a real server: the raw material for the damage below ------------------


@pytest.fixture(scope="module")
def made_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[pb.Settlement]]:
    """A closed ledger of 150 Qinghai settlements of 17963 fen in 2024
    (630000/390/M00503: deductible 5000, then 100 %: the first visit pays fund
    12963 and patient 5000, every later one fund 17963), every answer as the
    hospital got it."""
    path = tmp_path_factory.mktemp("made") / "ledger.db"
    running = server_on(path)
    his = Hospital.connect(running.target, CANCER_HOSPITAL)
    try:
        answers = [
            his.settle(QINGHAI, TUMOUR, f"2024-{1 + i % 12:02d}-10", QINGHAI_FEES).settlement
            for i in range(150)
        ]
    finally:
        his.close()
        running.stop(grace=1)
    assert not Path(f"{path}-wal").exists()  # everything is in the main file
    return path, answers


@pytest.fixture
def ledger_copy(made_ledger: tuple[Path, list[pb.Settlement]], tmp_path: Path) -> Path:
    copy = tmp_path / "copy.db"
    shutil.copy(made_ledger[0], copy)
    return copy


def settle_all_in(path: Path) -> tuple[int, int]:
    """(settlements, sum of fund) in the file, read directly."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT COUNT(*), SUM(fund_pays) FROM settlements").fetchone()


# --- 4. disk full -----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for this test (needs root and mount(2))."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a small tmpfs (run the suite as root to include it)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"disk-full test: cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full; deleting it frees the disk again."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_is_unavailable_with_a_reason_and_health_follows_the_disk(small_disk):
    db = small_disk / "ledger.db"
    running = server_on(db)
    his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
    try:
        acknowledged = [his.settle(QINGHAI, TUMOUR, "2024-03-10", QINGHAI_FEES).settlement for _ in range(5)]
        filler = fill(small_disk)
        # Settle until the ledger's writes no longer fit (the WAL still has a little room).
        refusals: dict[str, Rejection] = {}  # by msgid
        with ThreadPoolExecutor(max_workers=6) as pool:  # several jobs in one failing batch
            for _ in range(20):
                requests = [his.settlement_request(QINGHAI, TUMOUR, "2024-03-10", QINGHAI_FEES) for _ in range(6)]
                for request, outcome in zip(requests, pool.map(lambda r: _outcome(his, r), requests), strict=True):
                    if isinstance(outcome, Rejection):
                        refusals[request.msgid] = outcome
                    else:
                        acknowledged.append(outcome)
                if refusals:
                    break
        assert refusals, "the disk never filled up"
        for rejection in refusals.values():
            assert (rejection.code, rejection.reason) == ("UNAVAILABLE", "LEDGER_UNAVAILABLE"), rejection
            assert rejection.metadata["cause"] == "disk_full"
        assert health_of(running.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        time.sleep(2.5 * WriteHealth.PROBE_SECONDS)  # the probe has tried and failed
        assert health_of(running.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        rejection = refused(lambda: his.settle(QINGHAI, TUMOUR, "2024-03-10", QINGHAI_FEES))
        assert rejection.reason == "LEDGER_UNAVAILABLE"
        # No client writes now: the ledger's own probe finds the disk usable again.
        filler.unlink()
        wait_for_health(running.target, health_pb2.HealthCheckResponse.SERVING)
        acknowledged.append(his.settle(QINGHAI, TUMOUR, "2024-03-11", QINGHAI_FEES).settlement)
        for answer in acknowledged:  # every acknowledged settlement is there, as answered
            assert his.get(answer.settlement_id).totals == answer.totals
        for msgid in refusals:  # and nothing of a refused one: its whole batch was rolled back
            assert running.ledger.find_message("", CANCER_HOSPITAL, msgid) is None
        assert running.ledger.check() == []
    finally:
        his.close()
        running.stop(grace=1)
    assert settle_all_in(db)[0] == len(acknowledged)
    assert ledger_check(db).returncode == 0


def _outcome(his: Hospital, request: pb.SettlementRequest) -> pb.Settlement | Rejection:
    try:
        return his.settle_request(request).settlement
    except grpc.RpcError as error:
        return rejection_of(error)


def test_health_is_not_serving_while_any_part_of_the_server_fails():
    """The ledger's writes and the audit log both tell the health service; one
    recovering does not make the server SERVING while the other still fails."""
    servicer = health.HealthServicer()
    parts = app._Health(servicer)

    def status() -> int:
        return servicer.Check(health_pb2.HealthCheckRequest(service=""), None).status

    parts.tell("ledger", False)
    parts.tell("audit log", False)
    parts.tell("audit log", True)
    assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
    parts.tell("ledger", True)
    assert status() == health_pb2.HealthCheckResponse.SERVING


# --- 5. overflow -----------------------------------------------------------------------


def test_the_issues_overflow_visit_is_refused_before_it_is_stored(server, hospital):
    """Issue 9's attack: 500 items of 100,000 × 100,000,000 fen = 5e15 fen a visit,
    each within the item limits; at 90 % the fund pays 4.5e15, so the yearly fund
    passes 2^63-1 = 9.22e18 at visit 9.22e18 / 4.5e15 = 2050. Now the visit total
    is bounded first: 5e15 > MAX_VISIT_TOTAL_FEN, refused and nothing stored."""
    assert 2050 * 45 * 10**14 > INT64_MAX >= 2049 * 45 * 10**14  # the old ledger's 2050th settle overflowed
    his = hospital(SANYA_NAMED)
    fees = [Fee("A-TARGET-001", 100_000_000, 100_000) for _ in range(500)]
    rejection = refused(lambda: his.settle(BEIJING, TUMOUR, "2025-06-01", fees))
    assert (rejection.code, rejection.reason) == ("INVALID_ARGUMENT", "AMOUNT_OUT_OF_RANGE")
    assert rejection.violations[0][0] == "request.items"
    assert server.ledger.counts() == {}


def test_a_persons_yearly_fund_stops_at_its_limit_and_reconcile_still_adds_up(server, hospital):
    """The per-visit ceiling alone would let many visits add up: the person's yearly
    fund is bounded too, checked in the settle transaction against the yearly
    totals. Visits of exactly MAX_VISIT_TOTAL_FEN each (fund 90 % of it): the
    visit that would take the yearly fund past the limit is refused with
    LEDGER_LIMIT_EXCEEDED, nothing of it stored, and Reconcile answers the sums.
    (Beijing's employees also have the large-amount subsidy, ILLUSTRATIVE: the first visit's
    share of 10 % is far above its 2,000,000 threshold, so it pays its whole cap of 30,000,000
    then, and nothing after.)"""
    his = hospital(SANYA_NAMED)
    visit_total = validation.MAX_VISIT_TOTAL_FEN
    fund_per_visit = visit_total * 9 // 10
    limit = server.ledger.MAX_PERSON_YEAR_FEN
    fits = limit // fund_per_visit  # visits whose fund fits under the yearly limit
    assert 10 < fits < 200  # cheap to reach in a test
    fees = [Fee("A-TARGET-001", visit_total // 100, 100)]
    answers = [his.settle(BEIJING, TUMOUR, "2025-06-01", fees).settlement for _ in range(fits)]
    assert all(a.totals.pooled_fund_fen == fund_per_visit for a in answers)
    large_amount = 30_000_000
    assert [a.totals.large_amount_fen for a in answers[:2]] == [large_amount, 0]
    rejection = refused(lambda: his.settle(BEIJING, TUMOUR, "2025-06-01", fees))
    assert (rejection.code, rejection.reason) == ("FAILED_PRECONDITION", "LEDGER_LIMIT_EXCEEDED")
    assert rejection.metadata["limit"] == "person_year_fund"
    assert server.ledger.counts() == {"settled": fits}
    sums = his.reconcile("2025-01-01", "2025-12-31", pb.ReconcileFigures(), False).platform
    assert (sums.count, sums.total_fen, sums.fund_pays_fen) == (
        fits,
        fits * visit_total,
        fits * fund_per_visit + large_amount,
    )
    assert server.ledger.check() == []


def test_an_institutions_yearly_total_stops_at_its_limit(server, hospital):
    """The bound that keeps every Reconcile sum in int64: an institution's settlements
    in force in one year total at most MAX_INSTITUTION_YEAR_FEN (lowered here to
    3 visits' worth so the test reaches it). A reversal makes room again."""
    his = hospital(CANCER_HOSPITAL)
    server.ledger.MAX_INSTITUTION_YEAR_FEN = 3 * 17963
    first = [his.settle(QINGHAI, TUMOUR, "2024-05-01", QINGHAI_FEES).settlement for _ in range(3)]
    rejection = refused(lambda: his.settle(QINGHAI, TUMOUR, "2024-05-01", QINGHAI_FEES))
    assert (rejection.code, rejection.reason) == ("FAILED_PRECONDITION", "LEDGER_LIMIT_EXCEEDED")
    assert rejection.metadata["limit"] == "institution_year_total"
    assert his.settle(QINGHAI, TUMOUR, "2025-05-01", QINGHAI_FEES).settlement.settlement_id  # another year
    his.reverse(first[0].settlement_id)
    assert his.settle(QINGHAI, TUMOUR, "2024-05-01", QINGHAI_FEES).settlement.settlement_id
    assert server.ledger.check() == []


def test_the_limits_make_every_sum_the_server_computes_fit_in_int64():
    """The argument, checked: a visit's figures are at most its total; a yearly total
    row is at most MAX_PERSON_YEAR_FEN; a Reconcile sums settlements in force of one
    institution over at most MAX_YEAR - MIN_YEAR + 1 years, each year at most
    MAX_INSTITUTION_YEAR_FEN; and SQLite's SUM of non-negative figures never
    passes its final value on the way."""
    years = validation.MAX_YEAR - validation.MIN_YEAR + 1
    assert validation.MAX_VISIT_TOTAL_FEN <= Ledger.MAX_PERSON_YEAR_FEN <= Ledger.MAX_INSTITUTION_YEAR_FEN
    assert years * Ledger.MAX_INSTITUTION_YEAR_FEN <= INT64_MAX
    # The item limits alone would not do: the issue's visit is over the visit ceiling.
    assert (
        validation.MAX_ITEMS * validation.MAX_UNIT_PRICE_FEN * validation.MAX_QUANTITY
        > validation.MAX_VISIT_TOTAL_FEN
    )


# --- 6. serve refuses an empty or damaged ledger ---------------------------------------


def test_serve_refuses_a_zero_byte_ledger_and_leaves_it(tmp_path):
    empty = tmp_path / "ledger.db"
    empty.write_bytes(b"")
    line = one_line(serve_exits(empty), str(empty), "empty")
    assert "Traceback" not in line
    assert empty.read_bytes() == b""  # not made into a new ledger
    assert one_line(serve_exits(empty, "--processes", "2")) == line  # checked once, before the fork
    assert one_line(ledger_check(empty), str(empty), "empty") == line  # the same line from both


def unrelated_database(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('not a ledger')")
        db.commit()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (unrelated_database, "is not a settlesim ledger: it has no table settlements"),
        (lambda path: path.write_bytes(b"plain text, not a database\n" * 200), "file is not a database"),
    ],
)
def test_serve_refuses_a_file_that_is_not_a_ledger_without_touching_it(tmp_path, make, expected):
    """Before, serve added the ledger's tables to any SQLite file (and switched it to WAL)."""
    path = tmp_path / "other.db"
    make(path)
    before = path.read_bytes()
    line = one_line(serve_exits(path), str(path), expected)
    assert path.read_bytes() == before
    assert one_line(ledger_check(path)) == line


def page_size(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:18], "big")


DAMAGE = {
    # A page of the settlements table zeroed: the file stays a SQLite database.
    "zeroed page": lambda data, page: data[: page * 4096] + bytes(4096) + data[(page + 1) * 4096 :],
    # Five bytes of a b-tree page header flipped.
    "flipped bytes": lambda data, page: (
        data[: page * 4096]
        + bytes(b ^ 0xFF for b in data[page * 4096 : page * 4096 + 5])
        + data[page * 4096 + 5 :]
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_serve_refuses_a_damaged_ledger_and_ledger_check_finds_it(ledger_copy, damage):
    assert page_size(ledger_copy) == 4096
    data = ledger_copy.read_bytes()
    pages = len(data) // 4096
    ledger_copy.write_bytes(DAMAGE[damage](data, pages // 2))
    before = ledger_copy.read_bytes()
    line = one_line(serve_exits(ledger_copy), str(ledger_copy), "damaged")
    assert "integrity" in line
    assert ledger_copy.read_bytes() == before  # nothing committed into it
    check = ledger_check(ledger_copy)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "FAIL sqlite" in check.stdout


def test_damage_found_while_serving_stops_the_ledger(ledger_copy):
    """A ledger opened without the start-up check (serve --skip-integrity-check on
    a ledger too large to check) that turns out damaged: the first call touching the
    damage is DATA_LOSS / LEDGER_DAMAGED, health goes NOT_SERVING, and no write
    commits into the damaged file any more."""
    data = ledger_copy.read_bytes()
    ledger_copy.write_bytes(DAMAGE["zeroed page"](data, len(data) // 4096 // 2))
    running = start(ServerConfig(port=0, db_path=ledger_copy, max_workers=4, integrity_check=False))
    his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
    try:
        rejection = refused(lambda: his.reconcile("2024-01-01", "2024-12-31", pb.ReconcileFigures(), True))
        assert (rejection.code, rejection.reason) == ("DATA_LOSS", "LEDGER_DAMAGED")
        assert health_of(running.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        rejection = refused(lambda: his.settle(QINGHAI, TUMOUR, "2024-03-10", QINGHAI_FEES))
        assert (rejection.code, rejection.reason) == ("DATA_LOSS", "LEDGER_DAMAGED")
    finally:
        his.close()
        running.stop(grace=1)


# --- 7. ledger check reads the stored answers -----------------------------------------


def flip_in_answer(path: Path, settlement_id: str, change) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        (answer,) = db.execute(
            "SELECT answer FROM settlements WHERE settlement_id = ?", (settlement_id,)
        ).fetchone()
        db.execute(
            "UPDATE settlements SET answer = ? WHERE settlement_id = ?", (change(answer), settlement_id)
        )


def test_a_flipped_answer_bit_is_found_by_ledger_check_and_never_served(made_ledger, ledger_copy):
    """The issue's bit: in SettlementTotals, fund_pays_fen (field 7, varint) has the
    tag byte 7 << 3 = 0x38; bit 6 flipped makes it 0x78, field 15, which the
    message does not have: the answer still decodes, with fund 0."""
    victim = made_ledger[1][40]
    assert victim.totals.fund_pays_fen == 17963
    tag_and_value = pb.SettlementTotals(fund_pays_fen=17963).SerializeToString()
    assert tag_and_value[0] == 0x38

    def flip(answer: bytes) -> bytes:
        at = answer.index(victim.totals.SerializeToString()) + victim.totals.SerializeToString().index(
            tag_and_value
        )
        changed = bytearray(answer)
        changed[at] ^= 0x40
        assert pb.Settlement.FromString(bytes(changed)).totals.fund_pays_fen == 0
        return bytes(changed)

    flip_in_answer(ledger_copy, victim.settlement_id, flip)
    check = ledger_check(ledger_copy)
    assert check.returncode == 1, check.stdout
    fails = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == [
        f"FAIL settlement {victim.settlement_id}: stored answer says fund_pays 0 but the column says 17963"
    ]
    running = server_on(ledger_copy)
    his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
    try:
        rejection = refused(lambda: his.get(victim.settlement_id))
        assert (rejection.code, rejection.reason) == ("DATA_LOSS", "LEDGER_DAMAGED")
        assert rejection.metadata["settlement_id"] == victim.settlement_id
        assert (
            his.get(made_ledger[1][41].settlement_id).totals == made_ledger[1][41].totals
        )  # the rest is served
    finally:
        his.close()
        running.stop(grace=1)


def test_an_answer_that_does_not_decode_is_found_and_never_served(made_ledger, ledger_copy):
    victim = made_ledger[1][7]

    def garble(answer: bytes) -> bytes:
        return answer[:10] + b"\xff\xff\xff\xff\xff" + answer[15:]

    flip_in_answer(ledger_copy, victim.settlement_id, garble)
    check = ledger_check(ledger_copy)
    assert check.returncode == 1, check.stdout
    assert f"FAIL settlement {victim.settlement_id}: stored answer does not decode" in check.stdout
    running = server_on(ledger_copy)
    his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
    try:
        rejection = refused(lambda: his.get(victim.settlement_id))
        assert (rejection.code, rejection.reason) == ("DATA_LOSS", "LEDGER_DAMAGED")
    finally:
        his.close()
        running.stop(grace=1)


def test_an_answer_whose_item_disagrees_with_its_row_is_found(made_ledger, ledger_copy):
    victim = made_ledger[1][3]
    with closing(sqlite3.connect(ledger_copy, isolation_level=None)) as db:
        db.execute(
            "UPDATE settlement_items SET catalog_code = 'A-CHEMO-002' "
            "WHERE settlement_id = ? AND catalog_code = 'A-CHEMO-001'",
            (victim.settlement_id,),
        )
    check = ledger_check(ledger_copy)
    assert check.returncode == 1
    assert (
        f"FAIL settlement {victim.settlement_id} item 0002: "
        "stored answer says catalog_code 'A-CHEMO-001' but the row says 'A-CHEMO-002'"
    ) in check.stdout


@pytest.mark.parametrize("flipped", [SCHEMA_VERSION ^ 1, SCHEMA_VERSION ^ 2, SCHEMA_VERSION ^ 4])
def test_a_flipped_user_version_is_the_same_clear_line_from_serve_and_ledger_check(ledger_copy, flipped):
    with closing(sqlite3.connect(ledger_copy, isolation_level=None)) as db:
        db.execute(f"PRAGMA user_version = {flipped}")
    before = ledger_copy.read_bytes()
    line = one_line(
        serve_exits(ledger_copy), str(ledger_copy), f"user_version {flipped}", f"version {SCHEMA_VERSION}"
    )
    assert "duplicate column" not in line
    assert ledger_copy.read_bytes() == before
    assert one_line(ledger_check(ledger_copy)) == line
