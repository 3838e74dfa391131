"""The call journal and the check runs kept in its file under storage faults: a
full disk and a damaged journal end in a documented status or one clear line,
never UNKNOWN/INTERNAL, and a run whose journal lost entries is not graded."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import test_storage_faults
from conftest import CANCER_HOSPITAL, FUWAI
from settlesim.clients.hischeck.command import Connection
from settlesim.clients.hischeck.command import start as begin
from settlesim.clients.hospital import Hospital
from settlesim.clients.rejections import rejection_of
from settlesim.server.app import ServerConfig, start
from settlesim.server.journal import journal_path
from settlesim.v1 import his_check_pb2 as hc
from settlesim.v1 import his_check_pb2_grpc as hc_grpc
from test_storage_faults import QINGHAI, QINGHAI_FEES, TUMOUR, fill, one_line, serve_exits

from settlesim.cli import main

small_disk = test_storage_faults.small_disk  # the 2 MiB tmpfs, mounted per test


def refusal_of(call) -> tuple[grpc.StatusCode, str, dict[str, str], str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    rejection = rejection_of(caught.value)
    return caught.value.code(), rejection.reason, dict(rejection.metadata), caught.value.details()


def test_check_run_calls_on_a_full_disk_are_unavailable_naming_the_journal(small_disk):
    running = start(ServerConfig(port=0, db_path=small_disk / "l.db", max_workers=4))
    try:
        with grpc.insecure_channel(running.target) as channel:
            admin = hc_grpc.HisCheckServiceStub(channel)
            opened = admin.OpenRun(hc.OpenRunRequest(institution_code=CANCER_HOSPITAL, scenario="reversal"))
            filler = fill(small_disk)
            try:
                code, reason, metadata, details = refusal_of(
                    lambda: admin.OpenRun(hc.OpenRunRequest(institution_code=FUWAI, scenario="x"))
                )
                assert code == grpc.StatusCode.UNAVAILABLE, details
                assert reason == "LEDGER_UNAVAILABLE" and metadata["cause"] == "disk_full", details
                assert metadata["store"].endswith("l.journal.db") and "call journal" in details
                # Closing writes too: the same refusal, and the run stays open.
                code, reason, metadata, _ = refusal_of(
                    lambda: admin.CloseRun(hc.CloseRunRequest(run_id=opened.run.run_id))
                )
                assert (code, reason, metadata["cause"]) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "LEDGER_UNAVAILABLE",
                    "disk_full",
                )
            finally:
                filler.unlink()
            closed = admin.CloseRun(hc.CloseRunRequest(run_id=opened.run.run_id))
            assert closed.run.closed_at
    finally:
        running.stop(grace=1)


def test_a_run_whose_journal_lost_entries_is_not_graded(small_disk, capsys):
    running = start(ServerConfig(port=0, db_path=small_disk / "l.db", max_workers=4))
    assert running.journal is not None
    try:
        started = begin("reversal", CANCER_HOSPITAL, Connection(running.target))
        run_id = started.run.run_id
        his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
        calls = 0
        try:
            filler = fill(small_disk)
            try:
                # Calls go on (refused by the full ledger, or settled into its WAL's room)
                # until the journal's writer fails to store a batch.
                while running.journal.lost(run_id) == 0:
                    assert calls < 200, "the journal never failed on the full disk"
                    calls += 1
                    with contextlib.suppress(grpc.RpcError):
                        his.settle(QINGHAI, TUMOUR, "2021-12-08", QINGHAI_FEES)
                    running.journal.flush()
            finally:
                filler.unlink()
        finally:
            his.close()
        running.journal.flush()
        lost = running.journal.lost(run_id)
        stored = running.journal.entries(run_id=run_id)
        assert lost >= 1 and len(stored) + lost == calls  # every call is either stored or counted lost
        assert main(["his-check", "finish", run_id, "--target", running.target]) == 2
        err = capsys.readouterr().err
        assert f"journal incomplete: {lost} entries lost" in err and err.count("\n") == 1, err
    finally:
        running.stop(grace=1)


# --- a damaged journal ---------------------------------------------------------------------------


def garbage_journal_beside_a_good_ledger(tmp_path: Path) -> tuple[Path, Path]:
    ledger = tmp_path / "l.db"
    running = start(ServerConfig(port=0, db_path=ledger, max_workers=2))
    running.stop(grace=1)
    journal = journal_path(ledger)
    journal.write_bytes(b"this is not a database at all " * 200)
    for leftover in (Path(f"{journal}-wal"), Path(f"{journal}-shm")):
        leftover.unlink(missing_ok=True)
    return ledger, journal


def test_serve_on_a_damaged_journal_names_the_journal_not_the_ledger(tmp_path):
    ledger, journal = garbage_journal_beside_a_good_ledger(tmp_path)
    done = serve_exits(ledger)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.splitlines()[-1]  # after the ledger's own start-up log line
    assert line.startswith("settlesim: error: the call journal"), line
    assert str(journal) in line and "never money" in line and "move it aside" in line
    assert f"ledger {ledger}:" not in line
    journal.rename(f"{journal}.damaged")  # as the line says: the server starts a new journal
    running = start(ServerConfig(port=0, db_path=ledger, max_workers=2))
    running.stop(grace=1)


@pytest.mark.parametrize("command", ["show", "export"])
def test_journal_show_and_export_on_a_damaged_journal_is_one_line(tmp_path, command):
    ledger, journal = garbage_journal_beside_a_good_ledger(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "settlesim", "journal", command, "--db", str(ledger)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line(done, str(journal), "cannot be read")
