"""Check runs beyond one run at a time: `his-check run --serve` on its own
throw-away stub, a run whose timeout passed, and two institutions' runs driven at
the same time, each graded on its own calls only."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import CANCER_HOSPITAL, FUWAI
from settlesim.clients.hischeck.command import Connection, finish, run_with_driver, start
from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.app import ServerConfig
from settlesim.server.app import start as start_server

from settlesim.cli import main

GOOD = f"{sys.executable} -m settlesim.clients.hischeck.good_his {{target}} {{institution}} {{run}} {{tasks}}"
DRIVERS = Path(__file__).parent / "his_drivers" / "faulty.py"
SKIPS_PRESETTLE = f"{sys.executable} {DRIVERS} skips-presettle {{target}} {{institution}} {{run}} {{tasks}}"


def test_his_check_run_serve_grades_on_a_throw_away_stub_of_its_own(capsys):
    code = main(["his-check", "run", "qinghai-happy-path", "--serve", "--exec", GOOD])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 run: 1 passed, 0 failed" in out
    code = main(["his-check", "run", "qinghai-happy-path", "--serve", "--exec", SKIPS_PRESETTLE])
    out = capsys.readouterr().out
    assert code == 1 and "presettle.before-settle" in out, out


def test_calls_after_a_runs_timeout_are_not_its_own_and_finish_still_grades_it(tmp_path):
    running = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", max_workers=4))
    try:
        conn = Connection(running.target)
        started = start("qinghai-happy-path", CANCER_HOSPITAL, conn, timeout_s=1)
        time.sleep(1.5)  # the run's timeout passes before the HIS does anything
        his = Hospital.connect(running.target, CANCER_HOSPITAL)
        try:
            # 630000/390/M00503, first visit of the year: deductible 5000, then 100 %: fund 12963
            late = his.settle("63000000000000000001", "M00503", "2021-12-08",
                              [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)])  # fmt: skip
        finally:
            his.close()
        assert late.settlement.totals.fund_pays_fen == 12963  # settled, in the default session
        graded = finish(started.run.run_id, conn)
        assert graded.record.entries == [] and graded.record.settlements == []
        assert not graded.passed  # graded on what the run got: nothing
        assert graded.run["closed_at"]
        # the institution may open a new run at once: the expired one holds nothing
        start("reversal", CANCER_HOSPITAL, conn)
    finally:
        running.stop(grace=1)


def test_two_institutions_runs_driven_at_the_same_time_are_graded_apart(tmp_path):
    running = start_server(ServerConfig(port=0, db_path=tmp_path / "l.db", max_workers=8))
    conn = Connection(running.target)
    try:
        with ThreadPoolExecutor(2) as pool:
            cancer = pool.submit(run_with_driver, "qinghai-happy-path", CANCER_HOSPITAL, conn, SKIPS_PRESETTLE)
            fuwai = pool.submit(run_with_driver, "refused-fuwai-no-tumour", FUWAI, conn, GOOD)
            cancer_graded, fuwai_graded = cancer.result(), fuwai.result()
    finally:
        running.stop(grace=1)
    assert {e["institution"] for e in cancer_graded.record.entries} == {CANCER_HOSPITAL}
    assert {e["institution"] for e in fuwai_graded.record.entries} == {FUWAI}
    assert {r.id for r in cancer_graded.results if r.status == "failed"} == {"presettle.before-settle"}
    assert fuwai_graded.passed, [r.message for r in fuwai_graded.results if not r.passed]
