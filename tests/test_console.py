"""The console's HTTP side and the metrics, against real servers: /metrics after
a conformance run shows the counts the run made, gRPC reflection v1 lists the
services, the console's login when the server demands identity, and its
defaults on the command line."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import CANCER_HOSPITAL, settlesim
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from prometheus_client.parser import text_string_to_metric_families
from settlesim.clients.hospital import Fee, Hospital
from settlesim.clients.replay.command import ReplayOptions, conformance_cases_dir, replay
from settlesim.server.app import RunningServer, ServerConfig, start
from settlesim.server.console import reads
from settlesim.server.journal import Journal

RPC_OF_CALL = {
    "verify": "VerifyRegistration", "pre_settle": "PreSettleVisit", "settle": "SettleVisit",
    "reverse": "ReverseSettlement", "void": "VoidByMessageId", "get": "GetSettlement", "reconcile": "Reconcile",
}  # fmt: skip


@pytest.fixture
def console_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=8, console_port=0))
    yield running
    running.stop(grace=1)


def scrape(running: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, labels): value}, once the journal has stored every call."""
    assert running.journal is not None and running.console is not None
    running.journal.flush()
    text = httpx.get(f"{running.console.url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_after_a_conformance_run_show_the_calls_it_made(console_server, tmp_path):
    report = tmp_path / "run.json"
    options = ReplayOptions(target=console_server.target, json=report, tool="conformance")
    assert replay([conformance_cases_dir()], options) == 0
    # What the run saw, from its own report: each step's RPC and the outcome it got.
    calls: Counter[tuple[str, str]] = Counter()
    refusals: Counter[tuple[str, str]] = Counter()
    settled = fund = 0
    for case in json.loads(report.read_text())["cases"]:
        for step in case["steps"]:
            rpc, answer = RPC_OF_CALL[step["call"]], step["answer"] or {}
            error = answer.get("error")
            calls[(rpc, error["code"] if error else "OK")] += 1
            if error and error["reason"]:
                refusals[(rpc, error["reason"])] += 1
            if rpc == "SettleVisit" and not error and not answer.get("replayed"):
                settled += 1
                fund += int(answer["settlement"]["totals"].get("fund_pays_fen", 0))
    # Before the cases, replay probes the target once: an empty VerifyRegistration,
    # refused INVALID_ARGUMENT / FIELD_MISSING (clients/replay/target.py check_target).
    calls[("VerifyRegistration", "INVALID_ARGUMENT")] += 1
    refusals[("VerifyRegistration", "FIELD_MISSING")] += 1

    metrics = scrape(console_server)
    counted = {
        (dict(labels)["rpc"], dict(labels)["code"]): v for (name, labels), v in metrics.items()
        if name == "settlesim_calls_total"
    }  # fmt: skip
    assert counted == {key: float(n) for key, n in calls.items()}
    refused = {
        (dict(labels)["rpc"], dict(labels)["reason"]): v for (name, labels), v in metrics.items()
        if name == "settlesim_refusals_total"
    }  # fmt: skip
    assert refused == {key: float(n) for key, n in refusals.items()}
    assert metrics[("settlesim_settlements_total", ())] == settled > 40
    assert metrics[("settlesim_fund_paid_fen_total", ())] == fund
    latency = metrics[("settlesim_call_latency_seconds_count", (("rpc", "SettleVisit"),))]
    assert latency == sum(n for (rpc, _), n in calls.items() if rpc == "SettleVisit")
    # Every committed write went through a group commit of at least one write.
    batches = metrics[("settlesim_ledger_commit_batch_size_count", ())]
    writes = metrics[("settlesim_ledger_commit_batch_size_sum", ())]
    assert 0 < batches <= writes
    assert metrics[("settlesim_ledger_commit_seconds_count", ())] == batches
    assert ("settlesim_journal_queue_depth", ()) in metrics and (
        "settlesim_journal_lag_seconds",
        (),
    ) in metrics
    assert metrics[("settlesim_ledger_queue_depth", ())] == 0


def test_metrics_count_a_retry_as_a_call_but_not_as_a_second_settlement(console_server):
    his = Hospital.connect(console_server.target, CANCER_HOSPITAL)
    try:
        fees = [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
        first = his.settle(
            "63000000000000000001", "M00503", "2021-12-09", fees, msgid="H11010500001202112090900000001"
        )
        again = his.settle(
            "63000000000000000001", "M00503", "2021-12-09", fees, msgid="H11010500001202112090900000001"
        )
    finally:
        his.close()
    assert not first.replayed and again.replayed
    metrics = scrape(console_server)
    assert metrics[("settlesim_calls_total", (("code", "OK"), ("rpc", "SettleVisit")))] == 2
    assert metrics[("settlesim_settlements_total", ())] == 1
    assert metrics[("settlesim_fund_paid_fen_total", ())] == 12963  # Qinghai: (179.63 − 50.00) × 100 %


# --- reflection v1 -----------------------------------------------------------------------------


def _v1_reflection_classes() -> tuple[type, type]:
    """grpc.reflection.v1's request and response, written from the protocol's spec
    (only the list_services fields): a client that knows nothing of v1alpha."""
    file = descriptor_pb2.FileDescriptorProto(
        name="test_v1_reflection.proto", package="grpc.reflection.v1", syntax="proto3"
    )
    string, message = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
    )
    optional, repeated = (
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )

    def add(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            f = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name

    add(
        "ServerReflectionRequest",
        ("host", 1, string, optional, ""),
        ("list_services", 7, string, optional, ""),
    )
    add("ServiceResponse", ("name", 1, string, optional, ""))
    add("ListServiceResponse", ("service", 1, message, repeated, ".grpc.reflection.v1.ServiceResponse"))
    add(
        "ServerReflectionResponse",
        ("list_services_response", 6, message, optional, ".grpc.reflection.v1.ListServiceResponse"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
        ),
    )


def test_reflection_v1_lists_the_services(server):
    request_class, response_class = _v1_reflection_classes()
    with grpc.insecure_channel(server.target) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        answers = list(info(iter([request_class(list_services="*")]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert names == {
        "settlesim.v1.SettlementService", "settlesim.v1.HisCheckService", "settlesim.v1.PlatformService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection",
    }  # fmt: skip


def test_reflection_v1_describes_the_settlement_service(server):
    from grpc_reflection.v1alpha import reflection_pb2  # same wire format: a v1 call with these bytes

    with grpc.insecure_channel(server.target) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="settlesim.v1.SettlementService"
        )
        (answer,) = list(info(iter([request]), timeout=10))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in answer.file_descriptor_response.file_descriptor_proto
    ]
    services = {s.name for f in files for s in f.service}
    assert "SettlementService" in services


# --- the console's pages and its login -----------------------------------------------------


def test_journal_filters_and_pages(console_server):
    his = Hospital.connect(console_server.target, CANCER_HOSPITAL)
    try:
        for day in range(1, 56):  # 55 settles: more than one page of 50
            his.settle(
                "63000000000000000001", "M00503", f"2022-01-{(day % 28) + 1:02d}", [Fee("A-CONSULT-001", 100)]
            )
        his.verify("63000000000000000001", "M00503", "2022-02-01")
    finally:
        his.close()
    console_server.journal.flush()
    url = console_server.console.url
    rows = httpx.get(f"{url}/journal/rows").text
    assert rows.count("<tr data-seq=") == 50 and 'data-seq="56"' in rows and 'data-seq="6"' not in rows
    page = httpx.get(f"{url}/journal").text
    assert "/journal?before=7" in page  # older: keyset, from the last seq shown
    older = httpx.get(f"{url}/journal?before=7").text
    assert older.count("<tr data-seq=") == 6
    verify = httpx.get(f"{url}/journal/rows?rpc=VerifyRegistration").text
    assert verify.count("<tr data-seq=") == 1 and "VerifyRegistration" in verify
    assert httpx.get(f"{url}/journal/rows?outcome=refused").text.count("<tr data-seq=") == 0
    assert httpx.get(f"{url}/journal/rows?institution=H99999999999").text.count("<tr data-seq=") == 0


def test_console_of_a_secured_server_asks_for_its_token(tmp_path):
    running = start(
        ServerConfig(port=0, db_path=tmp_path / "ledger.db", console_port=0, console_token="s3cret-console")
    )
    try:
        url = running.console.url
        assert httpx.get(f"{url}/journal").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/journal", auth=("any", "wrong")).status_code == 401
        assert httpx.get(f"{url}/journal", auth=("any", "s3cret-console")).status_code == 200
        assert httpx.get(f"{url}/metrics", auth=("ops", "s3cret-console")).status_code == 200
    finally:
        running.stop(grace=1)


def test_serve_with_auth_refuses_a_console_without_a_token(tmp_path):
    result = settlesim(
        "serve", "--port", "0", "--db", str(tmp_path / "s.db"), "--auth", "token", "--console-port", "0",
        "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key",
    )  # fmt: skip
    assert result.returncode != 0
    assert "console of a server that demands identity needs a password" in result.stderr


def test_serve_prints_its_console_and_metrics(server_process, tmp_path):
    process = server_process(tmp_path / "s.db")  # --port 0: the console takes any free port too
    assert process.proc is not None and process.proc.stdout is not None
    line = process.proc.stdout.readline()
    assert line.startswith("settlesim console on http://127.0.0.1:")
    url = line.split()[3]
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert "调用日志" in httpx.get(f"{url}/journal").text


# --- no page scans a table --------------------------------------------------------------------


def plan_problems(db: sqlite3.Connection, sql: str, args: list[object]) -> list[str]:
    """What makes a page's cost grow with the journal: a scan of the table with a
    filter no index serves, or a sort of every matching row before the LIMIT."""
    plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
    problems = [p for p in plan if "TEMP B-TREE" in p]
    if "WHERE" in sql.split("FROM journal", 1)[1]:
        problems += [p for p in plan if p.startswith("SCAN journal") and "INDEX" not in p]
    return problems


FILTERS = [
    reads.JournalFilter(institution="H11010500001"),
    reads.JournalFilter(rpc="SettleVisit"),
    reads.JournalFilter(msgid="H11010500001202112090900000001"),
    reads.JournalFilter(session="replay-1"),
    reads.JournalFilter(run_id="20261201-abc"),
    reads.JournalFilter(outcome="refused"),
    reads.JournalFilter(outcome="PERSON_NOT_FOUND", institution="H11010500001"),
    reads.JournalFilter(rpc="SettleVisit", session="replay-1"),
]


@pytest.mark.parametrize("f", FILTERS, ids=lambda f: ",".join(k for k, v in vars(f).items() if v))
def test_every_journal_filter_reads_its_page_through_an_index(tmp_path, f):
    journal = Journal(tmp_path / "j.db")
    try:
        for before in (0, 1234):
            sql, args = reads.journal_sql(f, before)
            assert plan_problems(journal.connection, sql, args) == []
    finally:
        journal.close()


def test_the_plan_check_finds_a_filter_without_an_index(tmp_path):
    journal = Journal(tmp_path / "j.db")
    try:
        sql = "SELECT seq FROM journal WHERE door = ? ORDER BY seq DESC LIMIT 50"
        assert plan_problems(journal.connection, sql, ["grpc"])  # no index on door: a scan
        sql = "SELECT seq FROM journal WHERE institution = ? ORDER BY latency_ms DESC LIMIT 50"
        assert plan_problems(journal.connection, sql, ["x"])  # sorted by a column the index lacks
    finally:
        journal.close()


# --- check runs ---------------------------------------------------------------------------------


def test_a_check_run_page_shows_the_findings_his_check_finish_gave(console_server):
    import sys

    from settlesim.clients.hischeck.command import Connection, run_with_driver

    drivers = Path(__file__).parent / "his_drivers" / "faulty.py"
    command = f"{sys.executable} {drivers} new-msgid-on-retry {{target}} {{institution}} {{run}} {{tasks}}"
    graded = run_with_driver(
        "lost-answer-after-commit", CANCER_HOSPITAL, Connection(console_server.target), command
    )
    failed = {r.id for r in graded.results if r.status == "failed"}
    assert "retry.same-msgid" in failed  # the faulty HIS retried a lost settle with a new msgid
    run_id = graded.run["run_id"]
    page = httpx.get(f"{console_server.console.url}/runs/{run_id}").text
    shown_failed = set(re.findall(r'data-check="([^"]+)" data-status="failed"', page))
    assert shown_failed == failed
    assert run_id in httpx.get(f"{console_server.console.url}/runs").text


@pytest.mark.parametrize(
    ("argv", "port", "fallback"),
    [
        (["serve"], 50052, True),  # the insecure stub: beside the gRPC port
        (["serve", "--port", "6000"], 6001, True),
        (["serve", "--port", "0"], 0, True),  # any free port, as the gRPC port
        (["serve", "--console-port", "8080"], 8080, False),  # asked for: taken is an error
        (["serve", "--no-console"], None, False),
        (["serve", "--processes", "2"], None, False),
        (["serve", "--auth", "token"], None, False),  # identity demanded: off unless asked for
    ],
)
def test_where_the_console_listens_by_default(argv, port, fallback):
    from settlesim.cli import _console_config, build_parser

    config = _console_config(build_parser().parse_args(argv))
    assert (config["console_port"], config["console_port_fallback"]) == (port, fallback)


def test_a_console_asked_for_on_a_secured_server_takes_its_token_file(tmp_path):
    from settlesim.cli import _console_config, build_parser

    token = tmp_path / "console.token"
    token.write_text("s3cret\n", encoding="utf-8")
    argv = ["serve", "--auth", "token", "--console-port", "0", "--console-token-file", str(token)]
    config = _console_config(build_parser().parse_args(argv))
    assert (config["console_port"], config["console_token"]) == (0, "s3cret")


def test_a_pre_settle_is_explained_from_its_journaled_answer(console_server):
    his = Hospital.connect(console_server.target, CANCER_HOSPITAL)
    try:
        his.pre_settle(
            "63000000000000000001",
            "M00503",
            "2021-12-09",
            [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)],
        )
    finally:
        his.close()
    console_server.journal.flush()
    url = console_server.console.url
    entry = httpx.get(f"{url}/journal/1").text
    assert 'id="why-link"' in entry and 'id="settlement-link"' not in entry  # 2206 stores nothing
    why = httpx.get(f"{url}/journal/1/why").text
    # Qinghai 2021: 179.63 in scope; deductible 50.00; fund 100 % of 129.63; patient 50.00.
    assert '<div class="value" id="total">179.63</div>' in why
    assert '<div class="value" id="fund">129.63</div>' in why
    assert '<div class="value" id="patient">50.00</div>' in why
    assert "PreSettleVisit answer, journal #1" in why
    assert httpx.get(f"{url}/journal/999/why").status_code == 404
