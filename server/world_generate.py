"""Synthetic population generator: a complete world directory with N people.

`generate_world` copies a base world (the bundled default unless told otherwise),
adds synthetic institutions and catalog items, and writes N people as JSON lines
that the loader reads like YAML people. Every person is eligible on every day of
2025-01-01..2027-12-31 for at least one (institution, disease) pair, written to
`visits.csv` so a load test can pick eligible visits without loading the world.

Layout written to `out_dir`:

    world.yaml                      name and description (seed, counts)
    regions.yaml diseases.yaml      copied from the base
    policies/*.yaml                 copied from the base
    catalogs/*.yaml                 base items + synthetic items (SYN-...)
    institutions.yaml               copied from the base
    institutions/synthetic.jsonl    synthetic institutions, each with a token
    people/part-NNNN.jsonl          the people, `shard_size` per file
    visits.csv                      psn_no,institution_code,disease_code,insurance_type
    manifest.json                   seed, counts, shards (small; the loader ignores it)

Deterministic: the same (persons, seed, base, sizes) gives byte-identical files,
whatever the number of worker processes (each shard has its own seeded RNG).
Everything generated is ILLUSTRATIVE.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from settlesim.server.model import (
    Coverage,
    Dated,
    Institution,
    InsuranceType,
    RegionPolicy,
    RegistrationScope,
    World,
    add_months,
    province_of,
    region_covers,
)
from settlesim.server.world_loader import default_world_dir, load_world

# Every generated person is eligible on every day of this window.
VALID_FROM = date(2025, 1, 1)
VALID_TO = date(2027, 12, 31)

VISITS_FILE = "visits.csv"
MANIFEST_FILE = "manifest.json"
INSTITUTIONS_FILE = "institutions/synthetic.jsonl"
VISIT_COLUMNS = ("psn_no", "institution_code", "disease_code", "insurance_type")


@dataclass(frozen=True, slots=True)
class TreatmentArea:
    """Where synthetic institutions are placed (就医地): a registration
    destination and the districts its institutions sit in."""

    code: str  # the destination a city-level registration names
    province_code: str  # a broader destination some registrations name instead
    name: str
    districts: tuple[str, ...]
    weight: int  # share of the synthetic institutions


# Real district codes, so `catalog_for` / `region_covers` resolve as for real data.
TREATMENT_AREAS = (
    TreatmentArea(
        "110000",
        "110000",
        "北京",
        ("110101", "110102", "110105", "110106", "110107", "110108", "110112", "110114", "110115"),
        2,
    ),
    TreatmentArea("460200", "460000", "三亚", ("460202", "460203", "460204", "460205"), 1),
    TreatmentArea("140200", "140000", "大同", ("140212", "140213", "140214", "140215"), 1),
)

# Certificate (身份证) area codes per insured region; unknown regions use their own code.
CERTIFICATE_AREAS = {
    "630000": ("630102", "630103", "630104", "630105", "632121"),
    "110000": ("110101", "110102", "110105", "110106", "110108"),
    "140200": ("140212", "140213", "140214", "140215"),
    "653200": ("653201", "653221", "653222", "653223"),
}

# Relative prevalence, so hypertension and diabetes dominate as in real registries.
DISEASE_WEIGHTS = {
    "M03900": 30,
    "M01600": 25,
    "M00503": 15,
    "M00504": 10,
    "M07801": 8,
    "M07803": 4,
    "M07804": 2,
    "M08300": 3,
}
DISEASE_DEPARTMENTS = {
    "M03900": "cardiology",
    "M01600": "endocrinology",
    "M00503": "oncology",
    "M00504": "oncology",
    "M07801": "nephrology",
    "M07803": "nephrology",
    "M07804": "nephrology",
    "M08300": "transplant",
}
CATEGORIES = (
    ("long_term_residence",) * 4 + ("retiree_relocation",) * 3 + ("work_relocation",) * 2 + ("referral",)
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国文辉鹏飞云海波宁"
CATALOG_KINDS = (
    ("DRUG", "合成药品 synthetic drug"),
    ("EXAM", "合成检查 synthetic examination"),
    ("TREAT", "合成治疗 synthetic treatment"),
    ("MATL", "合成耗材 synthetic consumable"),
)

# Birth dates span this range; with 900 sequence numbers per day (100..999) that
# bounds how many distinct certificate numbers the generator can make.
BIRTH_FIRST = date(1940, 1, 1)
BIRTH_DAYS = (date(2004, 12, 31) - BIRTH_FIRST).days + 1
BIRTH_STRIDE = 7919  # prime, coprime to BIRTH_DAYS: spreads consecutive people over the range
MAX_PERSONS = BIRTH_DAYS * 900
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


@dataclass(frozen=True, slots=True)
class GenerateReport:
    """What `generate_world` wrote."""

    out_dir: Path
    persons: int
    shards: int
    institutions: int  # synthetic institutions added
    catalog_items: int  # synthetic items added over all catalogs
    people_by_region: dict[str, int]
    seconds: float


class SampleVisit(NamedTuple):
    """One eligible visit from `visits.csv`."""

    psn_no: str
    institution_code: str
    disease_code: str
    insurance_type: str


# --- the plan: what a person of each insured region may be given ------------------------------


@dataclass(frozen=True, slots=True)
class _Reach:
    """For one disease: a treatment area outside the insured province and the
    institutions there that opened it."""

    area: TreatmentArea
    institutions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _TypePlan:
    insurance_type: str
    diseases: tuple[str, ...]  # chronic/special and reachable somewhere
    cum_weights: tuple[int, ...]
    reaches: dict[str, tuple[_Reach, ...]]
    covered: tuple[str, ...]  # every chronic/special disease (second qualifications)


@dataclass(frozen=True, slots=True)
class _RegionPlan:
    region: str
    institution_scope: bool  # Beijing-style 异地定点机构备案
    max_institutions: int
    types: tuple[_TypePlan, ...]
    type_cum_weights: tuple[int, ...]
    cert_areas: tuple[tuple[str, int], ...]  # (area code, its weighted digit sum)
    reg_from: tuple[str, ...]  # possible registration start dates
    resident_since: tuple[str, ...]
    resident_before_history: tuple[str, ...]  # also long enough for a registration from 2023
    history: bool  # whether the scheme is old enough for an earlier registration


@dataclass(frozen=True, slots=True)
class _Plan:
    regions: tuple[_RegionPlan, ...]
    names: tuple[str, ...]  # JSON-encoded names
    birth_offset: int
    seed: int


def _days(first: date, last: date) -> tuple[str, ...]:
    """ISO strings of every day first..last: choosing among precomputed strings
    is much cheaper than formatting a date per person."""
    return tuple((first + timedelta(n)).isoformat() for n in range((last - first).days + 1))


def _stable(dated: Dated[Any], first: date, last: date) -> list[Any]:
    """The values in force over first..last, or [] if any day has none."""
    start = dated.on(first)
    if start is None:
        return []
    values = [start[1]]
    for day, value in zip(dated.starts, dated.values, strict=True):
        if first < day <= last:
            if value is None:
                return []
            values.append(value)
    return values


def _chronic_diseases(policy: RegionPolicy, kind: InsuranceType) -> tuple[str, ...]:
    """Diseases the policy covers as chronic/special for `kind` over the window."""
    out: list[str] = []
    for (insurance_type, disease), dated in sorted(policy.terms.items()):
        if insurance_type is not kind:
            continue
        versions = _stable(dated, VALID_FROM, VALID_TO)
        if versions and all(v.coverage is Coverage.CHRONIC_SPECIAL for v in versions):
            out.append(disease)
    return tuple(out)


def _area_of(region: str) -> TreatmentArea | None:
    return next((a for a in TREATMENT_AREAS if region_covers(a.code, region)), None)


def _plan(world: World, institutions: Sequence[Institution], seed: int, rng: random.Random) -> _Plan:
    # Institutions that can settle, grouped by (area, disease).
    opened: dict[tuple[str, str], list[str]] = {}
    for inst in institutions:
        area = _area_of(inst.region)
        if area is None or not (inst.designated and inst.connected):
            continue
        for disease in sorted(inst.opened_diseases):
            opened.setdefault((area.code, disease), []).append(inst.code)

    regions: list[_RegionPlan] = []
    for code, policy in sorted(world.policies.items()):
        schemes = _stable(policy.scheme, VALID_FROM, VALID_TO)
        if not schemes or len({s.scope for s in schemes}) != 1:
            continue  # no scheme, or its kind changes inside the window
        scheme = schemes[0]
        institution_scope = scheme.scope is RegistrationScope.INSTITUTION
        types: list[_TypePlan] = []
        for kind in InsuranceType:
            covered = _chronic_diseases(policy, kind)
            reaches: dict[str, tuple[_Reach, ...]] = {}
            for disease in covered:
                reach = tuple(
                    _Reach(area, tuple(opened[(area.code, disease)]))
                    for area in TREATMENT_AREAS
                    if province_of(area.code) != province_of(code) and (area.code, disease) in opened
                )
                if reach:
                    reaches[disease] = reach
            if reaches:
                diseases = tuple(reaches)
                cum = tuple(accumulate(DISEASE_WEIGHTS.get(d, 5) for d in diseases))
                types.append(_TypePlan(kind.value, diseases, cum, reaches, covered))
        if not types:
            continue
        # Employees (310) are the minority where a region covers both types.
        type_weights = (2 if t.insurance_type == InsuranceType.EMPLOYEE else 3 for t in types)
        scheme_start = policy.scheme.starts[0]
        months = scheme.min_residence_months
        cert_areas = CERTIFICATE_AREAS.get(code, (code,))
        regions.append(
            _RegionPlan(
                region=code,
                institution_scope=institution_scope,
                max_institutions=min(2, scheme.max_institutions),
                types=tuple(types),
                type_cum_weights=tuple(accumulate(type_weights)),
                cert_areas=tuple((a, _digit_sum(a, 0)) for a in cert_areas),
                # Beijing: validity 1-3 years tied to the qualification, so exactly the window.
                reg_from=(VALID_FROM.isoformat(),)
                if institution_scope
                else _days(max(date(2023, 1, 1), scheme_start), VALID_FROM),
                resident_since=_days(date(2010, 1, 1), add_months(VALID_FROM, -months)),
                resident_before_history=_days(date(2010, 1, 1), add_months(_HISTORY_FROM, -months)),
                history=scheme_start <= date(2022, 1, 1),
            )
        )
    if not regions:
        raise ValueError("the base world has no policy that can register anyone in the treatment areas")

    names: list[str] = []
    for _ in range(4096):
        given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))
        names.append(json.dumps(rng.choice(SURNAMES) + given, ensure_ascii=False))
    return _Plan(tuple(regions), tuple(names), rng.randrange(BIRTH_DAYS), seed)


def _digit_sum(digits: str, offset: int) -> int:
    """Weighted sum of `digits` placed at `offset` in an 18-digit ID number."""
    return sum(int(c) * w for c, w in zip(digits, _ID_WEIGHTS[offset:], strict=False))


# Precomputed per-birth-day and per-sequence parts of certificate numbers.
_BIRTH_PARTS = tuple(
    (s, _digit_sum(s, 6))
    for s in ((BIRTH_FIRST + timedelta(n)).strftime("%Y%m%d") for n in range(BIRTH_DAYS))
)
_SEQ_PARTS = tuple((f"{n:03d}", _digit_sum(f"{n:03d}", 14)) for n in range(1000))
_INSURED_FROM = _days(date(1995, 1, 1), date(2020, 12, 31))
_QUAL_FROM = _days(date(2019, 1, 1), date(2024, 12, 31))
_OLD_FROM = _days(date(2021, 1, 1), date(2022, 12, 31))
_OLD_TO = _days(date(2023, 1, 1), date(2024, 12, 31))
_HISTORY_FROM = date(2023, 1, 1)
_SUPERSEDED_FROM = _days(_HISTORY_FROM, date(2024, 6, 30))
_OPEN_ENDS = (VALID_TO.isoformat(), "2028-12-31", "2029-12-31")


# --- institutions and catalogs ----------------------------------------------------------------


def _synthetic_institutions(
    world: World, count: int, rng: random.Random
) -> tuple[list[Institution], list[dict[str, Any]]]:
    diseases = sorted(world.diseases)
    areas = [a for a in TREATMENT_AREAS if _area_known(world, a)]
    if not areas and count:
        raise ValueError("none of the treatment areas is a region of the base world")
    taken = set(world.institutions)
    next_seq: Counter[str] = Counter()
    made: list[Institution] = []
    cum = list(accumulate(a.weight for a in areas))
    for n in range(count):
        # Round-robin first so every area has institutions even for small counts.
        area = areas[n] if n < len(areas) else rng.choices(areas, cum_weights=cum)[0]
        district = rng.choice(area.districts)
        while True:
            next_seq[district] += 1
            code = f"H{district}{50000 + next_seq[district]:05d}"
            if code not in taken:
                break
        taken.add(code)
        # Common diseases are opened widely, transplant care rarely.
        opened = [d for d in diseases if rng.random() < min(0.9, DISEASE_WEIGHTS.get(d, 5) / 30 + 0.2)]
        if not opened:
            opened = [rng.choice(diseases)]
        made.append(
            Institution(
                code=code,
                name=f"{area.name}合成医院{n + 1:04d} synthetic hospital (ILLUSTRATIVE)",
                region=district,
                level=rng.choice(("3A", "3B", "2A", "2A", "2B")),
                opened_diseases=frozenset(opened),
            )
        )
    # Every (area, disease) pair has at least one institution, so any covered
    # disease is reachable from any insured province.
    for area in areas:
        local = [i for i, inst in enumerate(made) if region_covers(area.code, inst.region)]
        for disease in diseases:
            if local and not any(disease in made[i].opened_diseases for i in local):
                i = rng.choice(local)
                made[i] = replace(made[i], opened_diseases=made[i].opened_diseases | {disease})
    records = [
        {
            "code": inst.code,
            "name": inst.name,
            "region": inst.region,
            "level": inst.level,
            "designated": True,
            "connected": True,
            "opened_diseases": sorted(inst.opened_diseases),
            "departments": sorted({DISEASE_DEPARTMENTS.get(d, "general") for d in inst.opened_diseases}),
            "token": f"dev-token-{inst.code}",
        }
        for inst in made
    ]
    return made, records


def _area_known(world: World, area: TreatmentArea) -> bool:
    return all(
        d in world.regions or d[:4] + "00" in world.regions or d[:2] + "0000" in world.regions
        for d in area.districts
    )


def _catalog_items(codes: Sequence[tuple[str, str]], rng: random.Random) -> list[dict[str, Any]]:
    """One treatment region's terms for the shared synthetic codes: the same
    national code has different classes, shares and ceilings per region."""
    items: list[dict[str, Any]] = []
    for code, name in codes:
        if rng.random() < 0.1:
            continue  # not every region lists every item
        terms: dict[date, Any] = {date(2021, 1, 1): _catalog_terms(rng)}
        if rng.random() < 0.05:
            terms[date(2026, 1, 1)] = _catalog_terms(rng)  # a catalog adjustment inside the window
        items.append({"code": code, "name": name, "terms": terms})
    return items


def _catalog_terms(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    terms: dict[str, Any] = {"class": "A" if roll < 0.5 else "B" if roll < 0.85 else "C"}
    if terms["class"] == "B":
        terms["b_share"] = rng.choice(("5%", "10%", "10%", "15%", "20%", "30%"))
    if terms["class"] != "C" and rng.random() < 0.2:
        terms["price_ceiling_fen"] = rng.randrange(10, 2_000) * 100
    return terms


def _write_catalog(source: Path, target: Path, extra: list[dict[str, Any]]) -> None:
    """The base catalog with `extra` items appended. Catalogs are one file per
    region for the loader, so the file is rewritten; its header comment is kept."""
    text = source.read_text(encoding="utf-8")
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line + "\n")
    doc = yaml.safe_load(text)
    doc["items"] = list(doc.get("items") or []) + extra
    body = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=200)
    note = f"# + {len(extra)} synthetic items (SYN-...) appended by settlesim world generate: ILLUSTRATIVE.\n"
    target.write_text("".join(header) + note + body, encoding="utf-8", newline="\n")


# --- people -------------------------------------------------------------------------------------


def _shard_rng(seed: int, shard: int) -> random.Random:
    # A string seed is hashed with SHA-512: stable across runs and processes.
    return random.Random(f"settlesim-world-generate:{seed}:people:{shard}")


def _people(plan: _Plan, shard: int, first: int, stop: int) -> Iterator[tuple[str, str, str]]:
    """(JSON line, visits.csv line, insured region) for persons first..stop-1.
    The hot loop (~8 µs a person): lines are assembled from precomputed JSON
    fragments and date strings rather than by json.dumps on dicts."""
    rng = _shard_rng(plan.seed, shard)
    random_, choice, choices = rng.random, rng.choice, rng.choices
    regions, names, offset = plan.regions, plan.names, plan.birth_offset
    birth_parts, seq_parts = _BIRTH_PARTS, _SEQ_PARTS
    valid_from, valid_to = VALID_FROM.isoformat(), VALID_TO.isoformat()
    for k in range(first, stop):
        rp = choice(regions)
        tp = choices(rp.types, cum_weights=rp.type_cum_weights)[0] if len(rp.types) > 1 else rp.types[0]
        disease = choices(tp.diseases, cum_weights=tp.cum_weights)[0]
        reach = choice(tp.reaches[disease])
        psn_no = f"{rp.region}{10**13 + k:014d}"

        # Certificate: (birth day, sequence) is one-to-one in k (for k < MAX_PERSONS), so
        # numbers are unique without a set of those already issued.
        area, area_sum = choice(rp.cert_areas)
        birth, birth_sum = birth_parts[(k * BIRTH_STRIDE + offset) % BIRTH_DAYS]
        seq, seq_sum = seq_parts[100 + (k // BIRTH_DAYS + k % BIRTH_DAYS * 37) % 900]
        certificate = f"{area}{birth}{seq}{_ID_CHECK[(area_sum + birth_sum + seq_sum) % 11]}"

        if random_() < 0.05:  # an earlier insured period with a gap
            insured = (
                f'{{"from":"{choice(_INSURED_FROM[:3000])}","to":"{choice(_INSURED_FROM[3000:5000])}"}},'
                f'{{"from":"{choice(_INSURED_FROM[5000:])}"}}'
            )
        else:
            insured = f'{{"from":"{choice(_INSURED_FROM)}"}}'

        quals = f'{{"disease":"{disease}","from":"{choice(_QUAL_FROM)}","to":"{choice(_OPEN_ENDS)}"}}'
        if len(tp.covered) > 1 and random_() < 0.15:
            other = choice(tp.covered)
            if other != disease:
                quals += f',{{"disease":"{other}","from":"{choice(_QUAL_FROM)}","to":"{choice(_OPEN_ENDS)}"}}'

        reg_id = f"GR{psn_no}"
        category = choice(CATEGORIES)
        regs = ""
        if rp.institution_scope:
            named = reach.institutions
            if rp.max_institutions > 1 and len(named) > 1 and random_() < 0.4:
                named = tuple(rng.sample(named, 2))
            else:
                named = (choice(named),)
            institution = named[0]
            if rp.history and random_() < 0.1:  # 变更备案: an earlier institution, superseded
                resident = choice(rp.resident_before_history)
                old = choice(tp.reaches[disease])
                regs = (
                    f'{{"id":"{reg_id}-0","category":"{category}","destination":"{old.area.code}",'
                    f'"institutions":["{choice(old.institutions)}"],'
                    f'"from":"{choice(_SUPERSEDED_FROM)}","to":"2025-12-31",'
                    f'"status":"superseded","ended_on":"{valid_from}","replaced_by":"{reg_id}",'
                    f'"resident_since":"{resident}"}},'
                )
            else:
                resident = choice(rp.resident_since)
            named_json = '","'.join(named)
            regs += (
                f'{{"id":"{reg_id}","category":"{category}","destination":"{reach.area.code}",'
                f'"institutions":["{named_json}"],"from":"{valid_from}","to":"{valid_to}",'
                f'"resident_since":"{resident}"}}'
            )
        else:
            institution = choice(reach.institutions)
            destination = reach.area.province_code if random_() < 0.2 else reach.area.code
            if rp.history and random_() < 0.1:  # an earlier registration, expired
                old_destination = choice(tp.reaches[disease]).area.code
                regs = (
                    f'{{"id":"{reg_id}-0","category":"{category}","destination":"{old_destination}",'
                    f'"from":"{choice(_OLD_FROM)}","to":"{choice(_OLD_TO)}"}},'
                )
            regs += (
                f'{{"id":"{reg_id}","category":"{category}","destination":"{destination}",'
                f'"from":"{choice(rp.reg_from)}","to":"{choice(_OPEN_ENDS)}"}}'
            )

        line = (
            f'{{"psn_no":"{psn_no}","name":{choice(names)},'
            f'"certificate":{{"type":"01","number":"{certificate}"}},'
            f'"insured_region":"{rp.region}","insurance_type":"{tp.insurance_type}",'
            f'"insured":[{insured}],"qualifications":[{quals}],"registrations":[{regs}]}}\n'
        )
        yield line, f"{psn_no},{institution},{disease},{tp.insurance_type}\n", rp.region


def _write_shard(args: tuple[_Plan, Path, Path, int, int, int]) -> dict[str, int]:
    """Write one people shard and its part of visits.csv; return counts by region."""
    plan, path, visits_path, shard, first, stop = args
    counts: Counter[str] = Counter()
    with (
        path.open("w", encoding="utf-8", newline="\n") as people,
        visits_path.open("w", encoding="utf-8", newline="\n") as visits,
    ):
        lines: list[str] = []
        rows: list[str] = []
        for line, row, region in _people(plan, shard, first, stop):
            lines.append(line)
            rows.append(row)
            counts[region] += 1
            if len(lines) >= 10_000:  # bounded memory, few large writes
                people.write("".join(lines))
                visits.write("".join(rows))
                lines.clear()
                rows.clear()
        people.write("".join(lines))
        visits.write("".join(rows))
    return dict(counts)


# --- the entry points ---------------------------------------------------------------------------


def generate_world(
    out_dir: Path,
    persons: int,
    seed: int,
    *,
    base: Path | None = None,
    institutions: int = 300,
    catalog_items: int = 300,
    shard_size: int = 250_000,
    workers: int | None = None,
) -> GenerateReport:
    """Write a world with `persons` synthetic people to `out_dir` (absent or
    empty). `workers` processes write the people shards (default: one per CPU,
    at most one per shard); the output does not depend on it."""
    started = time.perf_counter()
    if not 0 <= persons <= MAX_PERSONS:
        raise ValueError(f"persons must be 0..{MAX_PERSONS} (unique certificate numbers run out)")
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    base = Path(base) if base is not None else default_world_dir()
    world = load_world(base)
    rng = random.Random(f"settlesim-world-generate:{seed}:world")

    # The base world's reference data, verbatim (its people are not copied).
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("regions.yaml", "diseases.yaml", "institutions.yaml"):
        if (base / name).exists():
            shutil.copyfile(base / name, out_dir / name)
    for folder in ("regions", "diseases", "policies", "institutions"):
        if (base / folder).is_dir():
            shutil.copytree(base / folder, out_dir / folder)
    if (out_dir / INSTITUTIONS_FILE).exists():
        raise FileExistsError(f"the base world already has {INSTITUTIONS_FILE}")

    made, records = _synthetic_institutions(world, institutions, rng)
    (out_dir / "institutions").mkdir(exist_ok=True)
    with (out_dir / INSTITUTIONS_FILE).open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)

    # One pool of codes shared by every catalog: the treatment region decides the terms.
    codes: list[tuple[str, str]] = []
    for n in range(1, catalog_items + 1):
        kind, label = CATALOG_KINDS[n % len(CATALOG_KINDS)]
        codes.append((f"SYN-{kind}-{n:05d}", f"{label} {n:05d} (ILLUSTRATIVE)"))
    (out_dir / "catalogs").mkdir()
    catalog_counts: dict[str, int] = {}
    for source in sorted((base / "catalogs").glob("*.yaml")):
        extra = _catalog_items(codes, rng)
        _write_catalog(source, out_dir / "catalogs" / source.name, extra)
        catalog_counts[source.stem] = len(extra)

    plan = _plan(world, [*world.institutions.values(), *made], seed, rng)

    people_dir = out_dir / "people"
    people_dir.mkdir()
    jobs = [
        (
            plan,
            people_dir / f"part-{shard:04d}.jsonl",
            out_dir / f".visits-{shard:04d}.part",
            shard,
            first,
            min(first + shard_size, persons),
        )
        for shard, first in enumerate(range(0, persons, shard_size))
    ]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_write_shard, jobs))
    else:
        results = [_write_shard(job) for job in jobs]

    by_region: Counter[str] = Counter()
    for counts in results:
        by_region.update(counts)
    with (out_dir / VISITS_FILE).open("wb") as visits:
        visits.write((",".join(VISIT_COLUMNS) + "\n").encode())
        for job in jobs:
            with job[2].open("rb") as part:
                shutil.copyfileobj(part, visits)
            job[2].unlink()

    (out_dir / "world.yaml").write_text(
        yaml.safe_dump(
            {
                "name": f"generated-{persons}-seed{seed}",
                "description": (
                    f"The {world.name} world's regions, policies, catalogs and institutions, plus "
                    f"{len(made)} synthetic institutions, synthetic catalog items and {persons} synthetic "
                    f"people (seed {seed}), each eligible {VALID_FROM}..{VALID_TO} for the visit in "
                    f"{VISITS_FILE}. Made by settlesim world generate."
                ),
                "illustrative": "All synthetic data (SYN- items, hospitals, people) is ILLUSTRATIVE.",
            },
            allow_unicode=True,
            sort_keys=False,
            width=100,
        ),
        encoding="utf-8",
        newline="\n",
    )
    manifest = {
        "generator": "settlesim.server.world_generate",
        "format": 1,
        "seed": seed,
        "persons": persons,
        "base": world.name,
        "valid": {"from": VALID_FROM.isoformat(), "to": VALID_TO.isoformat()},
        "people": [
            {"file": f"people/{path.name}", "first": first, "persons": stop - first}
            for _, path, _, _, first, stop in jobs
        ],
        "people_by_region": dict(sorted(by_region.items())),
        "visits": {"file": VISITS_FILE, "columns": list(VISIT_COLUMNS), "rows": persons},
        "institutions": {"file": INSTITUTIONS_FILE, "synthetic": len(made), "base": len(world.institutions)},
        "catalogs": {"synthetic_items": catalog_counts, "codes": [code for code, _ in codes]},
    }
    (out_dir / MANIFEST_FILE).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8", newline="\n"
    )
    return GenerateReport(
        out_dir=out_dir,
        persons=persons,
        shards=len(jobs),
        institutions=len(made),
        catalog_items=sum(catalog_counts.values()),
        people_by_region=dict(sorted(by_region.items())),
        seconds=time.perf_counter() - started,
    )


def sample_visits(world_dir: Path, count: int, seed: int) -> list[SampleVisit]:
    """`count` eligible visits from a generated world's visits.csv, without
    loading the world: distinct rows while there are enough, else with
    repeats. Reads the file once and keeps only the chosen rows."""
    path = Path(world_dir) / VISITS_FILE
    manifest = Path(world_dir) / MANIFEST_FILE
    if manifest.exists():
        rows = json.loads(manifest.read_text(encoding="utf-8"))["visits"]["rows"]
    else:
        with path.open(encoding="utf-8") as f:
            rows = sum(1 for _ in f) - 1
    if rows <= 0 or count <= 0:
        return []
    rng = random.Random(seed)
    picks = rng.sample(range(rows), count) if count <= rows else rng.choices(range(rows), k=count)
    wanted = set(picks)
    found: dict[int, SampleVisit] = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        for i, row in enumerate(reader):
            if i in wanted:
                found[i] = SampleVisit(*row)
    return [found[i] for i in picks]
