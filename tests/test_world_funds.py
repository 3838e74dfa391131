"""World data for the funds after the pooled one and the personal account
(docs/world-format.md): read as written, every misspelling refused naming file, path and key."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
from settlesim.server.model import AssistanceTerms, InsuranceType, SeriousIllnessTerms
from settlesim.server.world_loader import WorldError, default_world_dir, load_world

QINGHAI = "policies/630000.yaml"
BEIJING = "policies/110000.yaml"
CAST = "people/cast.yaml"


@pytest.fixture
def world_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(default_world_dir(), tmp_path / "world"))


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / name
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def load_error(root: Path) -> WorldError:
    with pytest.raises(WorldError) as caught:
        load_world(root)
    return caught.value


def test_the_bundled_funds_and_accounts_load_as_written() -> None:
    world = load_world()
    qinghai = world.policies["630000"].funds[InsuranceType.RESIDENT].on(date(2025, 1, 1))
    assert qinghai is not None
    assert qinghai[1].serious_illness == SeriousIllnessTerms(1_000_000, 6000, 40_000_000)
    assert qinghai[1].assistance == AssistanceTerms(7000, 5_000_000)
    beijing = world.policies["110000"].funds[InsuranceType.EMPLOYEE].on(date(2025, 1, 1))
    assert beijing is not None and beijing[1].serious_illness == SeriousIllnessTerms(
        2_000_000, 8500, 30_000_000
    )
    assert beijing[1].assistance is None
    # the fast person reader must not drop these keys: the careful parser reads such people
    employee = world.people["11000000000000000006"]
    assert employee.account_opening(2025) == 100_000 and employee.account_opening(2024) is None
    assisted = world.people["63000000000000000011"]
    assert assisted.assisted_on(date(2025, 1, 1)) and not assisted.assisted_on(date(2024, 12, 31))


def test_funds_are_effective_dated(world_dir: Path) -> None:
    edit(
        world_dir,
        QINGHAI,
        '      medical_assistance: {ratio: "70%", annual_cap_fen: 5_000_000}\n',
        '      medical_assistance: {ratio: "70%", annual_cap_fen: 5_000_000}\n'
        "    2026-01-01:\n"
        '      serious_illness: {threshold_fen: 900_000, ratio: "65%", annual_cap_fen: null}\n',
    )
    funds = load_world(world_dir).policies["630000"].funds[InsuranceType.RESIDENT]
    before, after = funds.on(date(2025, 12, 31)), funds.on(date(2026, 1, 1))
    assert before is not None and after is not None
    assert before[1].serious_illness is not None and before[1].serious_illness.threshold == 1_000_000
    assert after[1].serious_illness == SeriousIllnessTerms(900_000, 6500, None)
    assert after[1].assistance is None  # a version states every fund it keeps


@pytest.mark.parametrize(
    ("name", "old", "new", "path", "says"),
    [
        (QINGHAI, "threshold_fen: 1_000_000", "treshold_fen: 1_000_000",
         'funds.390.2021-01-01.serious_illness', "unknown key 'treshold_fen'"),
        (QINGHAI, "      medical_assistance:", "      medical_asistance:",
         "funds.390.2021-01-01", "unknown key 'medical_asistance'"),
        (QINGHAI, '{ratio: "70%", annual_cap_fen: 5_000_000}', '{ratio: "70%", anual_cap_fen: 5_000_000}',
         "funds.390.2021-01-01.medical_assistance", "unknown key 'anual_cap_fen'"),
        (QINGHAI, "      serious_illness:", "      large_amount:",
         "funds.390.2021-01-01.large_amount", "not a fund of insurance type 390; use serious_illness"),
        (BEIJING, "      large_amount:", "      serious_illness:",
         "funds.310.2021-01-01.serious_illness", "not a fund of insurance type 310; use large_amount"),
        (QINGHAI, 'ratio: "60%", annual_cap_fen: 40_000_000', 'ratio: "160%", annual_cap_fen: 40_000_000',
         "funds.390.2021-01-01.serious_illness.ratio", "must be 0%..100%"),
        (QINGHAI, "funds:\n  \"390\":", "funds:\n  \"391\":", "funds.391", "insurance type '391'"),
        (CAST, "  account_opening_fen: {2025: 100_000, 2026: 120_000}",
         "  acount_opening_fen: {2025: 100_000, 2026: 120_000}", "[18]", "unknown key 'acount_opening_fen'"),
        (CAST, "  medical_assistance: [{from: 2025-01-01}]", "  medical_assistance: [{form: 2025-01-01}]",
         "[19].medical_assistance[0]", "unknown key 'form'"),
        (CAST, "{2025: 100_000, 2026: 120_000}", "{2025: 100_000, next: 120_000}",
         "[18].account_opening_fen.next", "expected a year"),
    ],
)  # fmt: skip
def test_misspelled_fund_and_account_keys_are_refused(
    world_dir: Path, name: str, old: str, new: str, path: str, says: str
) -> None:
    edit(world_dir, name, old, new)
    error = load_error(world_dir)
    assert (error.file, error.path) == (name, path)
    assert says in error.reason


def test_a_resident_has_no_personal_account(world_dir: Path) -> None:
    edit(
        world_dir,
        CAST,
        "  medical_assistance: [{from: 2025-01-01}]",
        "  medical_assistance: [{from: 2025-01-01}]\n  account_opening_fen: {2025: 100}",
    )
    error = load_error(world_dir)
    assert (error.file, error.path) == (CAST, "[19].account_opening_fen")
    assert "only employees" in error.reason
