"""The audit log: its chain is anchored in the ledger, so truncating it, editing
its last records or recomputing the whole chain is found; a call whose record
cannot be written is not answered OK (fail-closed); and `audit verify` reads any
garbage without a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL, settlesim
from grpc_health.v1 import health_pb2, health_pb2_grpc
from settlesim.clients.hospital import Fee, Hospital, SettlementUncertain
from settlesim.clients.rejections import rejection_of
from settlesim.server.app import ServerConfig, start

QINGHAI_PERSON, TUMOUR = "63000000000000000001", "M00503"


def config(tmp_path: Path, **changes: object) -> ServerConfig:
    settings: dict[str, object] = {
        "port": 0, "db_path": tmp_path / "ledger.db", "audit_log": tmp_path / "audit.jsonl", "max_workers": 4,
    }  # fmt: skip
    return ServerConfig(**{**settings, **changes})  # type: ignore[arg-type]


def settle(his: Hospital, msgid: str | None = None) -> object:
    return his.settle(QINGHAI_PERSON, TUMOUR, "2021-12-09", [Fee("A-CONSULT-001", 100)], msgid=msgid)


def audited_run(tmp_path: Path, settles: int = 4, verifies: int = 2) -> tuple[Path, Path]:
    """A server with an audit log: some settles, then some reads (which commit
    nothing), then a clean stop. Returns (ledger, audit log)."""
    running = start(config(tmp_path))
    his = Hospital.connect(running.target, CANCER_HOSPITAL)
    try:
        for _ in range(settles):
            settle(his)
        for _ in range(verifies):
            his.verify(QINGHAI_PERSON, TUMOUR, "2021-12-09")
    finally:
        his.close()
        running.stop(grace=1)
    return tmp_path / "ledger.db", tmp_path / "audit.jsonl"


def verify(audit: Path, db: Path | None = None, *, no_anchor: bool = False) -> subprocess.CompletedProcess[str]:
    return settlesim(
        "audit", "verify", *(("--db", str(db)) if db else ()), *(("--no-anchor",) if no_anchor else ()), str(audit)
    )


def verify_with_default_db(audit: Path, default: Path) -> subprocess.CompletedProcess[str]:
    """`audit verify FILE` with no --db, serve's default ledger being `default` ($SETTLESIM_DB)."""
    return subprocess.run(
        [sys.executable, "-m", "settlesim", "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SETTLESIM_DB": str(default)},
    )


def serve_refuses(tmp_path: Path, *extra: str) -> str:
    """`settlesim serve` on the test's ledger and audit log must exit 2 at once
    with one line on stderr (and no traceback); returns that line."""
    done = subprocess.run(
        [sys.executable, "-m", "settlesim", "serve", "--port", "0", "--log-level", "error",
         "--db", str(tmp_path / "ledger.db"), "--audit-log", str(tmp_path / "audit.jsonl"), *extra],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def rechain(lines: list[bytes]) -> bytes:
    """What an attacker with write access to the file writes: the records with
    every `prev` recomputed, a chain that holds on its own."""
    out, prev = [], "0" * 64
    for raw in lines:
        record = json.loads(raw)
        record["prev"] = prev
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        out.append(line + b"\n")
        prev = hashlib.sha256(line).hexdigest()
    return b"".join(out)


# --- item 8: the tail is anchored in the ledger -----------------------------------------------


def test_a_truncated_audit_log_is_found_and_the_server_will_not_continue_it(tmp_path):
    db, audit = audited_run(tmp_path)
    assert verify(audit, db).returncode == 0
    lines = audit.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    audit.write_bytes(b"".join(lines[:-2]))  # the last two records (the reads) gone
    alone = verify(audit, no_anchor=True)  # the chain alone cannot tell: why the anchor exists
    assert alone.returncode == 0 and "the tail is not verified (--no-anchor)" in alone.stdout, alone.stdout
    checked = verify(audit, db)
    assert checked.returncode == 1, checked.stdout
    assert "FAIL" in checked.stdout and "4 records" in checked.stdout and "anchors 6" in checked.stdout
    # Without --db, verify holds the file to serve's default ledger ...
    by_default = verify_with_default_db(audit, db)
    assert by_default.returncode == 1 and "anchors 6" in by_default.stdout, by_default.stdout
    # ... and where there is none it does not say "chain OK" and exit 0.
    nowhere = verify_with_default_db(audit, tmp_path / "no-such.db")
    assert nowhere.returncode == 1, nowhere.stdout
    assert "FAIL the tail is not verified: no ledger at" in nowhere.stdout and "--no-anchor" in nowhere.stdout
    line = serve_refuses(tmp_path)
    assert str(audit) in line and "anchors 6 records" in line and "audit verify --db" in line
    assert len(audit.read_bytes().splitlines()) == 4  # nothing was appended to it


def test_a_deleted_audit_log_is_found(tmp_path):
    _, audit = audited_run(tmp_path)
    audit.unlink()
    assert "anchors 6 records" in serve_refuses(tmp_path)


def test_an_edited_last_record_is_found(tmp_path):
    db, audit = audited_run(tmp_path)
    lines = audit.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b'"code":"OK"', b'"code":"NOT_FOUND"')
    audit.write_bytes(b"".join(lines))
    assert verify(audit, no_anchor=True).returncode == 0  # nothing follows the last line to break
    checked = verify(audit, db)
    assert checked.returncode == 1 and "record 6" in checked.stdout, checked.stdout
    assert "does not match" in serve_refuses(tmp_path)


def test_a_recomputed_chain_is_found(tmp_path):
    """A settle's record removed from the middle and every digest after it
    recomputed: a chain that holds on its own, and a file of the same length
    in records when one fake is appended."""
    db, audit = audited_run(tmp_path)
    lines = audit.read_bytes().splitlines()
    fake = json.loads(lines[-1])
    fake["time"] = "2030-01-01T00:00:00.000+00:00"
    forged = rechain([*lines[:1], *lines[2:], json.dumps(fake).encode()])
    audit.write_bytes(forged)
    assert verify(audit, no_anchor=True).returncode == 0
    checked = verify(audit, db)
    assert checked.returncode == 1 and "does not match" in checked.stdout, checked.stdout
    assert "does not match" in serve_refuses(tmp_path)


def test_records_after_the_last_ledger_write_are_anchored_within_a_second(tmp_path):
    """Reads commit nothing, yet their records are anchored by the server's
    anchor tick (ANCHOR_SECONDS) while it runs, and on close."""
    from settlesim.server.audit import ANCHOR_SECONDS
    from settlesim.server.ledger.sqlite import read_audit_anchor

    running = start(config(tmp_path))
    his = Hospital.connect(running.target, CANCER_HOSPITAL)
    try:
        settle(his)
        for _ in range(3):
            his.verify(QINGHAI_PERSON, TUMOUR, "2021-12-09")
        time.sleep(ANCHOR_SECONDS * 2.5)
        anchor = read_audit_anchor(tmp_path / "ledger.db", tmp_path / "audit.jsonl")
        assert anchor is not None and anchor.records == 4
        his.verify(QINGHAI_PERSON, TUMOUR, "2021-12-09")
    finally:
        his.close()
        running.stop(grace=1)
    anchor = read_audit_anchor(tmp_path / "ledger.db", tmp_path / "audit.jsonl")
    assert (
        anchor is not None
        and anchor.records == 5
        and anchor.size == (tmp_path / "audit.jsonl").stat().st_size
    )


def test_a_restart_continues_the_chain_and_its_anchor(tmp_path):
    db, audit = audited_run(tmp_path)
    audited_run(tmp_path, settles=1, verifies=1)
    checked = verify(audit, db)
    assert checked.returncode == 0 and "8 records" in checked.stdout, checked.stdout


def test_a_rotated_log_needs_new_chain_and_still_verifies_against_its_retired_anchor(tmp_path):
    """Rotation: stop, move the file aside, start with --audit-new-chain. The
    moved file still verifies against the ledger; without the flag a missing
    file is a truncation; with it, a file that still has records is refused."""
    db, audit = audited_run(tmp_path)
    archive = tmp_path / "audit-1.jsonl"
    audit.rename(archive)
    serve_refuses(tmp_path)
    running = start(config(tmp_path, audit_new_chain=True))
    running.stop(grace=1)
    assert audit.exists() and verify(audit, db).returncode == 0
    checked = verify(archive, db)
    assert checked.returncode == 0 and "retired" in checked.stdout, checked.stdout
    archive.write_bytes(b"".join(archive.read_bytes().splitlines(keepends=True)[:-1]))
    assert verify(archive, db).returncode == 1
    audited_run(tmp_path, settles=1, verifies=0)
    assert "--audit-new-chain" in serve_refuses(tmp_path, "--audit-new-chain")


# --- item 9: fail-closed -------------------------------------------------------------------


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_with_the_audit_disk_full_no_call_is_answered_ok_without_its_record(tmp_path, small_disk, caplog):
    """300 settles with the audit file on a full disk (issue 9 item 9): every
    settle answered OK has its record; every other one is UNAVAILABLE /
    AUDIT_UNAVAILABLE with its record in the file or the error log, health is
    NOT_SERVING, and once there is room again the HIS's retries with the same
    msgids settle each visit once (the one that committed before its record
    failed replays) and are audited."""
    audit = small_disk / "audit.jsonl"
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (1024 * 1024 - 40 * 1024))  # ~40 KiB left: about 100 records
    running = start(config(tmp_path, audit_log=audit))
    his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
    answered, unavailable = [], []
    try:
        with caplog.at_level("ERROR", logger="settlesim.server"):
            for n in range(300):
                msgid = f"{CANCER_HOSPITAL}2021120900{n:04d}"
                try:
                    answered.append(settle(his, msgid).settlement.settlement_id)
                except SettlementUncertain as uncertain:  # what the HIS makes of a withheld answer
                    rejection = rejection_of(uncertain.last_error)
                    assert (rejection.code, rejection.reason) == ("UNAVAILABLE", "AUDIT_UNAVAILABLE"), (
                        rejection
                    )
                    unavailable.append(msgid)
        assert answered and len(unavailable) > 100
        assert _health(running.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        logged = "\n".join(r.getMessage() for r in caplog.records if "AUDIT_UNAVAILABLE" in r.getMessage())
        records = [json.loads(line) for line in audit.read_bytes().splitlines()]  # none torn
        assert sorted(r["settlement_id"] for r in records if r["code"] == "OK") == sorted(answered)
        refusals = {r["msgid"] for r in records if r["code"] != "OK"}
        assert all(
            (r["code"], r["reason"]) == ("UNAVAILABLE", "AUDIT_UNAVAILABLE")
            for r in records
            if r["code"] != "OK"
        )
        assert all(msgid in refusals or msgid in logged for msgid in unavailable)

        filler.unlink()  # room again; the HIS retries what was not answered
        retrying = Hospital.connect(running.target, CANCER_HOSPITAL, retries=3)
        try:
            retried = [settle(retrying, msgid) for msgid in unavailable]
        finally:
            retrying.close()
        assert _health(running.target) == health_pb2.HealthCheckResponse.SERVING
        assert retried[0].replayed  # the first to fail had committed before its record failed
        assert running.ledger.counts() == {"settled": 300}
    finally:
        his.close()
        running.stop(grace=1)
    checked = verify(audit, tmp_path / "ledger.db")
    assert checked.returncode == 0, checked.stdout
    settled = {r["msgid"] for r in map(json.loads, audit.read_bytes().splitlines()) if r["code"] == "OK"}
    assert len(settled) == 300


# --- item 10: garbage in the file -----------------------------------------------------------


def test_audit_verify_reports_invalid_utf8_and_garbage_by_line_without_a_traceback(tmp_path):
    _, audit = audited_run(tmp_path, settles=1, verifies=1)
    good = audit.read_bytes()
    audit.write_bytes(good + b'{"rpc":"\xff\xfe"}\n' + b"[1, 2]\n" + b"\x00\x01 not json\n")
    checked = verify(audit, no_anchor=True)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert "line 3: not UTF-8" in checked.stdout
    assert "line 4: not a JSON object" in checked.stdout
    assert "line 5: not JSON" in checked.stdout
    assert "5 records" in checked.stdout


def test_after_kill_9_the_unanchored_tail_is_continued_when_it_chains_from_the_anchor(tmp_path, server_process):
    """The window: records written after the last anchor (a kill -9 within
    ANCHOR_SECONDS of them) are not anchored, but a restart still checks that
    they chain from the anchored head, then anchors them."""
    db, audit = audited_run(tmp_path)
    served = server_process(db, "--audit-log", str(audit), "--log-level", "error")
    his = Hospital.connect(served.target, CANCER_HOSPITAL)
    try:
        his.verify(QINGHAI_PERSON, TUMOUR, "2021-12-09")
    finally:
        his.close()
    served.stop(signal.SIGKILL)
    assert len(audit.read_bytes().splitlines()) == 7
    served = server_process(db, "--audit-log", str(audit), "--log-level", "error")
    served.stop()
    checked = verify(audit, db)
    assert checked.returncode == 0 and "7 records" in checked.stdout, checked.stdout
