"""Case replay and the bundled conformance suite, against real servers on free ports.

The expected figures live in the case files (clients/conformance/cases), each derived by hand in
its `why`; here we check that the suite passes against the reference server, repeatably and
concurrently, that a deliberately wrong server fails with a precise field diff, and that the
reports (terminal, JUnit XML, JSON, HTML in headless Chromium) say so."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import settlesim
from grpc_health.v1 import health, health_pb2_grpc
from rich.console import Console
from settlesim.clients.replay import reports
from settlesim.clients.replay.cases import CaseError, load_cases
from settlesim.clients.replay.command import ReplayError, ReplayOptions, conformance_cases_dir, replay
from settlesim.clients.replay.compare import Diff
from settlesim.clients.replay.runner import CaseResult, RunResult, StepResult, run_cases
from settlesim.server.app import ServerConfig, start
from settlesim.server.rules.reasons import Reason

SUITE = conformance_cases_dir()
SEEDS = SUITE / "seeds"
QINGHAI_SEED = SEEDS / "qinghai-breast-cancer-beijing.yaml"
JUNIT_XSD = Path(__file__).parent / "data" / "junit-10.xsd"



def capture() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, highlight=False, color_system=None), out


# --- the suite itself ----------------------------------------------------------------------


def test_suite_covers_every_reason_rule_and_seed():
    cases = load_cases([SUITE])
    assert len(cases) >= 40
    assert all(case.why.strip() and case.world == "default" for case in cases)
    expected_reasons = set()
    for case in cases:
        for step in case.steps:
            if step.error:
                expected_reasons.add(step.error.reason)
            if step.call == "verify" and "reason" in step.expect:
                expected_reasons.add(step.expect["reason"])
    # Every registration-check reason, every malformed-request reason, and the message-handling
    # ones (listed, not taken from Reason, so a reason added for another feature does not fail here).
    registration = {
        Reason.PERSON_NOT_FOUND, Reason.PERSON_NOT_INSURED, Reason.INSURANCE_TYPE_MISMATCH,
        Reason.NOT_CROSS_PROVINCE, Reason.DISEASE_NOT_COVERED, Reason.GENERAL_OUTPATIENT_DISEASE,
        Reason.QUALIFICATION_NOT_FOUND, Reason.QUALIFICATION_NOT_VALID, Reason.INSTITUTION_NOT_DESIGNATED,
        Reason.INSTITUTION_NOT_CONNECTED, Reason.DISEASE_NOT_OPENED, Reason.REGISTRATION_NOT_FOUND,
        Reason.REGISTRATION_NOT_YET_VALID, Reason.REGISTRATION_EXPIRED, Reason.REGISTRATION_REVOKED,
        Reason.REGISTRATION_SUPERSEDED, Reason.DESTINATION_MISMATCH, Reason.INSTITUTION_NOT_IN_REGISTRATION,
        Reason.TOO_MANY_INSTITUTIONS, Reason.RESIDENCE_TOO_SHORT, Reason.PERSON_MISMATCH,
        Reason.FIELD_MISSING, Reason.FIELD_INVALID, Reason.QUANTITY_NOT_POSITIVE, Reason.PRICE_NEGATIVE,
        Reason.AMOUNT_MISMATCH, Reason.ITEMS_EMPTY, Reason.TOO_MANY_ITEMS, Reason.AMOUNT_OUT_OF_RANGE,
        Reason.DUPLICATE_SEQUENCE_NO, Reason.UNKNOWN_INSTITUTION, Reason.UNKNOWN_DISEASE,
        Reason.MSGID_REUSED, Reason.MSGID_VOIDED, Reason.SETTLEMENT_NOT_FOUND, Reason.ALREADY_REVERSED,
        Reason.ALREADY_VOIDED, Reason.INSTITUTION_NOT_CALLER,
    }  # fmt: skip
    missing = sorted(r.value for r in registration if r.value not in expected_reasons)
    assert not missing, f"no conformance case expects {missing}"
    tags = {tag for case in cases for tag in case.tags}
    for rule in (
        "rule:class-a", "rule:class-b-share", "rule:class-c", "rule:price-ceiling",
        "rule:deductible-partly-used", "rule:deductible-fully-used", "rule:ratio",
        "rule:cap-partly-used", "rule:cap-fully-used", "rule:rounding-half-up",
        "multi-visit", "pre-settle", "idempotency", "reversal", "void", "reconcile", "malformed",
    ):  # fmt: skip
        assert rule in tags, rule
    names = {case.name for case in cases}
    assert {
        "seed-qinghai-breast-cancer-beijing",
        "seed-beijing-special-disease-registration",
        "seed-datong-city-level-and-home",
        "seed-hotan-75-percent-100k-cap",
    } <= names


def test_conformance_passes_twice_in_a_row_on_one_server(server):
    """Each run and each case gets a fresh session, so yearly totals never carry over."""
    cases = load_cases([SUITE])
    first = run_cases(cases, server.target, jobs=4)
    second = run_cases(cases, server.target, jobs=4)
    for run in (first, second):
        failing = {c.case.name: reports._failure_text(c) for c in run.cases if c.status != "passed"}
        assert not failing, failing
        assert len(run.cases) == len(cases)
    assert first.run_id != second.run_id
    sessions = [c.session for run in (first, second) for c in run.cases]
    assert len(set(sessions)) == len(sessions)


def test_two_replays_at_once_both_pass(server):
    cases = load_cases([SUITE])
    with futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: run_cases(cases, server.target, jobs=3), range(2)))
    assert [run.count("passed") for run in runs] == [len(cases), len(cases)]


# --- a wrong server -----------------------------------------------------------------------


@pytest.fixture
def wrong_server(tmp_path):
    """The bundled world with Qinghai 390/M00503's 2021 ratio edited from 100% to 90%."""
    world = tmp_path / "world"
    shutil.copytree(Path(__file__).resolve().parents[1] / "server" / "worlds" / "default", world)
    policy = world / "policies" / "630000.yaml"
    text = policy.read_text(encoding="utf-8")
    line = 'M00503:\n      2021-01-01: {coverage: chronic_special, deductible_fen: 5_000, ratio: "100%"'
    assert text.index(line) < text.index('"310"')  # the first M00503 entry is 390's
    policy.write_text(text.replace(line, line.replace("100%", "90%"), 1), encoding="utf-8")
    running = start(ServerConfig(port=0, db_path=tmp_path / "wrong.db", world_dir=world, max_workers=4))
    yield running
    running.stop(grace=1)


def test_wrong_server_fails_with_precise_money_diff(wrong_server, tmp_path):
    """With 90%: fund = round((17963 - 5000) × 90%) = round(11666.7) = 11667 instead of 12963;
    patient = 17963 - 11667 = 6296 instead of 5000; ratio 9000 instead of 10000."""
    console, out = capture()
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    options = ReplayOptions(target=wrong_server.target, junit=junit, json=report)
    assert replay([QINGHAI_SEED], options, console) == 1
    text = out.getvalue()
    assert "FAIL" in text and "seed-qinghai-breast-cancer-beijing" in text
    assert "settlement.totals.fund_pays_fen" in text
    assert "129.63 yuan (12963 fen)" in text and "116.67 yuan (11667 fen)" in text
    assert "50.00 yuan (5000 fen)" in text and "62.96 yuan (6296 fen)" in text
    assert "1 case: 0 passed, 1 failed" in text
    data = json.loads(report.read_text(encoding="utf-8"))
    settle = next(s for s in data["cases"][0]["steps"] if s["id"] == "settle")
    diffs = {d["path"]: (d["expected"], d["actual"]) for d in settle["diffs"]}
    assert diffs["settlement.totals.fund_pays_fen"] == (12963, 11667)
    assert diffs["settlement.totals.patient_pays_fen"] == (5000, 6296)
    assert diffs["settlement.totals.ratio_bp"] == (10000, 9000)
    root = ET.parse(junit).getroot()
    failure = root.find("./testsuite/testcase/failure")
    assert failure is not None and "11667" in (failure.text or "")


def test_wrong_server_fails_only_the_cases_that_depend_on_the_rule(wrong_server):
    """Cases on Qinghai 390/M00503 before 2026 (ratio 100% in the bundled world) fail; a case
    that never reaches the ratio, such as a malformed request, still passes."""
    cases = load_cases([SUITE])
    run = run_cases(cases, wrong_server.target, jobs=4)
    status = {c.case.name: c.status for c in run.cases}
    assert status["seed-qinghai-breast-cancer-beijing"] == "failed"
    assert status["rule-class-b-share"] == "failed"
    assert status["malformed-price-negative"] == "passed"
    assert status["seed-hotan-75-percent-100k-cap"] == "passed"
    assert not run.passed and run.count("error") == 0


# --- reports --------------------------------------------------------------------------------


def _mixed_run(server, wrong_server):
    cases = load_cases([SEEDS])
    good = run_cases(cases, server.target)
    bad = run_cases(cases, wrong_server.target)
    return good, bad


def test_junit_xml_structure_and_counts_agree(server, wrong_server, junit_schema, tmp_path):
    good, bad = _mixed_run(server, wrong_server)
    for run in (good, bad):
        path = tmp_path / f"{run.run_id}.xml"
        reports.write_junit(run, path)
        junit_schema.validate(str(path))
        root = ET.parse(path).getroot()
        assert root.tag == "testsuites"
        suites = root.findall("testsuite")
        testcases = root.findall("./testsuite/testcase")
        assert int(root.get("tests")) == len(testcases) == len(run.cases) == 4
        assert sum(int(s.get("tests")) for s in suites) == len(testcases)
        for suite in suites:
            cases_here = suite.findall("testcase")
            assert int(suite.get("tests")) == len(cases_here)
            assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases_here)
            assert int(suite.get("errors")) == sum(c.find("error") is not None for c in cases_here)
            float(suite.get("time"))
        failures = root.findall("./testsuite/testcase/failure")
        assert int(root.get("failures")) == len(failures) == run.count("failed")
        assert all(tc.get("name") and tc.get("classname") for tc in testcases)
    assert good.count("failed") == 0
    assert bad.count("failed") == 1  # only the Qinghai seed depends on Qinghai's ratio


def test_html_report_opens_in_headless_chromium(server, wrong_server, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "headless Chromium is needed (scripts/test installs it)"
    _, bad = _mixed_run(server, wrong_server)
    page = tmp_path / "report.html"
    reports.write_html(bad, page)
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    result = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'id="summary"' in dom and "FAILED" in dom
    assert "4 cases: 3 passed, 1 failed, 0 errors" in dom
    assert 'id="count-failed">1<' in dom
    assert "settlement.totals.fund_pays_fen" in dom and "116.67 yuan (11667 fen)" in dom
    assert 'id="rules"' in dom and "seed:qinghai" in dom


def test_html_report_of_the_whole_suite_is_small(server, tmp_path):
    """Passing cases are one summary row each (no request, answer or trace): the report of the
    whole suite stays small enough to attach to every CI run (it was 1.1 MB for 61 cases)."""
    run = run_cases(load_cases([SUITE]), server.target, jobs=4)
    assert run.passed and len(run.cases) >= 60
    page = tmp_path / "report.html"
    reports.write_html(run, page)
    html = page.read_text(encoding="utf-8")
    assert len(html.encode("utf-8")) < 150_000, len(html.encode("utf-8"))
    assert all(f'id="case-{case.case.name}"' in html for case in run.cases)  # the rules table links
    assert "<pre>request" not in html and '"trace"' not in html


def test_html_report_keeps_the_detail_of_failures_only(server, wrong_server, tmp_path):
    _, bad = _mixed_run(server, wrong_server)
    (failed,) = [case for case in bad.cases if case.status == "failed"]
    page = tmp_path / "report.html"
    reports.write_html(bad, page)
    html = page.read_text(encoding="utf-8")
    # Every step of the failed case, and only those, shows its request, expectation and answer.
    assert html.count("<pre>request") == html.count("<pre>answer") == len(failed.steps)
    assert failed.case.why.splitlines()[0] in html and "12963" in html and "11667" in html
    assert "trace" in html  # the failed answers' traces, which show why the figures differ


def test_html_report_is_titled_by_its_command_in_chinese_with_cjk_fonts(tmp_path):
    """`settlesim conformance --html` is a conformance report, not a replay; the page is
    zh-CN and names CJK fonts, so 中国医学科学院肿瘤医院 is not a row of empty boxes where the
    default font family has no CJK glyphs."""
    page = tmp_path / "conformance.html"
    result = settlesim("conformance", "--serve", "--tag", "seed:qinghai", "--html", str(page))
    assert result.returncode == 0, result.stdout + result.stderr
    html = page.read_text(encoding="utf-8")
    assert "<title>settlesim conformance — 1 case: 1 passed" in html
    assert "<h1>settlesim conformance</h1>" in html and "settlesim replay" not in html
    assert '<html lang="zh-CN">' in html
    for font in ('"Noto Sans CJK SC"', '"Source Han Sans SC"', '"PingFang SC"', '"Microsoft YaHei"'):
        assert html.count(font) >= 2, font  # the text and the monospace blocks
    replayed = tmp_path / "replay.html"
    result = settlesim("replay", str(QINGHAI_SEED), "--serve", "--html", str(replayed))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<title>settlesim replay — 1 case: 1 passed" in replayed.read_text(encoding="utf-8")


def test_json_report_has_rules_table_and_steps(server, tmp_path):
    run = run_cases(load_cases([SEEDS]), server.target)
    path = tmp_path / "r.json"
    reports.write_json(run, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["passed"] is True and data["summary"] == {
        "cases": 4,
        "passed": 4,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
        "unexpressed": 0,
    }
    assert data["rules"]["seed:hotan"] == [{"case": "seed-hotan-75-percent-100k-cap", "status": "passed"}]
    hotan = next(c for c in data["cases"] if c["name"] == "seed-hotan-75-percent-100k-cap")
    assert [s["status"] for s in hotan["steps"]] == ["passed"] * 4
    assert hotan["steps"][1]["answer"]["settlement"]["totals"]["fund_pays_fen"] == "9000000"  # protobuf JSON


# --- the target -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_target_down_is_one_clear_line():
    result = settlesim("conformance", "--target", f"127.0.0.1:{_free_port()}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot reach" in result.stderr


def test_target_with_another_contract_is_a_clear_error():
    """A gRPC server that answers health checks but not settlesim.v1.SettlementService."""
    other = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), other)
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        with pytest.raises(ReplayError, match=r"does not implement settlesim\.v1\.SettlementService"):
            replay([QINGHAI_SEED], ReplayOptions(target=f"127.0.0.1:{port}"), capture()[0])
    finally:
        other.stop(0)


def test_target_without_sessions_is_a_clear_error(tmp_path):
    running = start(ServerConfig(port=0, db_path=tmp_path / "l.db", allow_sessions=False, max_workers=2))
    try:
        with pytest.raises(ReplayError, match="refuses session sandboxes"):
            replay([QINGHAI_SEED], ReplayOptions(target=running.target), capture()[0])
    finally:
        running.stop(grace=0)


def test_conformance_command_against_a_server_process(server_process, tmp_path):
    """`settlesim serve` in its own process + `settlesim conformance --target` as CI runs it."""
    process = server_process(tmp_path / "ledger.db")
    out = tmp_path / "out"
    args = ["--junit", str(out / "junit.xml"), "--json", str(out / "r.json"), "--html", str(out / "r.html")]
    result = settlesim("conformance", "--target", process.target, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    cases = len(load_cases([SUITE]))
    assert f"{cases} cases: {cases} passed, 0 failed, 0 errors" in result.stdout
    assert f"[{cases}/{cases}]" in result.stdout  # progress lines while it runs
    assert ET.parse(out / "junit.xml").getroot().get("tests") == str(cases)
    assert json.loads((out / "r.json").read_text(encoding="utf-8"))["passed"] is True
    again = settlesim("conformance", "--target", process.target, "--tag", "seed")
    assert again.returncode == 0 and "4 cases: 4 passed" in again.stdout


def test_replay_and_conformance_serve_start_their_own_server(tmp_path):
    result = settlesim("replay", str(SEEDS), "--serve", "--jobs", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 cases: 4 passed" in result.stdout
    listed = settlesim("conformance", "--list", "--tag", "seed:hotan")
    assert listed.returncode == 0 and "seed-hotan-75-percent-100k-cap" in listed.stdout


# --- the case format ------------------------------------------------------------------------

GOOD_STEP = """  - id: s1
    call: settle
    request: {person: "63000000000000000009", disease: M00503, date: 2025-03-01,
              fees: [{code: A-CONSULT-001, price: 100}]}
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOOD_STEP + "    expect: {settlement: {totals: {fund_pay_fen: 1}}}\n",
         "steps[0].expect.settlement.totals.fund_pay_fen: SettlementTotals has no field 'fund_pay_fen'"),
        (GOOD_STEP + "    expect: {settlement: {totals: {fund_pays_fen: 129.63}}}\n",
         "money is integer fen"),
        (GOOD_STEP + "    expect: {error: {code: FAILED, reason: X}}\n",
         "steps[0].expect.error.code: must be a gRPC status code name"),
        (GOOD_STEP + "    expect: {error: {code: NOT_FOUND, reason: NO_SUCH_REASON}}\n",
         "is not a reason of settlesim.v1.ErrorReason"),
        (GOOD_STEP + "  - {call: reverse, request: {settlement_id: '${steps.s9.settlement.settlement_id}'}}\n",
         "steps[1].request: ${steps.s9.settlement.settlement_id}: no earlier step has id 's9'"),
        (GOOD_STEP + "  - {call: refund}\n", "steps[1].call: must be one of verify, pre_settle"),
        (GOOD_STEP + "  - {call: reverse, request: {settlement_id: '${steps.s1.settlement.setl_id}'}}\n",
         "steps[1].request: ${steps.s1.settlement.setl_id}: Settlement has no field 'setl_id'"),
        (GOOD_STEP + "  - {call: get, request: {msgid: '${steps.s1.settlement.items.x}'}}\n",
         "'x' must be an element index"),
        (GOOD_STEP.replace("fees:", "feez:"), "steps[0].request: unknown key 'feez'"),
    ],
)  # fmt: skip
def test_case_format_errors_name_file_and_path(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nworld: default\nwhy: x\ninstitution: H11010500001\nsteps:\n{body}")
    with pytest.raises(CaseError) as caught:
        load_cases([path])
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_bad_case_file_is_one_line_from_the_command(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nworld: default\nsteps: [\n")
    result = settlesim("replay", str(path), "--target", "127.0.0.1:1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bad.yaml" in result.stderr and "not valid YAML" in result.stderr


def test_duplicate_case_names_are_refused(tmp_path):
    for n in (1, 2):
        (tmp_path / f"c{n}.yaml").write_text(
            f"name: same\nworld: default\nwhy: x\ninstitution: H11010500001\nsteps:\n{GOOD_STEP}"
        )
    with pytest.raises(CaseError, match="also the name of a case"):
        load_cases([tmp_path])


def test_progress_is_reported_as_cases_finish(server):
    console, out = capture()
    seen: list[str] = []
    lock = threading.Lock()

    def on_case(result):
        with lock:
            seen.append(result.case.name)

    run = run_cases(load_cases([SEEDS]), server.target, jobs=2, on_case=on_case)
    assert sorted(seen) == sorted(c.case.name for c in run.cases)
    terminal = reports.TerminalReport(console, len(run.cases))
    for case in run.cases:
        terminal.case_done(case)
    terminal.summary(run)
    assert Counter(line.split()[1] for line in out.getvalue().splitlines() if line.startswith("[")) == {
        "PASS": 4
    }


def test_reference_to_a_refused_answer_is_a_step_error(server, tmp_path):
    """The first settle is refused as expected (no person 99...); a reversal that refers to its
    settlement id cannot be built: the case is an error (not a pass), JUnit says <error>."""
    path = tmp_path / "ref.yaml"
    path.write_text(
        "name: ref\nworld: default\nwhy: x\ninstitution: H11010500001\nsteps:\n"
        "  - id: s1\n    call: settle\n"
        "    request: {person: '99000000000000000000', disease: M00503, date: 2025-03-01,\n"
        "              fees: [{code: A-CONSULT-001, price: 100}]}\n"
        "    expect: {error: {code: FAILED_PRECONDITION, reason: PERSON_NOT_FOUND}}\n"
        "  - {id: r, call: reverse, request: {settlement_id: '${steps.s1.settlement.settlement_id}'}}\n"
        "  - {id: after, call: reconcile, request: {start: 2025-01-01, end: 2025-12-31}}\n"
    )
    run = run_cases(load_cases([path]), server.target)
    steps = run.cases[0].steps
    assert [s.status for s in steps] == ["passed", "error", "skipped"]
    assert "has no answer (it was refused)" in steps[1].message
    assert run.cases[0].status == "error" and not run.passed
    root = reports.junit_tree(run).getroot()
    assert root.get("errors") == "1" and root.find("./testsuite/testcase/error") is not None


def test_replay_command_against_a_wrong_server_process(server_process, tmp_path):
    """`settlesim serve --world <edited copy>` in its own process; `settlesim replay` exits 1 and
    prints the differing fields: fund round((17963 - 5000) × 90%) = 11667, not 12963."""
    world = tmp_path / "world"
    shutil.copytree(Path(__file__).resolve().parents[1] / "server" / "worlds" / "default", world)
    policy = world / "policies" / "630000.yaml"
    policy.write_text(policy.read_text(encoding="utf-8").replace('ratio: "100%"', 'ratio: "90%"', 1))
    process = server_process(tmp_path / "wrong.db", "--world", str(world))
    result = settlesim(
        "replay", str(QINGHAI_SEED), "--target", process.target, "--junit", str(tmp_path / "j.xml")
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "settlement.totals.fund_pays_fen" in result.stdout
    assert "expected 129.63 yuan (12963 fen)" in result.stdout
    assert "actual   116.67 yuan (11667 fen)" in result.stdout
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"


# --- JUnit XML against the schema -----------------------------------------------------------


@pytest.fixture(scope="module")
def junit_schema():
    """tests/data/junit-10.xsd: the schema Jenkins, Surefire and pytest's junitxml target."""
    import xmlschema

    return xmlschema.XMLSchema(str(JUNIT_XSD))


def _made_up_run() -> RunResult:
    """Results made up (no server) for real cases: one passed, one failed, one errored, from a
    multi-document file and a one-case file, with text that XML 1.0 cannot carry."""
    rules = load_cases([SUITE / "settlement-rules.yaml"])[:3]
    seed = load_cases([QINGHAI_SEED])[0]
    assert rules[1].source.endswith("settlement-rules.yaml#2") and "#" not in seed.source

    def result(case, status, **step):
        steps = [StepResult(s, status="passed") for s in case.steps]
        for key, value in step.items():
            setattr(steps[0], key, value)
        steps[0].status = status
        return CaseResult(case, f"replay-test-{case.name}", steps, 0.0125)

    cases = [
        result(rules[0], "passed"),
        result(rules[1], "failed", diffs=[Diff("settlement.totals.fund_pays_fen", 4022, 3620)]),
        result(rules[2], "error", message="the target could not answer: INTERNAL bad\x00byte"),
        result(seed, "passed"),
    ]
    return RunResult("127.0.0.1:1", "abc123", "2025-03-01T00:00:00+00:00", cases, 1234.5)


def test_junit_xml_is_valid_against_the_junit_10_schema(junit_schema, tmp_path):
    run = _made_up_run()
    path = tmp_path / "junit.xml"
    reports.write_junit(run, path)
    junit_schema.validate(str(path))  # raises with the offending element and attribute
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    assert root.get("time") == "1234.500"
    suites = root.findall("testsuite")
    assert [(s.get("name"), Path(s.get("file")).name, s.get("tests")) for s in suites] == [
        ("settlement-rules", "settlement-rules.yaml", "3"),
        ("qinghai-breast-cancer-beijing", "qinghai-breast-cancer-beijing.yaml", "1"),
    ]
    # What the schema has no attribute for is kept in system-out: the case's own document.
    testcases = root.findall("./testsuite/testcase")
    outs = [tc.findtext("system-out") or "" for tc in testcases]
    assert f"source {run.cases[1].case.source}\n" in outs[1] and "#2\n" in outs[1]
    assert "session replay-test-" in outs[0] and "world default" in outs[0]
    assert "bad\\x00byte" in testcases[2].find("error").get("message")  # shown, not emitted raw
    assert "4022" in testcases[1].findtext("failure")


def test_junit_schema_refuses_what_the_writer_used_to_emit(junit_schema):
    """The check can fail: the attributes the writer used to emit (testcase@file,
    testsuites@skipped), or any unknown one, make the document invalid."""
    root = reports.junit_tree(_made_up_run()).getroot()
    assert junit_schema.is_valid(root)
    for element, attribute in ((root.find("./testsuite/testcase"), "file"), (root, "skipped")):
        element.set(attribute, "x")
        assert not junit_schema.is_valid(root), attribute
        del element.attrib[attribute]
    assert junit_schema.is_valid(root)
    root.find("./testsuite/testcase").set("line", "3")
    errors = list(junit_schema.iter_errors(root))
    assert errors and "line" in str(errors[0])


# --- references to a msgid ------------------------------------------------------------------


@pytest.mark.parametrize("call", ["verify", "get", "reconcile"])
def test_msgid_of_a_step_that_sends_none_is_refused_at_load(tmp_path, call):
    request = {
        "verify": "{person: '63000000000000000009', disease: M00503, date: 2025-03-01}",
        "get": "{msgid: '${steps.s1.msgid}'}",
        "reconcile": "{start: 2025-01-01, end: 2025-12-31}",
    }[call]
    path = tmp_path / "ref.yaml"
    path.write_text(
        f"name: ref\nworld: default\nwhy: x\ninstitution: H11010500001\nsteps:\n{GOOD_STEP}"
        f"  - {{id: q, call: {call}, request: {request}}}\n"
        "  - {call: void, request: {original_msgid: '${steps.q.msgid}'}}\n"
    )
    with pytest.raises(CaseError) as caught:
        load_cases([path])
    assert str(caught.value).startswith(f"{path}: steps[2].request: ${{steps.q.msgid}}: step 'q'")
    assert f"is a {call} call, which sends no msgid" in str(caught.value)


def test_msgid_of_steps_that_send_one_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        f"name: ok\nworld: default\nwhy: x\ninstitution: H11010500001\nsteps:\n{GOOD_STEP}"
        "  - {id: g, call: get, request: {msgid: '${steps.s1.msgid}'}}\n"
        "  - {id: r, call: reverse, request: {settlement_id: '${steps.g.settlement.settlement_id}'},\n"
        "     expect: {settlement: {undone_by_msgid: '${steps.r.msgid}'}}}\n"
        "  - {id: v, call: void, request: {original_msgid: '${steps.g.request.msgid}'}}\n"
        "  - {call: void, request: {original_msgid: '${steps.v.msgid}'}}\n"
    )
    (case,) = load_cases([path])
    assert [s.call for s in case.steps] == ["settle", "get", "reverse", "void", "void"]
