"""The world loader: the bundled world loads; a broken world fails with one
WorldError naming the file, the path inside it and the reason; a new region is
a data change only (docs/world-format.md)."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from conftest import settlesim
from settlesim.server.model import CatalogClass, FeeLine, InsuranceType, VisitKey, YearlyTotals
from settlesim.server.rules.eligibility import check_registration
from settlesim.server.rules.settlement import compute_settlement
from settlesim.server.world_loader import WorldError, default_world_dir, load_world


@pytest.fixture
def world_dir(tmp_path: Path) -> Path:
    """A writable copy of the bundled world."""
    return Path(shutil.copytree(default_world_dir(), tmp_path / "world"))


def edit(path: Path, old: str, new: str) -> None:
    """Replace exactly one occurrence of `old` in `path`."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def load_error(root: Path) -> WorldError:
    with pytest.raises(WorldError) as caught:
        load_world(root)
    return caught.value


# --- the bundled world --------------------------------------------------------------------------


def test_bundled_world_loads() -> None:
    world = load_world()
    assert world.name == "default"
    assert {"110000", "630000", "140200", "653200", "460200"} <= set(world.regions)
    assert set(world.policies) == {"110000", "630000", "140200", "653200"}
    assert set(world.catalogs) == {"110000", "140000", "460000"}
    assert {"H11010500001", "H11010200002"} <= set(world.institutions)
    assert world.institutions["H11010200002"].opened_diseases >= {"M03900", "M01600", "M07801", "M08300"}
    reference = world.people["63000000000000000001"]
    assert reference.insured_region == "630000"
    assert reference.insurance_type is InsuranceType.RESIDENT
    assert world.people_by_certificate[("01", "630102197001010021")] == reference.person_no
    assert world.institution_tokens["H11010500001"] == "dev-token-H11010500001"
    # money in fen and ratios in basis points
    hotan = world.policies["653200"].terms[(InsuranceType.RESIDENT, "M00503")].on(date(2025, 6, 1))
    assert hotan is not None
    assert (hotan[1].ratio_bp, hotan[1].annual_cap) == (7500, 10_000_000)
    # a null version ends an item
    retired = world.catalogs["110000"].items["A-RETIRED-001"].terms
    assert retired.on(date(2023, 12, 31)) is not None
    assert retired.on(date(2024, 1, 1)) is None


def test_copy_of_bundled_world_loads(world_dir: Path) -> None:
    assert len(load_world(world_dir).people) == len(load_world().people)


def test_missing_directory(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nowhere")
    assert "not found" in error.reason


# --- broken worlds ------------------------------------------------------------------------------


def test_bad_region_code(world_dir: Path) -> None:
    edit(
        world_dir / "regions.yaml",
        '{code: "110000", name: 北京市 Beijing}',
        '{code: "11000", name: 北京市 Beijing}',
    )
    error = load_error(world_dir)
    assert (error.file, error.path) == ("regions.yaml", "[0].code")
    assert "6 digits" in error.reason
    assert str(error).startswith("regions.yaml: [0].code: ")


def test_an_institution_that_settles_needs_its_regions_catalog(world_dir: Path) -> None:
    """Sanya's hospitals open diseases; without Hainan's catalog (就医地目录) they
    could not price a fee line, so the world does not load."""
    (world_dir / "catalogs" / "460000.yaml").unlink()
    error = load_error(world_dir)
    assert error.file == "institutions" and error.path.startswith("H4602")
    assert "no catalog" in error.reason and "460200" in error.reason


def test_unknown_disease_in_policy(world_dir: Path) -> None:
    edit(world_dir / "policies" / "653200.yaml", "    M07801:\n", "    M99999:\n")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("policies/653200.yaml", "terms.390.M99999")
    assert "unknown disease 'M99999'" in error.reason


def test_class_b_without_b_share(world_dir: Path) -> None:
    edit(world_dir / "catalogs" / "110000.yaml", '{class: B, b_share: "10%"}', "{class: B}")
    error = load_error(world_dir)
    assert error.file == "catalogs/110000.yaml"
    assert error.path == "items[4].terms.2021-01-01"  # B-DRUG-001 is the fifth item
    assert "class B needs b_share" in error.reason


def test_b_share_on_class_a(world_dir: Path) -> None:
    edit(
        world_dir / "catalogs" / "460000.yaml",
        "{2021-01-01: {class: A}}\n  - code: B-DRUG-001",
        "{2021-01-01: {class: A, b_share: '5%'}}\n  - code: B-DRUG-001",
    )
    error = load_error(world_dir)
    assert (error.file, error.path) == ("catalogs/460000.yaml", "items[1].terms.2021-01-01.b_share")
    assert "class B only" in error.reason


@pytest.mark.parametrize("ratio", ["120%", "75", "-5%", "75.001%", "lots%"])
def test_bad_ratio(world_dir: Path, ratio: str) -> None:
    policy = world_dir / "policies" / "653200.yaml"
    text = policy.read_text(encoding="utf-8")
    policy.write_text(text.replace('ratio: "75%"', f'ratio: "{ratio}"', 1), encoding="utf-8")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("policies/653200.yaml", "terms.390.M00503.2025-01-01.ratio")
    assert ratio in error.reason


@pytest.mark.parametrize("bad", ["2021-02-30", "2021-13-01", "someday"])
def test_bad_date_in_a_person(world_dir: Path, bad: str) -> None:
    # 2021-02-30 and 2021-13-01 look like YAML timestamps but are no dates: they must
    # still be reported with their file and path
    edit(
        world_dir / "people" / "cast.yaml",
        "qualifications: [{disease: M00503, from: 2021-06-01, to: 2027-12-31}]",
        f"qualifications: [{{disease: M00503, from: {bad}, to: 2027-12-31}}]",
    )
    error = load_error(world_dir)
    assert (error.file, error.path) == ("people/cast.yaml", "[0].qualifications[0].from")
    assert "expected a date" in error.reason and bad in error.reason


def test_bad_effective_date_key(world_dir: Path) -> None:
    edit(world_dir / "policies" / "630000.yaml", "      2026-01-01: {coverage", "      2026-02-30: {coverage")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("policies/630000.yaml", "terms.390.M00503.2026-02-30")
    assert "expected a date" in error.reason


def test_period_ending_before_it_starts(world_dir: Path) -> None:
    edit(
        world_dir / "people" / "cast.yaml",
        "from: 2021-06-01, to: 2027-12-31",
        "from: 2021-06-01, to: 2020-12-31",
    )
    error = load_error(world_dir)
    assert (error.file, error.path) == ("people/cast.yaml", "[0].qualifications[0]")
    assert "before" in error.reason


def test_duplicate_psn_no(world_dir: Path) -> None:
    (world_dir / "people" / "more.yaml").write_text(
        textwrap_person("63000000000000000001", "630102199901010099"), encoding="utf-8"
    )
    error = load_error(world_dir)
    assert (error.file, error.path) == ("people/more.yaml", "[0]")
    assert "duplicate person '63000000000000000001'" in error.reason


def test_registration_to_unknown_institution(world_dir: Path) -> None:
    edit(
        world_dir / "people" / "cast.yaml",
        "institutions: [H46020000001], from: 2025-01-01, to: 2027-12-31, resident_since: 2024-01-01",
        "institutions: [H99999999999], from: 2025-01-01, to: 2027-12-31, resident_since: 2024-01-01",
    )
    error = load_error(world_dir)
    assert error.file == "people/cast.yaml"
    assert error.path == "[9].registrations[0].institutions"  # the first Beijing person, tenth in the cast
    assert "unknown institution 'H99999999999'" in error.reason


def test_invalid_yaml(world_dir: Path) -> None:
    (world_dir / "regions.yaml").write_text('- {code: "110000", name: [unclosed\n', encoding="utf-8")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("regions.yaml", "")
    assert "not valid YAML" in error.reason
    assert str(error).startswith("regions.yaml: <top>: not valid YAML")


def test_missing_required_key(world_dir: Path) -> None:
    edit(
        world_dir / "institutions.yaml",
        "- code: H46020000003\n  name: 三亚非定点诊所 Sanya clinic, not designated (ILLUSTRATIVE)\n",
        "- code: H46020000003\n",
    )
    error = load_error(world_dir)
    assert (error.file, error.path) == ("institutions.yaml", "[4]")
    assert "missing required key 'name'" in error.reason


# --- people in JSON Lines -------------------------------------------------------------------------


def jsonl_person(psn_no: str, certificate: str, **extra: object) -> dict[str, object]:
    return {
        "psn_no": psn_no,
        "name": "JSONL person",
        "certificate": {"type": "01", "number": certificate},
        "insured_region": "630000",
        "insurance_type": "390",
        "insured": [{"from": "2015-01-01"}],
        "qualifications": [{"disease": "M00503", "from": "2021-01-01", "to": "2027-12-31"}],
        "registrations": [
            {
                "id": "QH-R-JSONL",
                "category": "referral",
                "destination": "110000",
                "from": "2025-01-01",
                "to": "2027-12-31",
            }
        ],
        **extra,
    }


def test_people_in_jsonl_load(world_dir: Path) -> None:
    people = [
        jsonl_person("63000000000000000101", "630102199901010101"),
        jsonl_person("63000000000000000102", "630102199901010102"),
    ]
    (world_dir / "people" / "extra.jsonl").write_text(
        "\n".join(json.dumps(p, ensure_ascii=False) for p in people) + "\n\n", encoding="utf-8"
    )
    world = load_world(world_dir)
    person = world.people["63000000000000000102"]
    assert person.qualifications[0].valid.start == date(2021, 1, 1)  # dates given as JSON strings
    assert person.registrations[0].destination == "110000"
    assert world.people_by_certificate[("01", "630102199901010101")] == "63000000000000000101"
    result = check_registration(
        world, VisitKey("H11010500001", "M00503", date(2025, 6, 1), person_no="63000000000000000102")
    )
    assert result.eligible, result.message


def test_bad_jsonl_line(world_dir: Path) -> None:
    good = json.dumps(jsonl_person("63000000000000000101", "630102199901010101"))
    (world_dir / "people" / "extra.jsonl").write_text(good + "\n{not json\n", encoding="utf-8")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("people/extra.jsonl", "line 2")
    assert "not valid JSON" in error.reason


def test_bad_value_in_jsonl(world_dir: Path) -> None:
    bad = jsonl_person("63000000000000000101", "630102199901010101", insured_region="63")
    (world_dir / "people" / "extra.jsonl").write_text(json.dumps(bad) + "\n", encoding="utf-8")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("people/extra.jsonl", "line 1.insured_region")
    assert "6 digits" in error.reason


def textwrap_person(psn_no: str, certificate: str) -> str:
    return (
        f'- psn_no: "{psn_no}"\n'
        f'  certificate: {{type: "01", number: "{certificate}"}}\n'
        '  insured_region: "630000"\n'
        '  insurance_type: "390"\n'
        "  insured: [{from: 2015-01-01}]\n"
    )


# --- a new region is a data change only -----------------------------------------------------------

SICHUAN_REGIONS = """\
- {code: "510000", name: 四川省 Sichuan}
- {code: "510100", name: 成都市 Chengdu}
"""

CHENGDU_POLICY = """\
region: "510100"
source: test
scheme:
  2024-01-01: {scope: city}
terms:
  "390":
    M00503:
      2024-01-01: {coverage: chronic_special, deductible_fen: 20_000, ratio: "85%", annual_cap_fen: 3_000_000}
"""

SICHUAN_CATALOG = """\
region: "510000"
source: test
items:
  - code: A-CONSULT-001
    name: consultation
    terms: {2021-01-01: {class: A}}
  - code: B-DRUG-001
    name: class-B drug, 12% in Sichuan
    terms: {2021-01-01: {class: B, b_share: "12%"}}
"""

CHENGDU_INSTITUTION = """\
- code: H51010400001
  name: Chengdu oncology hospital (test)
  region: "510104"
  opened_diseases: [M00503]
"""

NEW_PEOPLE = [
    # insured in the new region, registered to Beijing: new policy, Beijing catalog
    {
        "psn_no": "51010000000000000001",
        "certificate": {"number": "510104198001010051"},
        "insured_region": "510100",
        "insurance_type": "390",
        "insured": [{"from": "2015-01-01"}],
        "qualifications": [{"disease": "M00503", "from": "2024-01-01", "to": "2027-12-31"}],
        "registrations": [
            {"id": "SC-R-0001", "category": "referral", "destination": "110000", "from": "2025-01-01"}
        ],
    },
    # insured in Qinghai, registered to Chengdu: Qinghai policy, new catalog
    {
        "psn_no": "63000000000000000201",
        "certificate": {"number": "630102198001010201"},
        "insured_region": "630000",
        "insurance_type": "390",
        "insured": [{"from": "2015-01-01"}],
        "qualifications": [{"disease": "M00503", "from": "2024-01-01", "to": "2027-12-31"}],
        "registrations": [
            {"id": "QH-R-0201", "category": "referral", "destination": "510100", "from": "2025-01-01"}
        ],
    },
]


def test_new_region_is_a_data_change_only(world_dir: Path) -> None:
    (world_dir / "regions").mkdir()
    (world_dir / "regions" / "sichuan.yaml").write_text(SICHUAN_REGIONS, encoding="utf-8")
    (world_dir / "policies" / "510100.yaml").write_text(CHENGDU_POLICY, encoding="utf-8")
    (world_dir / "catalogs" / "510000.yaml").write_text(SICHUAN_CATALOG, encoding="utf-8")
    (world_dir / "institutions").mkdir()
    (world_dir / "institutions" / "sichuan.yaml").write_text(CHENGDU_INSTITUTION, encoding="utf-8")
    (world_dir / "people" / "sichuan.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in NEW_PEOPLE), encoding="utf-8"
    )
    world = load_world(world_dir)
    day = date(2025, 6, 1)

    # 1. the Chengdu patient at the Cancer Hospital CAMS in Beijing
    visit = VisitKey("H11010500001", "M00503", day, person_no="51010000000000000001")
    eligibility = check_registration(world, visit)
    assert eligibility.eligible, eligibility.message
    assert eligibility.policy is not None and eligibility.policy.region == "510100"
    assert eligibility.terms is not None
    catalog = world.catalog_for("110105")
    assert catalog is not None and catalog.region == "110000"
    fee = [FeeLine("1", "A-CONSULT-001", 30000, 1), FeeLine("2", "B-DRUG-001", 1000, 1)]
    result = compute_settlement(fee, catalog, eligibility.terms, "test", YearlyTotals(), day)
    f = result.figures
    assert f.total == 31000  # 30000 + 1000
    assert f.pre_self_pay == 100  # round(1000 × 10%), Beijing catalog
    assert f.in_scope == 30900  # 30000 + (1000 - 100)
    assert f.deductible_applied == 20000  # min(30900, 20000 - 0), Chengdu policy
    assert f.fund_pays == 9265  # round((30900 - 20000) × 85%) = round(9265.0); cap 3_000_000 not reached
    assert f.patient_pays == 21735  # 31000 - 9265
    assert f.cap_remaining == 2_990_735  # 3_000_000 - 9265

    # 2. a Qinghai patient at the new Chengdu hospital: the new Sichuan catalog applies
    visit = VisitKey("H51010400001", "M00503", day, person_no="63000000000000000201")
    eligibility = check_registration(world, visit)
    assert eligibility.eligible, eligibility.message
    assert eligibility.terms is not None
    catalog = world.catalog_for(world.institutions["H51010400001"].region)
    assert catalog is not None and catalog.region == "510000"
    assert catalog.items["B-DRUG-001"].terms.on(day) is not None
    fee = [FeeLine("1", "B-DRUG-001", 1000, 1), FeeLine("2", "A-CONSULT-001", 5000, 1)]
    result = compute_settlement(fee, catalog, eligibility.terms, "test", YearlyTotals(), day)
    f = result.figures
    assert result.items[0].catalog_class is CatalogClass.B
    assert f.total == 6000  # 1000 + 5000
    assert f.pre_self_pay == 120  # round(1000 × 12%), Sichuan catalog
    assert f.in_scope == 5880  # (1000 - 120) + 5000
    assert f.deductible_applied == 5000  # min(5880, 5000 - 0), Qinghai policy
    assert f.fund_pays == 880  # round((5880 - 5000) × 100%)
    assert f.patient_pays == 5120  # 6000 - 880


# --- cross-references ---------------------------------------------------------------------------


def test_person_insured_in_an_unknown_region(world_dir: Path) -> None:
    edit(world_dir / "people" / "cast.yaml", 'insured_region: "653200"\n  insurance_type: "390"\n  insured: '
         "[{from: 2012-01-01}]\n  qualifications:\n    - {disease: M00503",
         'insured_region: "710000"\n  insurance_type: "390"\n  insured: '
         "[{from: 2012-01-01}]\n  qualifications:\n    - {disease: M00503")  # fmt: skip
    error = load_error(world_dir)
    assert error.file == "people/cast.yaml"
    assert error.path.endswith("insured_region") and "unknown region '710000'" in error.reason


def test_registration_to_an_unknown_destination(world_dir: Path) -> None:
    edit(world_dir / "people" / "cast.yaml", 'id: DT-R-0001, category: retiree_relocation, destination: "110000"',
         'id: DT-R-0001, category: retiree_relocation, destination: "820000"')  # fmt: skip
    error = load_error(world_dir)
    assert error.path.endswith("destination") and "820000" in error.reason


def test_policy_for_an_unknown_region_names_its_own_file(world_dir: Path) -> None:
    (world_dir / "policies" / "653200.yaml").rename(world_dir / "policies" / "hotan.yaml")
    edit(world_dir / "policies" / "hotan.yaml", 'region: "653200"', 'region: "653300"')
    edit(world_dir / "regions.yaml", '- {code: "650000", name: 新疆维吾尔自治区 Xinjiang}\n', "")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("policies/hotan.yaml", "region")


def test_two_people_with_one_certificate(world_dir: Path) -> None:
    edit(world_dir / "people" / "cast.yaml", 'number: "630102197001010022"', 'number: "630102197001010021"')
    error = load_error(world_dir)
    assert "630102197001010021" in error.reason and "63000000000000000001" in error.reason


def test_file_that_is_not_utf8(world_dir: Path) -> None:
    (world_dir / "regions.yaml").write_bytes("- {code: '110000', name: 北京}\n".encode("gb18030"))
    error = load_error(world_dir)
    assert error.file == "regions.yaml" and "UTF-8" in error.reason


def test_fast_person_path_reads_exactly_what_the_careful_parser_reads(tmp_path: Path) -> None:
    """server/world_fast.py may only change speed: on generated people (plain JSON) it must build
    the same Person as parse_person, and the careful parser must still reject what it rejects."""
    from settlesim.server.world_fast import PersonReader
    from settlesim.server.world_generate import generate_world
    from settlesim.server.world_loader import WorldDigest, _jsonl, parse_person

    out = tmp_path / "gen"
    generate_world(out, 500, seed=3)
    world = load_world(out)
    reader = PersonReader(world.diseases, world.institutions, world.regions)
    records = [node for path in sorted((out / "people").glob("*.jsonl")) for node in _jsonl(path, out, WorldDigest())]
    assert len(records) == 500
    for node in records:
        careful = parse_person(node, dict(world.diseases), dict(world.institutions), dict(world.regions))
        assert reader.person(node.value) == careful
    broken = dict(records[0].value, insured_region="999999")
    with pytest.raises(Exception):  # noqa: B017 - any refusal sends the record to the careful parser
        reader.person(broken)


@pytest.mark.parametrize(
    ("valid_to", "accepted"),
    [
        ("2025-12-31", True),  # 12 months from 2025-01-01: the minimum
        ("2025-12-30", False),  # a day short of a year
        ("2027-12-31", True),  # 36 months: the maximum
        ("2028-01-01", False),  # a day over three years
        ("null", False),  # open-ended: Beijing registrations always end
    ],
)
def test_beijing_registration_validity_is_one_to_three_years(world_dir: Path, valid_to: str, accepted: bool) -> None:
    """policies/110000.yaml: validity_months [12, 36] (seed 000: valid 1-3 years)."""
    edit(world_dir / "people" / "cast.yaml",
         "institutions: [H46020000001], from: 2025-01-01, to: 2027-12-31, resident_since: 2024-01-01}",
         f"institutions: [H46020000001], from: 2025-01-01, to: {valid_to}, resident_since: 2024-01-01}}")  # fmt: skip
    if accepted:
        load_world(world_dir)
        return
    error = load_error(world_dir)
    assert (error.file, error.path) == ("people", "11000000000000000001")
    assert "BJ-R-0001" in error.reason and "12-36 months" in error.reason


# --- misspelled keys and stray files are refused, never ignored (issue 9 item 11) -------------


@pytest.mark.parametrize(
    ("file", "old", "new", "key", "path", "allowed"),
    [
        # price_ceiling for price_ceiling_fen would drop Beijing's 30.00 yuan ceiling.
        ("catalogs/110000.yaml", "{class: A, price_ceiling_fen: 3_000}", "{class: A, price_ceiling: 3_000}",
         "price_ceiling", "items[", "b_share, class, price_ceiling_fen"),
        # conected: false would leave the Sanya hospital connected.
        ("institutions.yaml", "  connected: false\n", "  conected: false\n", "conected", "[5]", "connected"),
        # until for to would make Qinghai's referral registration open-ended.
        ("people/cast.yaml", 'destination: "110000", from: 2021-11-01, to: 2027-12-31}',
         'destination: "110000", from: 2021-11-01, until: 2027-12-31}', "until", "[0].registrations[0]",
         "ended_on"),
        # revoked_on on an active registration would be ignored and the registration stay in force.
        ("people/cast.yaml", 'destination: "110000", from: 2021-11-01, to: 2027-12-31}',
         'destination: "110000", from: 2021-11-01, to: 2027-12-31, revoked_on: 2025-03-01}', "revoked_on",
         "[0].registrations[0]", "status"),
        ("people/cast.yaml", "  insured_region: \"630000\"\n", "  insured_regoin: \"630000\"\n", "insured_regoin",
         "[0]", "insured_region"),
        ("policies/630000.yaml", 'deductible_fen: 5_000, ratio: "100%"', 'deductable_fen: 5_000, ratio: "100%"',
         "deductable_fen", "terms.390.M00503.2021-01-01", "deductible_fen"),
        ("regions.yaml", '{code: "110000", name: 北京市 Beijing}', '{code: "110000", name: 北京市 Beijing, nmae: x}',
         "nmae", "[0]", "code, name"),
    ],
)  # fmt: skip
def test_a_misspelled_key_is_an_error_naming_it(
    world_dir: Path, file: str, old: str, new: str, key: str, path: str, allowed: str
) -> None:
    text = (world_dir / file).read_text(encoding="utf-8")
    (world_dir / file).write_text(text.replace(old, new, 1), encoding="utf-8")
    assert text.count(old) >= 1
    error = load_error(world_dir)
    assert error.file == file and error.path.startswith(path), str(error)
    assert f"unknown key {key!r}" in error.reason and allowed in error.reason, str(error)


def test_a_misspelled_key_in_a_jsonl_person_is_an_error_naming_it(world_dir: Path) -> None:
    """The fast path (server/world_fast.py) must not accept what the careful parser refuses."""
    person = jsonl_person("63000000000000000901", "630102199901010901")
    person["registrations"] = [
        {"id": "R-901", "category": "referral", "destination": "110000", "from": "2025-01-01",
         "until": "2025-12-31"}
    ]  # fmt: skip
    (world_dir / "people" / "extra.jsonl").write_text(json.dumps(person) + "\n", encoding="utf-8")
    error = load_error(world_dir)
    assert (error.file, error.path) == ("people/extra.jsonl", "line 1.registrations[0]")
    assert "unknown key 'until'" in error.reason and "to" in error.reason


def test_a_misspelled_key_in_a_jsonl_certificate_is_an_error(world_dir: Path) -> None:
    person = jsonl_person("63000000000000000902", "630102199901010902")
    person["certificate"] = {"number": "630102199901010902", "typ": "01"}
    (world_dir / "people" / "extra.jsonl").write_text(json.dumps(person) + "\n", encoding="utf-8")
    error = load_error(world_dir)
    assert error.path == "line 1.certificate" and "unknown key 'typ'" in error.reason


def test_a_misspelled_key_in_world_yaml_is_an_error(world_dir: Path) -> None:
    edit(world_dir / "world.yaml", "name: default\n", "nmae: default\n")
    error = load_error(world_dir)
    assert error.file == "world.yaml" and "unknown key 'nmae'" in error.reason and "name" in error.reason


@pytest.mark.parametrize(
    ("stray", "named"),
    [("people.yml", "people.yml"), ("institution.yaml", "institution.yaml"), ("people/more.yml", "people/more.yml"),
     ("people/sub/cast.yaml", "people/sub"), ("policies/630000.yml", "policies/630000.yml"),
     ("catalog/110000.yaml", "catalog"), ("notes.txt", "notes.txt")],
)  # fmt: skip
def test_an_unknown_file_in_a_world_is_an_error_naming_it(world_dir: Path, stray: str, named: str) -> None:
    target = world_dir / stray
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(world_dir / "people" / "cast.yaml", target)
    error = load_error(world_dir)
    assert error.file == named and "not a world file" in error.reason, str(error)
    assert "people.yaml" in error.reason  # says what is allowed


def test_readme_license_and_hidden_files_are_allowed_in_a_world(world_dir: Path) -> None:
    for name in ("README.md", "LICENSE", ".gitignore"):
        (world_dir / name).write_text("x\n", encoding="utf-8")
    (world_dir / ".git").mkdir()
    (world_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    assert load_world(world_dir).name == "default"


# --- an empty or wrong world folder is an error (issue 9 item 12) -----------------------------


def test_an_empty_folder_is_not_a_world(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    error = load_error(tmp_path / "empty")
    assert "not a world" in error.reason
    assert "regions" in error.reason and "institutions" in error.reason and "people" in error.reason


def test_a_folder_of_other_things_is_not_a_world(tmp_path: Path) -> None:
    """What `world check /tmp` did: a folder with no world files at all."""
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x", encoding="utf-8")
    error = load_error(tmp_path / "other")
    assert "not a world" in error.reason, str(error)


@pytest.mark.parametrize("kind", ["regions", "institutions", "people", "diseases"])
def test_a_world_without_one_kind_of_record_says_which(world_dir: Path, kind: str) -> None:
    """Each kind emptied (the file left, with an empty list): the error names what is missing."""
    for path in [world_dir / f"{kind}.yaml", *sorted((world_dir / kind).glob("*"))]:
        if path.is_file():
            path.write_text("[]\n", encoding="utf-8")
    error = load_error(world_dir)
    assert f"no {kind}" in error.reason, str(error)


def test_a_world_without_policies_says_so(world_dir: Path) -> None:
    shutil.rmtree(world_dir / "policies")
    error = load_error(world_dir)
    assert "no policies" in error.reason, str(error)


def test_world_check_on_an_empty_folder_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = settlesim("world", "check", str(tmp_path / "empty"))
    assert result.returncode != 0 and "valid" not in result.stdout
    assert "not a world" in result.stderr and "Traceback" not in result.stderr


def test_serve_on_an_empty_folder_refuses_to_start(tmp_path: Path) -> None:
    """It used to serve a world where every call was refused."""
    (tmp_path / "empty").mkdir()
    result = settlesim(
        "serve", "--port", "0", "--world", str(tmp_path / "empty"), "--db", str(tmp_path / "l.db"), timeout=60
    )
    assert result.returncode == 2 and "not a world" in result.stderr and "serving" not in result.stdout


def test_a_people_file_that_changes_while_loading_is_refused(world_dir: Path) -> None:
    """The digest is of the bytes parsed: a JSON Lines file appended to while it is read (its
    hash is taken beside the parse) is refused rather than given a digest of other bytes."""
    from settlesim.server.world_loader import WorldDigest, _jsonl

    path = world_dir / "people" / "extra.jsonl"
    records = [jsonl_person(f"6300000000000000099{i}", f"63010219990101099{i}") for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    reading = _jsonl(path, world_dir, WorldDigest())
    next(reading)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(jsonl_person("63000000000000000999", "630102199901010999")) + "\n")
    with pytest.raises(WorldError) as caught:
        list(reading)
    assert caught.value.file == "people/extra.jsonl" and "changed while it was being loaded" in caught.value.reason
