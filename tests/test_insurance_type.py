"""Insurance type (险种 insutype) is spelled the same way in world files and case files: "310",
310, EMPLOYEE or INSURANCE_TYPE_EMPLOYEE (390 / RESIDENT likewise), and a bad spelling fails the
file at load with its path, never a case mid-run (issue 9 item 13)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from conftest import settlesim
from settlesim.clients.hospital import Hospital
from settlesim.clients.replay.cases import CaseError, load_cases
from settlesim.clients.replay.requests import build_request
from settlesim.clients.replay.runner import run_cases
from settlesim.server.model import InsuranceType
from settlesim.server.world_loader import WorldError, default_world_dir, load_world

SPELLINGS = ['"310"', "310", "EMPLOYEE", "INSURANCE_TYPE_EMPLOYEE"]
BAD = ['"301"', "999", "employee", "INSURANCE_TYPE_UNSPECIFIED", "true", "3.1e2"]


def case_file(tmp_path: Path, spelling: str) -> Path:
    """63000000000000000001 is insured as 390: a request saying 310 is refused as a mismatch."""
    path = tmp_path / "case.yaml"
    path.write_text(
        "name: spelled\nworld: default\nwhy: 390 person, 310 asked -> INSURANCE_TYPE_MISMATCH\n"
        "institution: H11010500001\nsteps:\n  - call: verify\n"
        f'    request: {{person: "63000000000000000001", disease: M00503, date: 2021-12-09, '
        f"insurance_type: {spelling}}}\n"
        "    expect: {eligible: false, reason: INSURANCE_TYPE_MISMATCH}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_builds_the_same_request(tmp_path: Path, spelling: str) -> None:
    (case,) = load_cases([case_file(tmp_path, spelling)])
    step = case.steps[0]
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # nothing is sent: the request is only built
        message = build_request(step, Hospital(channel, "H11010500001"), step.request, step.raw)
    assert message.visit.insurance_type == 310


@pytest.mark.parametrize("spelling", BAD)
def test_a_bad_spelling_fails_the_case_file_at_load(tmp_path: Path, spelling: str) -> None:
    with pytest.raises(CaseError) as caught:
        load_cases([case_file(tmp_path, spelling)])
    message = str(caught.value)
    assert "steps[0].request.insurance_type" in message and "INSURANCE_TYPE_EMPLOYEE" in message, message


def test_a_bad_spelling_stops_replay_before_anything_is_sent(tmp_path: Path) -> None:
    """Exit 2 naming the file and path; the target (nobody listens on port 1) is never asked."""
    result = settlesim("replay", str(case_file(tmp_path, '"301"')), "--target", "127.0.0.1:1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "case.yaml: steps[0].request.insurance_type" in result.stderr
    assert "cannot reach" not in result.stderr and "Traceback" not in result.stderr


def test_the_quoted_world_spelling_replays(server, tmp_path: Path) -> None:
    """What failed mid-run before: "310" as a world file writes it."""
    run = run_cases(load_cases([case_file(tmp_path, '"310"')]), server.target)
    assert run.passed, [(s.status, s.message, s.diffs) for c in run.cases for s in c.steps]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_loads_in_a_world(tmp_path: Path, spelling: str) -> None:
    world_dir = Path(shutil.copytree(default_world_dir(), tmp_path / "world"))
    cast = world_dir / "people" / "cast.yaml"
    text = cast.read_text(encoding="utf-8")
    cast.write_text(text.replace('insurance_type: "310"', f"insurance_type: {spelling}"), encoding="utf-8")
    policy = world_dir / "policies" / "630000.yaml"
    text = policy.read_text(encoding="utf-8")
    policy.write_text(text.replace('  "310":', f"  {spelling}:", 1), encoding="utf-8")
    world = load_world(world_dir)
    assert world.people["11000000000000000001"].insurance_type is InsuranceType.EMPLOYEE
    assert any(kind is InsuranceType.EMPLOYEE for kind, _ in world.policies["630000"].terms)


@pytest.mark.parametrize("spelling", BAD)
def test_a_bad_spelling_fails_a_world(tmp_path: Path, spelling: str) -> None:
    world_dir = Path(shutil.copytree(default_world_dir(), tmp_path / "world"))
    cast = world_dir / "people" / "cast.yaml"
    text = cast.read_text(encoding="utf-8")
    cast.write_text(text.replace('insurance_type: "390"', f"insurance_type: {spelling}", 1), encoding="utf-8")
    with pytest.raises(WorldError) as caught:
        load_world(world_dir)
    assert caught.value.path == "[0].insurance_type" and "INSURANCE_TYPE_EMPLOYEE" in caught.value.reason
