"""Record -> case: a check run exported with `settlesim journal export --run RUN
--as-case` is a replay case (docs/cases.md) that replays green against a fresh
stub on the same world, and fails with a field diff against a stub whose world
differs."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from conftest import settlesim
from settlesim.clients.hischeck.command import Connection, run_with_driver
from settlesim.clients.replay import reports
from settlesim.clients.replay.cases import load_cases
from settlesim.clients.replay.runner import run_cases
from settlesim.server.app import RunningServer, ServerConfig, start

GOOD = f"{sys.executable} -m settlesim.clients.hischeck.good_his {{target}} {{institution}} {{run}} {{tasks}}"
DEFAULT_WORLD = Path(__file__).resolve().parents[1] / "server" / "worlds" / "default"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningServer]]:
    """`recorded` plays the platform for the HIS; `other` runs a world where
    Qinghai's deductible is 40 yuan instead of 50 (a fresh stub on the same
    world is the `fresh` fixture, one per test)."""
    tmp = tmp_path_factory.mktemp("record-case")
    world = tmp / "world"
    shutil.copytree(DEFAULT_WORLD, world)
    policy = world / "policies" / "630000.yaml"
    text = policy.read_text(encoding="utf-8")
    assert text.count('deductible_fen: 5_000, ratio: "100%"') == 3  # every 100 % term of Qinghai
    policy.write_text(
        text.replace('deductible_fen: 5_000, ratio: "100%"', 'deductible_fen: 4_000, ratio: "100%"'),
        encoding="utf-8",
    )
    started = {
        "recorded": start(ServerConfig(port=0, db_path=tmp / "recorded.db", max_workers=4)),
        "other": start(ServerConfig(port=0, db_path=tmp / "other.db", world_dir=world, max_workers=4)),
    }
    yield started
    for running in started.values():
        running.stop(grace=1)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[RunningServer]:
    """A stub on the default world with a ledger of its own: each replay starts
    from no settlements and clean yearly totals, whatever another test replayed."""
    running = start(ServerConfig(port=0, db_path=tmp_path / "fresh.db", max_workers=4))
    yield running
    running.stop(grace=1)


def settlements_in(running: RunningServer) -> int:
    with closing(sqlite3.connect(f"file:{running.ledger.path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT COUNT(*) FROM settlements").fetchone()[0]


def record_as_case(stubs: dict[str, RunningServer], scenario: str, tmp_path: Path) -> Path:
    recorded = stubs["recorded"]
    graded = run_with_driver(scenario, None, Connection(recorded.target), GOOD)
    assert graded.passed, graded.driver_output
    out = tmp_path / f"{scenario}.yaml"
    db = str(recorded.ledger.path)
    exported = settlesim(
        "journal", "export", "--db", db, "--run", graded.run["run_id"], "--as-case", "--out", str(out)
    )
    assert exported.returncode == 0, exported.stderr
    return out


def test_a_recorded_lost_answer_replays_green_with_its_links(stubs, fresh, tmp_path):
    path = record_as_case(stubs, "lost-answer-after-commit", tmp_path)
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert case["name"].startswith("recorded-lost-answer-after-commit-") and case["world"] == "default"
    settle1, settle2 = case["steps"]
    assert settle1["raw"]["request"]["msgid"] == "${new_msgid}"
    assert settle2["raw"]["request"]["msgid"] == "${steps.settle1.msgid}"  # the retry kept the msgid
    assert settle2["expect"]["settlement"]["settlement_id"] == "${steps.settle1.settlement.settlement_id}"
    # the happy-path figures (scenario why): fund 12963, patient 5000, deductible 5000
    assert settle1["expect"]["settlement"]["totals"]["fund_pays_fen"] == 12963
    assert "apply_deductible: policy 630000/390/M00503 since 2021-01-01" in case["why"]
    assert settlements_in(fresh) == 0  # no other test replayed on this stub (in any session)
    run = run_cases(load_cases([path]), fresh.target)
    assert run.passed, reports.headline(run)


def test_a_recorded_reconciliation_links_the_entries_and_replays_green(stubs, fresh, tmp_path):
    path = record_as_case(stubs, "reconcile-forgotten-settlement", tmp_path)
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [s["call"] for s in case["steps"]] == ["settle", "settle", "reconcile", "reconcile", "reconcile"]
    assert "his-check's setup" in case["steps"][0]["why"]
    detail = case["steps"][3]["expect"]
    assert [e["settlement_id"] for e in detail["entries"]] == [
        "${steps.settle1.settlement.settlement_id}",
        "${steps.settle2.settlement.settlement_id}",
    ]
    assert case["steps"][4]["expect"]["matched"] is True
    assert settlements_in(fresh) == 0  # no other test replayed on this stub (in any session)
    run = run_cases(load_cases([path]), fresh.target)
    assert run.passed, reports.headline(run)


def test_the_recorded_case_fails_with_a_field_diff_on_another_world(stubs, tmp_path):
    path = record_as_case(stubs, "lost-answer-after-commit", tmp_path)
    run = run_cases(load_cases([path]), stubs["other"].target)
    assert not run.passed
    diffs = {d.path: (d.expected, d.actual) for c in run.cases for s in c.steps for d in s.diffs}
    # deductible 4000 instead of 5000: fund 17963 - 4000 = 13963, patient 4000
    assert diffs["settlement.totals.fund_pays_fen"] == (12963, 13963)
    assert diffs["settlement.totals.deductible_applied_fen"] == (5000, 4000)
