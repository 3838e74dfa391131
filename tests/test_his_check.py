"""Check runs end to end: a real stub, `settlesim his-check run ... --exec` with the
bundled good HIS and with deliberately faulty ones (tests/his_drivers/faulty.py),
the reports (JUnit against the schema, HTML in headless Chromium), and runs against
a secured stub (tokens, mutual TLS)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import CANCER_HOSPITAL, FUWAI
from pki import PlatformPki
from settlesim.clients.hischeck.checks import CHECKS
from settlesim.clients.hischeck.command import Connection, Graded, HisCheckError, run_with_driver, start
from settlesim.clients.hischeck.scenarios import bundled
from settlesim.clients.rejections import rejection_of
from settlesim.server.app import RunningServer, ServerConfig
from settlesim.server.app import start as start_server
from settlesim.v1 import his_check_pb2 as hc
from settlesim.v1 import his_check_pb2_grpc as hc_grpc

from settlesim.cli import main

DRIVERS = Path(__file__).parent / "his_drivers" / "faulty.py"
GOOD = f"{sys.executable} -m settlesim.clients.hischeck.good_his {{target}} {{institution}} {{run}} {{tasks}}"
JUNIT_XSD = Path(__file__).parent / "data" / "junit-10.xsd"


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    db = tmp_path_factory.mktemp("his-check") / "ledger.db"
    running = start_server(ServerConfig(port=0, db_path=db, max_workers=8))
    yield running
    running.stop(grace=1)


def faulty(defect: str) -> str:
    return f"{sys.executable} {DRIVERS} {defect} {{target}} {{institution}} {{run}} {{tasks}}"


def failed(graded: Graded) -> dict[str, tuple[int, ...]]:
    return {r.id: r.entries for r in graded.results if r.status == "failed"}


# --- the good HIS ----------------------------------------------------------------------------------


def test_the_mock_hospital_passes_every_bundled_scenario_through_his_check_run(stub, tmp_path, capsys):
    scenarios = bundled()
    assert len(scenarios) >= 12
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    code = main(
        [
            "his-check",
            "run",
            "all",
            "--target",
            stub.target,
            "--exec",
            GOOD,
            "--junit",
            str(junit),
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{len(scenarios)} runs: {len(scenarios)} passed, 0 failed" in out
    data = json.loads(report.read_text(encoding="utf-8"))
    assert [r["scenario"] for r in data["runs"]] == [s.name for s in scenarios]
    for run in data["runs"]:
        assert run["driver_exit"] == 0, run["driver_output"]
        assert all(c["status"] != "failed" for c in run["checks"]), run["checks"]
        assert run["journal"], f"{run['scenario']}: nothing journaled"
    by_name = {r["scenario"]: r for r in data["runs"]}
    # The faults were real: the lost answer was retried under its msgid, the void-unseen
    # settles never reached the ledger, the deadline's late commit is in the journal.
    lost = by_name["lost-answer-after-commit"]["journal"]
    assert [(e["code"], e["fault"]) for e in lost] == [("UNAVAILABLE", "drop_after_commit"), ("OK", "")]
    assert lost[0]["msgid"] == lost[1]["msgid"]
    late = by_name["deadline-late-commit"]["journal"]
    assert late[0]["fault"] == "delay" and late[0]["undelivered"] and late[0]["latency_ms"] > 5000
    assert by_name["void-unseen"]["journal"][-1]["rpc"] == "VoidByMessageId"
    assert by_name["void-unseen"]["settlements"] == []
    # Hotan: the setup's two settlements and the HIS's fund-0 one; only the HIS's is graded.
    hotan = by_name["hotan-cap-used-up"]
    assert [s["fund_pays"] for s in hotan["settlements"]] == [9000000, 1000000, 0]
    assert [e["actor"] for e in hotan["journal"]] == ["setup", "setup", "his"]
    # JUnit: one testsuite per run, one testcase per check, valid for Jenkins & co.
    import xmlschema

    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(junit))


# --- faulty HIS drivers ----------------------------------------------------------------------------

# defect -> (the scenario it breaks, the checks that must fail there, scenarios it does not break)
FAULTY = {
    "new-msgid-on-retry": (
        "lost-answer-after-commit",
        {"retry.same-msgid", "visit.settled-once"},
        ["qinghai-happy-path", "reversal"],
    ),
    "never-voids": ("void-unseen", {"retry.resolved"}, ["lost-answer-after-commit", "qinghai-happy-path"]),
    "retries-refusal": ("refused-fuwai-no-tumour", {"retry.no-refusal-retry"}, ["qinghai-happy-path"]),
    "skips-presettle": (
        "qinghai-happy-path",
        {"presettle.before-settle"},
        ["reversal", "lost-answer-after-commit"],
    ),
    "amount-ignores-quantity": (
        "qinghai-happy-path",
        {"fees.amount"},
        ["reversal", "reconcile-month-matches"],
    ),
    "forgets-to-reconcile": (
        "reconcile-month-matches",
        {"reconcile.sent"},
        ["reversal", "lost-answer-after-commit"],
    ),
    "short-msgid": ("reversal", {"msgid.format"}, []),  # every scenario sends msgids
    "stopped-clock": ("reversal", {"msgid.timestamp"}, []),
    "one-msgid-for-all": ("reconcile-month-matches", {"msgid.unique"}, ["qinghai-happy-path"]),
    "same-sequence-number": ("qinghai-happy-path", {"fees.sequence-unique"}, ["hotan-cap-used-up"]),
    "lower-case-codes": ("qinghai-happy-path", {"fees.catalog-code"}, []),  # every scenario has fee lines
    "settles-something-else": ("qinghai-happy-path", {"presettle.matches-settle"}, ["reversal"]),
    "keeps-mismatched-figures": (
        "presettle-figures-mismatch",
        {"presettle.figures-differ-undone"},
        ["qinghai-happy-path"],
    ),
    "stops-at-mismatch": (
        "reconcile-forgotten-settlement",
        {"reconcile.matched", "reconcile.entries-on-mismatch"},
        ["reconcile-month-matches"],
    ),
    "fund-zero-is-failure": ("hotan-cap-used-up", {"end.visit-state"}, ["qinghai-happy-path"]),
}


@pytest.mark.parametrize("defect", sorted(FAULTY))
def test_a_faulty_his_fails_the_scenario_it_breaks_naming_check_and_entries(stub, defect):
    breaks, checks, spared = FAULTY[defect]
    graded = run_with_driver(breaks, None, Connection(stub.target), faulty(defect))
    assert graded.driver_exit == 0, graded.driver_output
    assert not graded.passed
    bad = failed(graded)
    assert checks <= set(bad), f"{defect} on {breaks}: failed {sorted(bad)}"
    seqs = {e["seq"] for e in graded.record.entries}
    for check_id in checks:
        if check_id != "reconcile.sent":  # a call never sent has no entry to name
            assert bad[check_id] and set(bad[check_id]) <= seqs, (check_id, bad[check_id])
            message = next(r.message for r in graded.results if r.id == check_id)
            assert f"#{bad[check_id][0]}" in message, message
    for scenario in spared:
        other = run_with_driver(scenario, None, Connection(stub.target), faulty(defect))
        assert other.passed, f"{defect} should pass {scenario}: {failed(other)}"


def test_every_check_is_made_to_fail_by_some_faulty_driver():
    made_to_fail = set().union(*(checks for _, checks, _ in FAULTY.values()))
    assert {c.id for c in CHECKS} == made_to_fail
    assert len({c.id for c in CHECKS}) == len(CHECKS)  # stable, unique ids


def test_the_failure_report_names_check_and_entries_in_the_terminal(stub, capsys):
    code = main(
        [
            "his-check",
            "run",
            "lost-answer-after-commit",
            "--target",
            stub.target,
            "--exec",
            faulty("new-msgid-on-retry"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL retry.same-msgid [error]" in out and "FAIL visit.settled-once [error]" in out
    assert "journal entries named:" in out and "[fault drop_after_commit]" in out


# --- HTML in headless Chromium ---------------------------------------------------------------------


def test_html_report_opens_in_headless_chromium_with_checks_and_journal(stub, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "headless Chromium is needed (scripts/test installs it)"
    page = tmp_path / "his-check.html"
    code = main(
        [
            "his-check",
            "run",
            "lost-answer-after-commit",
            "--target",
            stub.target,
            "--exec",
            faulty("new-msgid-on-retry"),
            "--html",
            str(page),
        ]
    )
    assert code == 1
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'id="summary"' in dom and "FAILED" in dom and "1 run: 0 passed, 1 failed" in dom
    assert 'data-check="retry.same-msgid" data-status="failed"' in dom
    assert 'data-check="msgid.format" data-status="passed"' in dom
    assert 'id="journal-lost-answer-after-commit"' in dom
    assert 'id="lost-answer-after-commit-entry-' in dom and 'class="entry named"' in dom
    assert "drop_after_commit" in dom and "UNAVAILABLE INJECTED_FAULT" in dom


# --- runs: one per institution, parallel across institutions -----------------------------------------


def test_two_runs_for_one_institution_are_refused_and_other_institutions_run_in_parallel(stub):
    conn = Connection(stub.target)
    first = start("reversal", CANCER_HOSPITAL, conn)
    with pytest.raises(HisCheckError, match="RUN_ALREADY_OPEN"):
        start("qinghai-happy-path", CANCER_HOSPITAL, conn)
    other = start("refused-fuwai-no-tumour", FUWAI, conn)  # Fuwai's run opens beside it
    with grpc.insecure_channel(stub.target) as channel:
        admin = hc_grpc.HisCheckServiceStub(channel)
        for run in (first.run, other.run):
            admin.CloseRun(hc.CloseRunRequest(run_id=run.run_id))
    assert first.run.session != other.run.session


def test_a_run_refuses_faults_it_cannot_apply(stub):
    with grpc.insecure_channel(stub.target) as channel:
        admin = hc_grpc.HisCheckServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            admin.OpenRun(
                hc.OpenRunRequest(
                    institution_code=CANCER_HOSPITAL,
                    faults=[hc.TargetedFault(rpc="GetSettlement", kind="drop_after_commit", nth=[1])],
                )
            )
    rejection = rejection_of(caught.value)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejection.reason == "FIELD_INVALID" and "faults[0]" in caught.value.details()


# --- a secured stub ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PlatformPki:
    return PlatformPki(tmp_path_factory.mktemp("pki"))


def test_runs_work_against_a_token_stub_and_belong_to_the_authenticated_institution(tmp_path):
    running = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", auth="token", max_workers=4))
    try:
        token = f"dev-token-{CANCER_HOSPITAL}"
        conn = Connection(running.target, token=token)
        graded = run_with_driver("lost-answer-after-commit", None, conn, GOOD + " {credentials}")
        assert graded.passed, (graded.driver_output, failed(graded))
        assert {e["identity"] for e in graded.record.entries} == {CANCER_HOSPITAL}
        # The Cancer Hospital's token can neither open Fuwai's run nor read the Cancer Hospital's as Fuwai.
        with pytest.raises(HisCheckError, match="INSTITUTION_NOT_CALLER"):
            start("refused-fuwai-no-tumour", FUWAI, conn)
        with grpc.insecure_channel(running.target) as channel:
            admin = hc_grpc.HisCheckServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                admin.GetRunRecord(
                    hc.GetRunRecordRequest(run_id=graded.run["run_id"]),
                    metadata=(("authorization", f"Bearer dev-token-{FUWAI}"),),
                )
        assert rejection_of(caught.value).reason == "RUN_NOT_FOUND"
    finally:
        running.stop(grace=1)


def test_runs_work_against_a_mutual_tls_stub(tmp_path, pki):
    running = start_server(
        ServerConfig(
            port=0,
            db_path=tmp_path / "l.db",
            tls_cert=pki.server.cert,
            tls_key=pki.server.key,
            client_ca=pki.ca.cert,
            auth="mtls",
            max_workers=4,
        )
    )
    try:
        conn = Connection(
            f"localhost:{running.port}", ca=pki.ca.cert, cert=pki.cancer.cert, key=pki.cancer.key
        )
        graded = run_with_driver("unavailable-before-commit", None, conn, GOOD + " {credentials}")
        assert graded.passed, (graded.driver_output, failed(graded))
        assert {e["identity"] for e in graded.record.entries} == {CANCER_HOSPITAL}
    finally:
        running.stop(grace=1)


# --- by hand: start, then finish ---------------------------------------------------------------


def test_start_prints_the_tasks_target_and_run_and_finish_grades_what_the_his_did(stub, tmp_path, capsys):
    tasks = tmp_path / "tasks.json"
    code = main(["his-check", "start", "reversal", "--institution", CANCER_HOSPITAL, "--target", stub.target,
                 "--tasks-out", str(tasks)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads(tasks.read_text(encoding="utf-8"))
    run_id = plan["run_id"]
    assert f"run       {run_id}" in out and f"target    {stub.target}" in out
    assert "settle (2207) a visit for person 63000000000000000001, disease M00503, on 2021-12-08" in out
    assert "Reverse (2208) the settlement of task [visit]" in out
    assert [t["do"] for t in plan["tasks"]] == ["settle", "reverse"]
    # The operator settles but forgets the reversal: finish says so and exits 1.
    from settlesim.clients.hospital import Fee, Hospital

    his = Hospital.connect(stub.target, CANCER_HOSPITAL)
    his.settle(
        "63000000000000000001",
        "M00503",
        "2021-12-08",
        [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)],
    )
    his.close()
    code = main(["his-check", "finish", run_id, "--target", stub.target])
    out = capsys.readouterr().out
    assert code == 1
    assert (
        "FAIL end.visit-state [error] task [visit]: 1 settlement(s) in force for the visit, expected 0" in out
    )
    # finishing closed the run: the institution's calls go back to the default session
    assert main(["his-check", "finish", "no-such-run", "--target", stub.target]) == 2
    assert "RUN_NOT_FOUND" in capsys.readouterr().err
