"""The synthetic population generator: a loadable, deterministic world whose
people are all eligible for the visits it lists."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from settlesim.server.model import (
    InsuranceType,
    RegistrationScope,
    VisitKey,
    World,
    province_of,
    region_covers,
)
from settlesim.server.rules.eligibility import check_registration
from settlesim.server.world_generate import GenerateReport, generate_world, sample_visits
from settlesim.server.world_loader import default_world_dir, load_world

PERSONS = 2_000
SEED = 20250601


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateReport]:
    out = tmp_path_factory.mktemp("gen") / "world"
    return out, generate_world(out, PERSONS, SEED)


@pytest.fixture(scope="module")
def world(generated: tuple[Path, GenerateReport]) -> World:
    return load_world(generated[0])


def test_writes_a_loadable_world(generated: tuple[Path, GenerateReport], world: World) -> None:
    out, report = generated
    base = load_world(default_world_dir())
    assert report.persons == PERSONS == len(world.people)
    assert sum(report.people_by_region.values()) == PERSONS
    assert set(world.policies) == set(base.policies)
    assert set(base.institutions) < set(world.institutions)
    assert len(world.institutions) == len(base.institutions) + report.institutions
    for code, inst in world.institutions.items():
        if code not in base.institutions:
            assert inst.designated and inst.connected and inst.opened_diseases
            assert world.institution_tokens[code]
            assert region_covers("110000", inst.region) or inst.region[:4] in ("4602", "1402")
    for region, catalog in world.catalogs.items():
        assert set(base.catalogs[region].items) < set(catalog.items)
    assert report.catalog_items == sum(len(c.items) for c in world.catalogs.values()) - sum(
        len(c.items) for c in base.catalogs.values()
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["persons"] == PERSONS == sum(s["persons"] for s in manifest["people"])
    assert len((out / "visits.csv").read_text(encoding="utf-8").splitlines()) == PERSONS + 1


def test_people_unique_and_cover_every_policy_region(world: World) -> None:
    people = world.people.values()
    assert all(len(p.person_no) == 20 and p.person_no.startswith(p.insured_region) for p in people)
    assert len(world.people_by_certificate) == PERSONS  # certificate numbers unique too
    assert {p.insured_region for p in people} == set(world.policies)
    assert {p.insurance_type for p in people} == set(InsuranceType)


def test_registrations_follow_each_scheme(world: World) -> None:
    for person in world.people.values():
        scheme = world.policies[person.insured_region].scheme.on(date(2025, 1, 1))
        assert scheme is not None
        # older ones (expired, or superseded on 2025-01-01) may precede the current one
        current = [
            r for r in person.registrations if r.ended_on is None and r.valid.contains(date(2025, 6, 1))
        ]
        assert len(current) == 1
        registration = current[0]
        assert registration.valid.start <= date(2025, 1, 1)
        assert registration.valid.end is None or registration.valid.end >= date(2027, 12, 31)
        if scheme[1].scope is RegistrationScope.INSTITUTION:
            assert 1 <= len(registration.institutions) <= 2
            assert registration.resident_since is not None
            assert registration.resident_since <= date(2024, 7, 1)  # >= 6 months before `from`
            assert all(
                world.institutions[c].region[:4] == registration.destination[:4]
                for c in registration.institutions
            )
        else:
            assert not registration.institutions
            assert province_of(registration.destination) != province_of(person.insured_region)


@pytest.mark.parametrize("day", [date(2025, 1, 1), date(2025, 6, 1), date(2027, 12, 31)])
def test_sampled_visits_are_eligible(generated: tuple[Path, GenerateReport], world: World, day: date) -> None:
    visits = sample_visits(generated[0], 200, seed=day.toordinal())
    assert len(visits) == 200 == len({v.psn_no for v in visits})
    for v in visits:
        person = world.people[v.psn_no]
        key = VisitKey(
            institution_code=v.institution_code,
            disease_code=v.disease_code,
            visit_date=day,
            person_no=v.psn_no,
            certificate_type=person.certificate_type,
            certificate_no=person.certificate_no,
            insurance_type=InsuranceType(v.insurance_type),
        )
        result = check_registration(world, key)
        assert result.reason is None, (v, result.message)


def test_sample_visits_repeats_when_asked_for_more(generated: tuple[Path, GenerateReport]) -> None:
    visits = sample_visits(generated[0], PERSONS + 10, seed=1)
    assert len(visits) == PERSONS + 10
    assert sample_visits(generated[0], 5, seed=2) == sample_visits(generated[0], 5, seed=2)


def test_same_seed_same_bytes_other_seed_differs(
    generated: tuple[Path, GenerateReport], tmp_path: Path
) -> None:
    first = _files(generated[0])
    generate_world(tmp_path / "again", PERSONS, SEED)
    assert _files(tmp_path / "again") == first
    generate_world(tmp_path / "other", PERSONS, SEED + 1)
    other = _files(tmp_path / "other")
    assert other.keys() == first.keys()
    assert other["people/part-0000.jsonl"] != first["people/part-0000.jsonl"]
    assert other["visits.csv"] != first["visits.csv"]


def test_output_does_not_depend_on_workers(tmp_path: Path) -> None:
    generate_world(tmp_path / "one", 1_000, 5, shard_size=300, workers=1)
    report = generate_world(tmp_path / "two", 1_000, 5, shard_size=300, workers=2)
    assert report.shards == 4
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_world(tmp_path, 10, 1)
