"""The call journal beside the ledger, and check runs as the server keeps them:
every call recorded (who, what, outcome, latency, fault), queried by institution,
run, RPC, msgid and time, read by `settlesim journal show|export`; runs routed by
institution or session header, persisted across a restart, ended by a timeout."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL, FUWAI, refused, settlesim
from google.protobuf import json_format
from settlesim.clients.hischeck.command import Connection, HisCheckError, start
from settlesim.clients.hospital import Fee, Hospital, SettlementUncertain
from settlesim.server import journal as journal_module
from settlesim.server.app import ServerConfig
from settlesim.server.app import start as start_server
from settlesim.server.console import reads
from settlesim.server.console.reads import read_only
from settlesim.server.faults import plan_from_flags
from settlesim.server.journal import CallNote, Journal, _Clock, journal_path
from settlesim.v1 import his_check_pb2 as hc
from settlesim.v1 import his_check_pb2_grpc as hc_grpc
from settlesim.v1 import settlement_service_pb2 as pb

QINGHAI = "63000000000000000001"
FEES = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]  # fund 12963, patient 5000 (seed 002)


def journal_of(server) -> list:  # type: ignore[no-untyped-def]
    server.journal.flush()
    return server.journal.entries()


def test_journal_path_is_beside_the_ledger():
    assert journal_path(Path("/x/settlesim.db")) == Path("/x/settlesim.journal.db")
    assert journal_path(Path("/x/ledger")) == Path("/x/ledger.journal.db")


def test_every_call_is_journaled_with_who_what_outcome_and_latency(server, hospital, tmp_path):
    his = hospital(CANCER_HOSPITAL)
    settled = his.settle(QINGHAI, "M00503", "2021-12-09", FEES)
    refused(lambda: hospital(FUWAI).settle(QINGHAI, "M00503", "2021-12-09", FEES))
    his.get(settled.settlement.settlement_id)
    entries = journal_of(server)
    assert journal_path(tmp_path / "ledger.db").is_file()
    assert [(e.rpc, e.institution, e.code, e.reason) for e in entries] == [
        ("SettleVisit", CANCER_HOSPITAL, "OK", ""),
        ("SettleVisit", FUWAI, "FAILED_PRECONDITION", "DISEASE_NOT_OPENED"),
        ("GetSettlement", CANCER_HOSPITAL, "OK", ""),
    ]
    first = entries[0]
    assert first.door == "grpc" and first.identity == "" and first.session == "" and first.run_id == ""
    assert first.msgid == settled.settlement.msgid and len(first.request_hash) == 64
    assert first.request["request"]["visit"]["person"]["person_no"] == QINGHAI
    assert first.answer["settlement"]["totals"]["fund_pays_fen"] == "12963"  # protobuf JSON: int64 as text
    assert first.latency_ms > 0 and first.time.startswith("20") and first.undelivered is False
    assert entries[1].answer is None


def test_the_request_hash_is_of_the_bytes_the_his_sent(server, hospital):
    """The writer leaves the hash to the reader; read, it is SHA-256 of the bytes the call
    carried: of the SettlementRequest for a settle, of the whole request otherwise."""
    his = hospital(CANCER_HOSPITAL)
    request = his.settlement_request(QINGHAI, "M00503", "2021-12-09", FEES)
    settled = his.settle_request(request)
    his.get(settled.settlement.settlement_id)
    settle, get = journal_of(server)
    assert settle.answer == json_format.MessageToDict(settled, preserving_proto_field_name=True)  # the bytes sent
    assert settle.request_hash == hashlib.sha256(request.SerializeToString()).hexdigest()
    asked = pb.GetSettlementRequest(
        institution_code=CANCER_HOSPITAL, settlement_id=settled.settlement.settlement_id
    )
    assert get.request_hash == hashlib.sha256(asked.SerializeToString()).hexdigest()
    with read_only(server.journal.path) as db:  # the console reads it the same way
        assert reads.journal_entry(db, settle.seq).request_hash == settle.request_hash


def test_a_row_written_with_its_hash_is_read_with_that_hash(tmp_path):
    """Journals written before the hash was left to the reader keep theirs."""
    journal = Journal(tmp_path / "j.db")
    try:
        asked = pb.GetSettlementRequest(msgid="m").SerializeToString()
        row = ("2026-12-01T08:00:00.000000+00:00", "grpc", "GetSettlement", "", "H1", "", "", "his", "m",
               "stored-hash", "OK", "", "", 1.0, 0, asked, None)  # fmt: skip
        journal._store([row])
        [entry] = journal.entries()
        assert entry.request_hash == "stored-hash" and entry.request == {"msgid": "m"}
    finally:
        journal.close()


OLD_INDEXES = """
CREATE INDEX journal_by_run ON journal (run_id, seq);
CREATE INDEX journal_by_institution ON journal (institution, time);
CREATE INDEX journal_by_session_seq ON journal (session, seq);
"""  # what a journal written before session 10 had besides the indexes kept


def test_a_journal_written_with_the_old_indexes_is_opened_with_the_lean_ones(tmp_path):
    path = tmp_path / "old.journal.db"
    journal = Journal(path)
    row = ("2026-12-01T08:00:00.000000+00:00", "grpc", "GetSettlement", "", "H1", "s1", "r1", "his", "m",
           "", "OK", "", "", 1.0, 0, pb.GetSettlementRequest(msgid="m").SerializeToString(), None)  # fmt: skip
    journal._store([row, (*row[:5], "", "", *row[7:])])
    journal.connection.executescript(OLD_INDEXES)
    journal.close()
    journal = Journal(path)
    try:
        names = {
            name
            for (name,) in journal.connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert names == {"journal_by_msgid", "journal_by_institution_seq", "journal_by_rpc_seq",
                         "journal_of_runs", "journal_of_sessions"}  # fmt: skip
        assert [e.seq for e in journal.entries(run_id="r1")] == [1]
        assert [e.seq for e in journal.entries(institution="H1")] == [1, 2]
        with read_only(path) as db:
            assert [e.seq for e in reads.journal_page(db, reads.JournalFilter(session="s1"))] == [1]
    finally:
        journal.close()


def test_flush_ends_the_writers_gathering(tmp_path, monkeypatch):
    """The writer waits GATHER_SECONDS after a call for others to batch with it; a grader's
    flush (and close) does not wait that out."""
    monkeypatch.setattr(journal_module, "GATHER_SECONDS", 5.0)
    journal = Journal(tmp_path / "j.db")
    try:
        journal.submit(CallNote("GetSettlement", pb.GetSettlementRequest(msgid="m")))
        time.sleep(0.2)  # the writer has the note and gathers
        began = time.monotonic()
        journal.flush()
        assert time.monotonic() - began < 2.5
        assert [e.msgid for e in journal.entries()] == ["m"]
        journal.submit(CallNote("GetSettlement", pb.GetSettlementRequest(msgid="n")))
        time.sleep(0.2)
    finally:
        began = time.monotonic()
        journal.close()
    assert time.monotonic() - began < 2.5


def test_the_writers_clock_writes_what_datetime_writes():
    clock, start = _Clock(), time.time()
    for when in [start + n * 0.0000007 for n in range(20_000)] + [start + n / 3 for n in range(200)]:
        assert clock.iso(when) == datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")


def test_injected_global_faults_are_journaled(tmp_path):
    faults = plan_from_flags(commit_then_drop=1.0, seed=1)
    running = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", faults=faults, max_workers=2))
    try:
        his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
        with pytest.raises(SettlementUncertain):
            his.settle(QINGHAI, "M00503", "2021-12-09", FEES)
        his.close()
        [entry] = journal_of(running)
        assert (entry.code, entry.reason, entry.fault) == (
            "UNAVAILABLE",
            "INJECTED_FAULT",
            "commit_then_drop",
        )
        assert entry.answer["settlement"]["settlement_id"]  # the answer that was made, then dropped
    finally:
        running.stop(grace=1)


def test_queries_by_institution_rpc_msgid_and_time(server, hospital):
    cancer, fuwai = hospital(CANCER_HOSPITAL), hospital(FUWAI)
    a = cancer.settle(QINGHAI, "M00503", "2021-12-09", FEES)
    fuwai.reconcile("2021-12-01", "2021-12-31")
    server.journal.flush()
    assert [e.rpc for e in server.journal.entries(institution=FUWAI)] == ["Reconcile"]
    assert [e.institution for e in server.journal.entries(rpc="SettleVisit")] == [CANCER_HOSPITAL]
    assert len(server.journal.entries(msgid=a.settlement.msgid)) == 1
    everything = server.journal.entries()
    assert server.journal.entries(since=everything[-1].time) == everything[-1:]
    assert server.journal.entries(until=everything[0].time) == []
    assert server.journal.entries(run_id="no-such-run") == []


def test_the_writer_thread_keeps_every_call_of_a_concurrent_load(server, hospital):
    his = hospital(CANCER_HOSPITAL)

    def one(n: int) -> None:
        his.settle(
            QINGHAI, "M00503", f"2022-{1 + n % 12:02d}-{1 + n % 28:02d}", [Fee("A-CONSULT-001", 100 + n)]
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(200)))
    entries = journal_of(server)
    assert len(entries) == 200 and len({e.msgid for e in entries}) == 200
    assert all(e.code == "OK" for e in entries)


def test_journal_show_and_export_read_the_file(server, hospital, tmp_path):
    his = hospital(CANCER_HOSPITAL)
    settled = his.settle(QINGHAI, "M00503", "2021-12-09", FEES)
    his.reconcile("2021-12-01", "2021-12-31")
    server.journal.flush()
    db = str(tmp_path / "ledger.db")
    shown = settlesim("journal", "show", "--db", db, "--rpc", "SettleVisit")
    assert shown.returncode == 0, shown.stderr
    assert settled.settlement.msgid in shown.stdout and "1 entries" in shown.stdout
    exported = settlesim("journal", "export", "--db", db)
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["rpc"] for e in lines] == ["SettleVisit", "Reconcile"]
    assert lines[0]["answer"]["settlement"]["settlement_id"] == settled.settlement.settlement_id
    missing = settlesim("journal", "show", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no journal at" in missing.stderr
    no_run = settlesim("journal", "export", "--db", db, "--as-case")
    assert no_run.returncode == 2 and "--as-case needs --run" in no_run.stderr


# --- runs as the server keeps them ----------------------------------------------------------------


def open_run(target: str, institution: str, timeout_s: int = 0, faults=()) -> hc.Run:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(target) as channel:
        return (
            hc_grpc.HisCheckServiceStub(channel)
            .OpenRun(
                hc.OpenRunRequest(
                    institution_code=institution, scenario="test", timeout_s=timeout_s, faults=faults
                )
            )
            .run
        )


def test_an_open_run_takes_its_institutions_calls_into_its_own_session(server, hospital):
    run = open_run(server.target, CANCER_HOSPITAL)
    cancer, fuwai = hospital(CANCER_HOSPITAL), hospital(FUWAI)
    settled = cancer.settle(QINGHAI, "M00503", "2021-12-09", FEES)
    fuwai.reconcile("2021-12-01", "2021-12-31")
    # the deductible starts unused in the run's session: fund 12963 (as in a fresh ledger)
    assert settled.settlement.totals.fund_pays_fen == 12963
    entries = journal_of(server)
    assert [(e.institution, e.run_id, e.session) for e in entries] == [
        (CANCER_HOSPITAL, run.run_id, run.session),
        (FUWAI, "", ""),
    ]
    assert [s.settlement_id for s in server.ledger.session_settlements(run.session)] == [
        settled.settlement.settlement_id
    ]
    assert server.ledger.session_settlements("") == []  # the default namespace is untouched


def test_a_session_header_selects_the_run_and_another_session_stays_out(server, hospital):
    run = open_run(server.target, CANCER_HOSPITAL)
    hospital(CANCER_HOSPITAL, session=run.session).reconcile("2021-12-01", "2021-12-31")
    hospital(CANCER_HOSPITAL, session="my-own-sandbox").reconcile("2021-12-01", "2021-12-31")
    entries = journal_of(server)
    assert [(e.run_id, e.session) for e in entries] == [(run.run_id, run.session), ("", "my-own-sandbox")]


def test_a_run_survives_a_restart_and_ends_at_its_timeout(tmp_path):
    db = tmp_path / "l.db"
    running = start_server(ServerConfig(port=0, db_path=db, max_workers=2))
    run = open_run(running.target, CANCER_HOSPITAL, timeout_s=7)  # a restart takes well under 7 s
    running.stop(grace=1)
    again = start_server(ServerConfig(port=0, db_path=db, max_workers=2))
    try:
        his = Hospital.connect(again.target, CANCER_HOSPITAL)
        his.reconcile("2021-12-01", "2021-12-31")
        # a new run for the institution is refused while the restored one is open
        with pytest.raises(HisCheckError, match="RUN_ALREADY_OPEN"):
            start("reversal", CANCER_HOSPITAL, Connection(again.target))
        time.sleep(max(0.0, datetime.fromisoformat(run.expires_at).timestamp() - time.time()) + 0.2)
        his.reconcile("2021-12-01", "2021-12-31")
        his.close()
        assert [e.run_id for e in journal_of(again)] == [run.run_id, ""]
    finally:
        again.stop(grace=1)


def test_no_journal_means_no_file_and_no_check_runs(tmp_path):
    running = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", journal=False, max_workers=2))
    try:
        Hospital.connect(running.target, CANCER_HOSPITAL).settle(QINGHAI, "M00503", "2021-12-09", FEES)
        assert not journal_path(tmp_path / "l.db").exists()
        with pytest.raises(HisCheckError, match="has no check runs"):
            start("reversal", CANCER_HOSPITAL, Connection(running.target))
    finally:
        running.stop(grace=1)


def test_targeted_faults_hit_exactly_the_calls_they_name(server, hospital):
    faults = [hc.TargetedFault(rpc="Reconcile", kind="unavailable", nth=[2, 4])]
    open_run(server.target, CANCER_HOSPITAL, faults=faults)
    his = hospital(CANCER_HOSPITAL, retries=0)
    outcomes = []
    for _ in range(5):
        try:
            his.reconcile("2021-12-01", "2021-12-31")
            outcomes.append("OK")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)
    assert outcomes == ["OK", "UNAVAILABLE", "OK", "UNAVAILABLE", "OK"]
    assert [e.fault for e in journal_of(server)] == ["", "unavailable", "", "unavailable", ""]


@pytest.mark.parametrize("calls", [1, 3, 64, 65, 127, 500])
def test_a_batch_of_any_size_is_stored_whole_and_in_order(tmp_path, calls):
    """The writer inserts a batch by statements of 64, 32, ... 1 rows (Journal._store)."""
    journal = Journal(tmp_path / "j.db")
    try:
        row = ("2026-12-01T08:00:00.000000+00:00", "grpc", "GetSettlement", "", "H1", "", "", "his", "m",
               "", "OK", "", "", 1.0, 0, pb.GetSettlementRequest(msgid="m").SerializeToString(), None)  # fmt: skip
        journal._store([(*row[:8], f"m{n}", *row[9:]) for n in range(calls)])
        assert [(e.seq, e.msgid) for e in journal.entries()] == [(n + 1, f"m{n}") for n in range(calls)]
    finally:
        journal.close()


@pytest.mark.parametrize("audited", [False, True], ids=["answer-as-bytes", "audit-log-reads-the-message"])
def test_the_journal_keeps_the_bytes_sent_whether_or_not_an_audit_log_reads_the_answer(tmp_path, audited):
    """Without an audit log the journaled handler hands gRPC the answer's bytes it journals; with
    one (it reads the message outside the journal) it hands on the message: either way the
    journal keeps what the HIS got, and the request's bytes are those the HIS sent."""
    audit = tmp_path / "audit.jsonl" if audited else None
    running = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", audit_log=audit, max_workers=2))
    try:
        his = Hospital.connect(running.target, CANCER_HOSPITAL, retries=0)
        request = his.settlement_request(QINGHAI, "M00503", "2021-12-09", FEES)
        settled = his.settle_request(request)
        his.close()
        [entry] = journal_of(running)
        assert entry.answer == json_format.MessageToDict(settled, preserving_proto_field_name=True)
        assert entry.request == json_format.MessageToDict(
            pb.SettleVisitRequest(request=request), preserving_proto_field_name=True
        )
        if audited:
            assert settled.settlement.settlement_id in audit.read_text()
    finally:
        running.stop(grace=1)


# Two processes opening one new journal at once, 60 times (in a child of its own: it forks,
# and this test process may hold gRPC threads). PRAGMA journal_mode=WAL is refused to all
# but one of them, without SQLite waiting for the lock; before the journal waited for the
# winner (server/ledger/sqlite/files.py switch_to_wal) 4 tries in 30 failed on this machine
# with "cannot be read (database is locked)", and so did `serve --processes 2` in CI.
OPEN_TOGETHER = """
import multiprocessing, os, sys, tempfile
from settlesim.server.journal import Journal
from settlesim.server.runs import RunRegistry

def open_it(path, barrier, answers):
    barrier.wait()
    try:
        journal = Journal(path)
        RunRegistry(journal)
        journal.close()
        answers.put("ok")
    except Exception as error:
        answers.put(str(error))

fork = multiprocessing.get_context("fork")
refused = []
for _ in range(60):
    path = os.path.join(tempfile.mkdtemp(dir=sys.argv[1]), "new.journal.db")
    barrier, answers = fork.Barrier(2), fork.Queue()
    both = [fork.Process(target=open_it, args=(path, barrier, answers)) for _ in range(2)]
    for process in both:
        process.start()
    for process in both:
        process.join(60)
    refused += [answer for answer in (answers.get(), answers.get()) if answer != "ok"]
print(len(refused), refused[:1])
"""


def test_processes_opening_one_new_journal_together_all_open_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_TOGETHER, str(tmp_path)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 []"


def _row(n: int, session: str = "", run_id: str = "", request: bytes = b"") -> tuple:
    """A stored journal row (COLUMNS[1:]) whose msgid says which call it was."""
    return ("2026-12-01T08:00:00.000000+00:00", "grpc", "GetSettlement", "", "H1", session, run_id, "his",
            f"m{n}", "", "OK", "", "", 1.0, 0, request, None)  # fmt: skip


def _kept(journal: Journal) -> list[int]:
    return [seq for (seq,) in journal.connection.execute("SELECT seq FROM journal ORDER BY seq")]


def test_the_journal_keeps_its_newest_calls_and_every_check_run_s(tmp_path, monkeypatch):
    """keep_calls=10: the newest 10 entries (by seq) stay; of the older ones only check runs'
    calls, at most _PRUNE_ROWS (4 here) deleted with each batch. Entries 1..40 (seq = n): 3
    and 4 in a session (a Locust user's sandbox: not kept for that), 8, 16, 24, 32 and 40 in a
    check run."""
    monkeypatch.setattr(journal_module, "_PRUNE_ROWS", 4)
    journal = Journal(tmp_path / "j.db", keep_calls=10)
    try:
        special = {3: {"session": "s1"}, 4: {"session": "s1"}} | {n: {"run_id": "r1"} for n in (8, 16, 24, 32, 40)}
        journal._store([_row(n, **special.get(n, {})) for n in range(1, 41)])
        # newest 40: calls up to seq 30 are due; the oldest four went (1, 2 and the session's 3, 4)
        assert _kept(journal)[:6] == [5, 6, 7, 8, 9, 10]
        journal._store([_row(41)])  # up to 31 due: the next four not in the run (5, 6, 7, 9)
        assert _kept(journal)[:6] == [8, 10, 11, 12, 13, 14]
        # one call a batch, four deleted: the limit gains one a batch, the deletions four, until
        # 47 (due up to 37: 33-36 go); 48 deletes 37 and 38, then each batch the one call that
        # fell out (40, the run's, stays)
        for n in range(42, 52):
            journal._store([_row(n)])
        assert _kept(journal) == [8, 16, 24, 32, 40, *range(42, 52)]
        assert [e.seq for e in journal.entries(run_id="r1")] == [8, 16, 24, 32, 40]
    finally:
        journal.close()


def test_a_journal_asked_to_keep_fewer_than_no_calls_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"keep_calls must be 0 \(keep every call\) or more, not -1"):
        Journal(tmp_path / "j.db", keep_calls=-1)


def test_deletions_rolled_back_with_their_batch_are_tried_again(tmp_path, monkeypatch):
    """A batch whose COMMIT fails is rolled back whole, its deletions too; the next batch
    deletes those calls again (the watermark moves only with a COMMIT). The failure is
    injected where the journal's connection runs COMMIT."""
    monkeypatch.setattr(journal_module, "_PRUNE_ROWS", 4)
    journal = Journal(tmp_path / "j.db", keep_calls=10)
    try:
        journal._store([_row(n) for n in range(1, 21)])  # due up to 10: 1-4 go
        real, fail = journal._db, {"commit": True}

        class FailingCommit:
            def execute(self, sql: str, *args: object) -> object:
                if sql == "COMMIT" and fail.pop("commit", False):
                    raise sqlite3.OperationalError("disk I/O error")
                return real.execute(sql, *args)

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

        journal._db = FailingCommit()  # type: ignore[assignment]
        with pytest.raises(sqlite3.OperationalError):
            journal._store([_row(21)])  # would delete 5-8; rolled back with its row
        assert not real.in_transaction and _kept(journal)[:2] == [5, 6]
        journal._store([_row(22)])  # seq 21 again (its row rolled back): due up to 11, 5-8 go now
        assert _kept(journal)[:2] == [9, 10]
    finally:
        journal._db = real
        journal.close()


def test_a_journal_told_to_keep_every_call_deletes_none(tmp_path):
    journal = Journal(tmp_path / "j.db", keep_calls=0)
    try:
        for start in range(1, 60, 10):
            journal._store([_row(n) for n in range(start, start + 10)])
        assert _kept(journal) == list(range(1, 61))
    finally:
        journal.close()


def test_a_journal_that_keeps_its_newest_calls_stops_growing(tmp_path):
    """20 batches of 200 calls of 3 KB each, the newest 1,000 kept: from the 6th batch on each
    batch deletes as many as it adds (200, under _PRUNE_ROWS), so SQLite reuses the freed pages
    and the file does not grow past its size after the 10th. Keeping every call, it grows
    with each batch (the control)."""
    sizes = {}
    for keep in (1000, 0):
        journal = Journal(tmp_path / f"keep-{keep}.db", keep_calls=keep)
        try:
            pages = []
            for batch in range(20):
                journal._store([_row(batch * 200 + i, request=bytes(3000)) for i in range(200)])
                journal.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                pages.append(journal.connection.execute("PRAGMA page_count").fetchone()[0])
            sizes[keep] = pages
        finally:
            journal.close()
    assert sizes[1000][19] <= sizes[1000][9]
    assert sizes[0][19] > sizes[0][9] * 1.8  # twice the calls: nearly twice the pages


def test_the_server_s_journal_keeps_what_serve_was_told(tmp_path):
    running = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", max_workers=2, journal_keep=7))
    try:
        assert running.journal is not None and running.journal.keep_calls == 7
    finally:
        running.stop()
    default = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", max_workers=2))
    try:
        assert default.journal is not None and default.journal.keep_calls == journal_module.KEEP_CALLS
    finally:
        default.stop()
