"""Loads a world directory (see docs/world-format.md) into a `World`.

Every problem is reported as one `WorldError` naming the file, the path inside
it and the reason, so a bad file fails start-up clearly.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from settlesim.server.model import (
    BASIS_POINTS,
    AssistanceTerms,
    Catalog,
    CatalogClass,
    CatalogItem,
    CatalogTerms,
    Coverage,
    Dated,
    Disease,
    DiseaseTerms,
    FundTerms,
    Institution,
    InsuranceType,
    Period,
    Person,
    Qualification,
    Region,
    RegionPolicy,
    Registration,
    RegistrationScope,
    RegistrationStatus,
    Scheme,
    SeriousIllnessTerms,
    World,
    add_months,
    region_lineage,
)
from settlesim.server.world_fast import PersonReader
from settlesim.server.world_keys import (
    ALLOWED_FILES,
    ASSISTANCE_KEYS,
    CATALOG_KEYS,
    CERTIFICATE_KEYS,
    DISEASE_KEYS,
    FILE_KINDS,
    FUND_KEYS,
    GENERATED_FILES,
    INSTITUTION_KEYS,
    ITEM_KEYS,
    ITEM_TERMS_KEYS,
    LIST_KINDS,
    PERIOD_KEYS,
    PERSON_KEYS,
    POLICY_KEYS,
    QUALIFICATION_KEYS,
    REGION_KEYS,
    REGISTRATION_KEYS,
    SCHEME_KEYS,
    SERIOUS_ILLNESS_KEYS,
    TERMS_KEYS,
    WORLD_KEYS,
    ignorable,
    unknown_key,
)

T = TypeVar("T")
REGION_CODE = re.compile(r"^\d{6}$")
MAX_MONEY_FEN = 10**12  # ten billion yuan: anything larger is a typo


class WorldError(ValueError):
    """A world file is malformed: `file: path: reason`."""

    def __init__(self, file: str, path: str, reason: str) -> None:
        super().__init__(f"{file}: {path or '<top>'}: {reason}")
        self.file, self.path, self.reason = file, path, reason


def default_world_dir() -> Path:
    """The bundled world: the four seed regions, Sanya and their people."""
    return Path(str(resources.files("settlesim.server") / "worlds" / "default"))


class _Node:
    """A value read from a file, with where it came from for error messages."""

    __slots__ = ("file", "path", "value")

    def __init__(self, file: str, path: str, value: Any) -> None:
        self.file, self.path, self.value = file, path, value

    def fail(self, reason: str) -> WorldError:
        return WorldError(self.file, self.path, reason)

    def child(self, key: str | int, value: Any) -> _Node:
        sep = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else str(key))
        return _Node(self.file, f"{self.path}{sep}", value)

    def keys(self, allowed: frozenset[str]) -> _Node:
        """This node, a mapping whose keys are all allowed (a misspelled key is an error)."""
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {type(self.value).__name__}")
        if problem := unknown_key(self.value, allowed):
            raise self.fail(problem)
        return self

    def get(self, key: str, default: Any = ...) -> _Node:
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {type(self.value).__name__}")
        if key not in self.value:
            if default is ...:
                raise self.fail(f"missing required key {key!r}")
            return self.child(key, default)
        return self.child(key, self.value[key])

    def items(self) -> Iterator[tuple[Any, _Node]]:
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {type(self.value).__name__}")
        for key, value in self.value.items():
            yield key, self.child(str(key), value)

    def list(self) -> Iterator[_Node]:
        if self.value is None:
            return
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, got {type(self.value).__name__}")
        for i, value in enumerate(self.value):
            yield self.child(i, value)

    def text(self) -> str:
        if isinstance(self.value, bool) or not isinstance(self.value, str | int):
            raise self.fail(f"expected text, got {self.value!r}")
        return str(self.value)

    def optional_text(self) -> str:
        return "" if self.value is None else self.text()

    def region(self) -> str:
        code = self.text()
        if not REGION_CODE.match(code):
            raise self.fail(f"region code must be 6 digits, got {code!r}")
        return code

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {self.value!r}")
        return self.value

    def integer(self, low: int = 0, high: int = MAX_MONEY_FEN) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.fail(f"expected a whole number, got {self.value!r}")
        if not low <= self.value <= high:
            raise self.fail(f"{self.value} is outside {low}..{high}")
        return self.value

    def optional_integer(self) -> int | None:
        return None if self.value is None else self.integer()

    def day(self) -> date:
        return _as_date(self, self.value)

    def optional_day(self) -> date | None:
        return None if self.value is None else self.day()

    def percent(self) -> int:
        """'75%' or '62.5%' -> basis points."""
        text = self.text()
        if not text.endswith("%"):
            raise self.fail(f"expected a percentage like '75%', got {text!r}")
        try:
            bp = Decimal(text[:-1]) * 100
        except InvalidOperation:
            raise self.fail(f"not a percentage: {text!r}") from None
        if bp != bp.to_integral_value() or not 0 <= bp <= BASIS_POINTS:
            raise self.fail(f"{text} must be 0%..100% in steps of 0.01%")
        return int(bp)

    def choice(self, enum: Callable[[str], T]) -> T:
        try:
            return enum(self.text())
        except ValueError:
            options = ", ".join(e.value for e in enum)  # type: ignore[attr-defined]
            raise self.fail(f"{self.value!r} is not one of: {options}") from None


def _known_region(node: _Node, regions: dict[str, Region]) -> str:
    """A region code that regions.yaml lists, itself or through its city or province."""
    code = node.region()
    if not any(r in regions for r in region_lineage(code)):
        raise node.fail(f"unknown region {code!r} (not in regions.yaml)")
    return code


def _as_date(node: _Node, value: Any) -> date:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise node.fail(f"expected a date YYYY-MM-DD, got {value!r}")


def _dated(node: _Node, parse: Callable[[_Node], T]) -> Dated[T]:
    """{effective date: value or null} -> Dated."""
    versions: dict[date, T | None] = {}
    for key, child in node.items():
        versions[_as_date(child, key)] = None if child.value is None else parse(child)
    if not versions:
        raise node.fail("needs at least one effective date")
    return Dated.of(versions)


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps an impossible date such as 2021-02-30 as text, so
    that `_as_date` reports it with its file and path (PyYAML's own timestamp
    constructor raises a bare ValueError that names neither)."""


def _timestamp_or_text(loader: _Loader, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


class WorldDigest:
    """The identity of a world's content: SHA-256 over the `sha256sum` lines
    (`<sha256 of the file>  <path>`) of every file the loader read, in path order.
    The same files give the same digest on any machine; `cd world && find . -type f
    ... | sort | xargs sha256sum` reproduces the lines (docs/world-format.md)."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def add(self, name: str, sha256_hex: str) -> None:
        self.files[name] = sha256_hex

    def hexdigest(self) -> str:
        lines = "".join(f"{self.files[name]}  {name}\n" for name in sorted(self.files))
        return hashlib.sha256(lines.encode()).hexdigest()


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_yaml(path: Path, root: Path, digest: WorldDigest) -> _Node:
    name = _relative(path, root)
    data = path.read_bytes()
    digest.add(name, hashlib.sha256(data).hexdigest())
    try:
        return _Node(name, "", yaml.load(data.decode("utf-8"), Loader=_Loader))  # _Loader is a SafeLoader
    except yaml.YAMLError as e:
        raise WorldError(name, "", f"not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise WorldError(name, "", f"not UTF-8 text: {e.reason} at byte {e.start}") from None


def _records(files: list[Path], root: Path, digest: WorldDigest) -> Iterator[_Node]:
    """Records of a list kind's files: `<kind>.yaml`, `<kind>/*.yaml`, `<kind>/*.jsonl`."""
    for path in files:
        if path.suffix == ".jsonl":
            yield from _jsonl(path, root, digest)
        else:
            yield from _read_yaml(path, root, digest).list()


def _jsonl(path: Path, root: Path, digest: WorldDigest) -> Iterator[_Node]:
    """One record per line. A helper thread hashes the file (hashlib and file reads let
    go of the GIL) while this one parses it, so the digest costs a million-person load
    almost nothing; a file that changes meanwhile is refused, so the digest is of what
    was parsed."""
    name = _relative(path, root)
    before = path.stat()
    with futures.ThreadPoolExecutor(1, thread_name_prefix="world-digest") as hasher:
        hashed = hasher.submit(_file_sha256, path)
        with path.open(encoding="utf-8") as f:
            number = 0
            try:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        yield _Node(name, f"line {number}", json.loads(line))
            except json.JSONDecodeError as e:
                raise WorldError(name, f"line {number}", f"not valid JSON: {e}") from None
            except UnicodeDecodeError as e:
                raise WorldError(name, f"after line {number}", f"not UTF-8 text: {e.reason}") from None
        sha256_hex = hashed.result()
    after = path.stat()
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size, after.st_mtime_ns):
        raise WorldError(name, "", "the file changed while it was being loaded; load the world again")
    digest.add(name, sha256_hex)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_KNOWN_TOP = frozenset({"world.yaml", *LIST_KINDS, *FILE_KINDS, *(f"{k}.yaml" for k in LIST_KINDS)})


def _not_a_world_file(name: str, why: str = "") -> WorldError:
    near = difflib.get_close_matches(name, sorted(_KNOWN_TOP | GENERATED_FILES), n=1, cutoff=0.8)
    hint = f"did you mean {near[0]}? " if near and not why else ""
    return WorldError(name, "", f"not a world file ({why or hint}a world holds {ALLOWED_FILES})")


def world_files(root: Path) -> dict[str, list[Path]]:
    """The files the loader reads, per kind (plus "world" for world.yaml), in reading
    order; a WorldError naming anything else in the directory, and for a directory
    with no world files at all."""
    entries = sorted(root.iterdir())
    if not any(entry.name in _KNOWN_TOP for entry in entries):
        raise WorldError(
            str(root), "", "not a world: it has no world.yaml, regions, diseases, policies, catalogs, "
            "institutions or people (docs/world-format.md)",
        )  # fmt: skip
    files: dict[str, list[Path]] = {kind: [] for kind in ("world", *LIST_KINDS, *FILE_KINDS)}
    for entry in entries:
        name = entry.name
        if ignorable(name) or (name in GENERATED_FILES and entry.is_file()):
            continue
        if entry.is_file() and (name == "world.yaml" or name.removesuffix(".yaml") in LIST_KINDS):
            files[name.removesuffix(".yaml")].insert(0, entry)  # <kind>.yaml before <kind>/*
        elif entry.is_dir() and name in files:
            suffixes = (".yaml",) if name in FILE_KINDS else (".yaml", ".jsonl")
            for path in sorted(entry.iterdir()):
                if ignorable(path.name):
                    continue
                if not (path.is_file() and path.suffix in suffixes):
                    what = "a folder" if path.is_dir() else f"not {' or '.join('*' + s for s in suffixes)}"
                    raise _not_a_world_file(_relative(path, root), f"{what} inside {name}/; ")
                files[name].append(path)
        else:
            raise _not_a_world_file(name)
    return files


def _require(root: Path, kind: str, records: dict[str, Any]) -> None:
    """A world without regions, diseases, policies, institutions or people serves nothing."""
    if not records:
        where = "policies/*.yaml" if kind == "policies" else f"{kind}.yaml or {kind}/*.yaml|*.jsonl"
        raise WorldError(str(root), "", f"no {kind}: a world needs at least one ({where})")


def _unique(nodes: Iterable[tuple[str, _Node, T]], what: str) -> dict[str, T]:
    out: dict[str, T] = {}
    for key, node, value in nodes:
        if key in out:
            raise node.fail(f"duplicate {what} {key!r}")
        out[key] = value
    return out


# --- one parser per kind of record -----------------------------------------------------------


def parse_scheme(node: _Node) -> Scheme:
    node.keys(SCHEME_KEYS)
    return Scheme(
        scope=node.get("scope").choice(RegistrationScope),
        max_institutions=node.get("max_institutions", 2).integer(1, 100),
        min_residence_months=node.get("min_residence_months", 0).integer(0, 600),
        allow_settle_at_home=node.get("allow_settle_at_home", False).boolean(),
        validity_months=_month_range(node.get("validity_months", None)),
    )


def _month_range(node: _Node) -> tuple[int, int] | None:
    """[min, max] months, e.g. [12, 36] for Beijing's 1-3 years."""
    if node.value is None:
        return None
    bounds = [child.integer(1, 1200) for child in node.list()]
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise node.fail(f"expected [min, max] months, got {node.value!r}")
    return bounds[0], bounds[1]


def check_validity(person: Person, policy: RegionPolicy | None) -> str | None:
    """Why one of the person's registrations breaks the validity bounds of the
    insured region's scheme in force when it starts, or None."""
    if policy is None:
        return None
    for registration in person.registrations:
        found = policy.scheme.on(registration.valid.start)
        bounds = found[1].validity_months if found else None
        if bounds is None:
            continue
        low, high = bounds
        start, end = registration.valid.start, registration.valid.end
        # Valid from `start` through `end` inclusive: 12 months from 2025-01-01 ends 2025-12-31.
        if end is None or not add_months(start, low) <= end + timedelta(days=1) <= add_months(start, high):
            return (
                f"registration {registration.id} is valid {start}..{end or 'open-ended'}; the "
                f"{policy.region} scheme allows {low}-{high} months"
            )
    return None


def parse_terms(node: _Node) -> DiseaseTerms:
    node.keys(TERMS_KEYS)
    coverage = node.get("coverage").choice(Coverage)
    if coverage is not Coverage.CHRONIC_SPECIAL:
        return DiseaseTerms(coverage)
    return DiseaseTerms(
        coverage=coverage,
        deductible=node.get("deductible_fen").integer(),
        ratio_bp=node.get("ratio").percent(),
        annual_cap=node.get("annual_cap_fen").optional_integer(),
    )


def parse_policy(node: _Node, diseases: dict[str, Disease], regions: dict[str, Region]) -> RegionPolicy:
    node.keys(POLICY_KEYS)
    terms = {}
    for insutype, by_disease in node.get("terms").items():
        kind = _insurance_type(by_disease, insutype)
        for disease, dated in by_disease.items():
            if disease not in diseases:
                raise dated.fail(f"unknown disease {disease!r} (not in diseases.yaml)")
            terms[(kind, disease)] = _dated(dated, parse_terms)
    funds = {}
    for insutype, dated in node.get("funds", {}).items():
        kind = _insurance_type(dated, insutype)
        funds[kind] = _dated(dated, lambda n, kind=kind: parse_fund_terms(n, kind))
    return RegionPolicy(
        region=_known_region(node.get("region"), regions),
        scheme=_dated(node.get("scheme"), parse_scheme),
        terms=terms,
        source=node.get("source", "").optional_text(),
        funds=funds,
    )


# The fund above the pooled one each insurance type has, and the other's key (refused).
_SERIOUS_KEY = {InsuranceType.RESIDENT: "serious_illness", InsuranceType.EMPLOYEE: "large_amount"}


def parse_fund_terms(node: _Node, kind: InsuranceType) -> FundTerms:
    """{serious_illness | large_amount: {threshold_fen, ratio, annual_cap_fen}, medical_assistance:
    {ratio, annual_cap_fen}}: residents (390) have serious_illness, employees (310) large_amount."""
    node.keys(FUND_KEYS)
    own = _SERIOUS_KEY[kind]
    for other in set(_SERIOUS_KEY.values()) - {own}:
        if other in node.value:
            wrong = node.child(other, node.value[other])
            raise wrong.fail(f"{other} is not a fund of insurance type {kind.value}; use {own}")
    serious = node.get(own, None)
    assistance = node.get("medical_assistance", None)
    return FundTerms(
        serious_illness=None if serious.value is None else SeriousIllnessTerms(
            threshold=serious.keys(SERIOUS_ILLNESS_KEYS).get("threshold_fen").integer(),
            ratio_bp=serious.get("ratio").percent(),
            annual_cap=serious.get("annual_cap_fen").optional_integer(),
        ),
        assistance=None if assistance.value is None else AssistanceTerms(
            ratio_bp=assistance.keys(ASSISTANCE_KEYS).get("ratio").percent(),
            annual_cap=assistance.get("annual_cap_fen").optional_integer(),
        ),
    )  # fmt: skip


def _insurance_type(node: _Node, key: Any) -> InsuranceType:
    try:
        return InsuranceType.parse(key)
    except ValueError as e:
        raise node.fail(str(e)) from None


def parse_catalog_terms(node: _Node) -> CatalogTerms:
    node.keys(ITEM_TERMS_KEYS)
    klass = node.get("class").choice(CatalogClass)
    if klass is CatalogClass.NOT_LISTED:
        raise node.fail("class must be A, B or C (end an item with null instead)")
    b_share = node.get("b_share", None)
    if klass is CatalogClass.B and b_share.value is None:
        raise node.fail("class B needs b_share, e.g. '10%'")
    if klass is not CatalogClass.B and b_share.value is not None:
        raise b_share.fail("b_share applies to class B only")
    return CatalogTerms(
        catalog_class=klass,
        b_share_bp=b_share.percent() if b_share.value is not None else 0,
        price_ceiling=node.get("price_ceiling_fen", None).optional_integer(),
    )


def parse_catalog(node: _Node, regions: dict[str, Region]) -> Catalog:
    entries = (
        (
            (code := item.get("code").text()),
            item,
            CatalogItem(
                code, item.get("name", "").optional_text(), _dated(item.get("terms"), parse_catalog_terms)
            ),
        )
        for item in (item.keys(ITEM_KEYS) for item in node.keys(CATALOG_KEYS).get("items").list())
    )
    items = _unique(entries, "catalog item")
    return Catalog(_known_region(node.get("region"), regions), items, node.get("source", "").optional_text())


def parse_institution(node: _Node, regions: dict[str, Region], diseases: dict[str, Disease]) -> Institution:
    node.keys(INSTITUTION_KEYS)
    region = _known_region(node.get("region"), regions)
    opened = node.get("opened_diseases", [])
    for child in opened.list():
        if child.text() not in diseases:
            raise child.fail(f"unknown disease {child.value!r}")
    return Institution(
        code=node.get("code").text(),
        name=node.get("name").text(),
        region=region,
        level=node.get("level", "").optional_text(),
        designated=node.get("designated", True).boolean(),
        connected=node.get("connected", True).boolean(),
        opened_diseases=frozenset(c.text() for c in opened.list()),
        departments=frozenset(c.text() for c in node.get("departments", []).list()),
    )


def parse_period(node: _Node) -> Period:
    start = node.get("from").day()
    end = node.get("to", None).optional_day()
    if end is not None and end < start:
        raise node.fail(f"'to' {end} is before 'from' {start}")
    return Period(start, end)


def parse_registration(node: _Node, regions: dict[str, Region]) -> Registration:
    node.keys(REGISTRATION_KEYS)
    status = node.get("status", "active").choice(RegistrationStatus)
    ended_on = node.get("ended_on", None).optional_day()
    if status is not RegistrationStatus.ACTIVE and ended_on is None:
        raise node.fail(f"a {status} registration needs ended_on")
    return Registration(
        id=node.get("id").text(),
        category=node.get("category").text(),
        destination=_known_region(node.get("destination"), regions),
        valid=parse_period(node),
        institutions=tuple(c.text() for c in node.get("institutions", []).list()),
        status=status,
        ended_on=ended_on,
        resident_since=node.get("resident_since", None).optional_day(),
        replaced_by=node.get("replaced_by", "").optional_text(),
    )


def parse_person(
    node: _Node,
    diseases: dict[str, Disease],
    institutions: dict[str, Institution],
    regions: dict[str, Region],
) -> Person:
    node.keys(PERSON_KEYS)
    certificate = node.get("certificate").keys(CERTIFICATE_KEYS)
    qualifications = []
    for q in node.get("qualifications", []).list():
        disease = q.keys(QUALIFICATION_KEYS).get("disease").text()
        if disease not in diseases:
            raise q.get("disease").fail(f"unknown disease {disease!r}")
        qualifications.append(Qualification(disease, parse_period(q)))
    registrations = [parse_registration(r, regions) for r in node.get("registrations", []).list()]
    for r, reg in zip(node.get("registrations", []).list(), registrations, strict=True):
        for code in reg.institutions:
            if code not in institutions:
                raise r.get("institutions").fail(f"unknown institution {code!r}")
    insurance_type = _insurance_type(node.get("insurance_type"), node.get("insurance_type").value)
    return Person(
        person_no=node.get("psn_no").text(),
        name=node.get("name", "").optional_text(),
        certificate_type=certificate.get("type", "01").text(),
        certificate_no=certificate.get("number").text(),
        insured_region=_known_region(node.get("insured_region"), regions),
        insurance_type=insurance_type,
        insured=tuple(parse_period(p.keys(PERIOD_KEYS)) for p in node.get("insured").list()),
        qualifications=tuple(qualifications),
        registrations=tuple(registrations),
        assisted=tuple(parse_period(p.keys(PERIOD_KEYS)) for p in node.get("medical_assistance", []).list()),
        account_openings=_account_openings(node.get("account_opening_fen", None), insurance_type),
    )


def _account_openings(node: _Node, kind: InsuranceType) -> tuple[tuple[int, int], ...]:
    """account_opening_fen: {year: fen}, the personal account's balance on 1 January (employees only:
    residents have no personal account)."""
    if node.value is None:
        return ()
    if kind is not InsuranceType.EMPLOYEE:
        raise node.fail("only employees (insurance type 310) have a personal account")
    openings = []
    for year, child in node.items():
        if not str(year).isdigit() or not 1900 <= int(year) <= 2200:
            raise child.fail(f"expected a year such as 2025, got {year!r}")
        openings.append((int(year), child.integer()))
    return tuple(sorted(openings))


def load_world(root: Path | str | None = None) -> World:
    """Read a world directory; raise WorldError on the first problem.

    The garbage collector is paused while loading (a million people are millions
    of objects it would otherwise rescan again and again) and the result is frozen
    out of later collections: the world never changes once loaded."""
    gc.disable()
    try:
        world = _load_world(root)
    finally:
        gc.enable()
    gc.freeze()
    return world


def _load_world(root: Path | str | None) -> World:
    root = Path(root) if root is not None else default_world_dir()
    if not root.is_dir():
        raise WorldError(str(root), "", "world directory not found")
    files = world_files(root)
    digest = WorldDigest()
    meta = (
        _read_yaml(files["world"][0], root, digest) if files["world"] else _Node("world.yaml", "", {})
    ).keys(WORLD_KEYS)

    def keyed(nodes: Iterable[_Node], parse: Callable[[_Node], T], key: Callable[[T], str]):
        for node in nodes:
            value = parse(node)
            yield key(value), node, value

    def records(kind: str) -> Iterator[_Node]:
        return _records(files[kind], root, digest)

    def documents(kind: str) -> Iterator[_Node]:
        return (_read_yaml(path, root, digest) for path in files[kind])

    regions = _unique(
        keyed(
            records("regions"),
            lambda n: Region(n.keys(REGION_KEYS).get("code").region(), n.get("name").text()),
            lambda r: r.code,
        ),
        "region",
    )
    _require(root, "regions", regions)
    diseases = _unique(
        keyed(
            records("diseases"),
            lambda n: Disease(n.keys(DISEASE_KEYS).get("code").text(), n.get("name").text()),
            lambda d: d.code,
        ),
        "disease",
    )
    _require(root, "diseases", diseases)
    policies = _unique(
        keyed(documents("policies"), lambda n: parse_policy(n, diseases, regions), lambda p: p.region),
        "policy",
    )
    _require(root, "policies", policies)
    catalogs = _unique(
        keyed(documents("catalogs"), lambda n: parse_catalog(n, regions), lambda c: c.region),
        "catalog",
    )
    institution_nodes = list(records("institutions"))
    institutions = _unique(
        keyed(institution_nodes, lambda n: parse_institution(n, regions, diseases), lambda i: i.code),
        "institution",
    )
    _require(root, "institutions", institutions)
    tokens = {
        n.get("code").text(): n.get("token").text()
        for n in institution_nodes
        if n.value.get("token") is not None
    }
    reader = PersonReader(diseases, institutions, regions)

    def person(node: _Node) -> Person:
        try:
            return reader.person(node.value)
        except Exception:  # not the plain shape: the careful parser accepts it or names the problem
            return parse_person(node, diseases, institutions, regions)

    people = _unique(keyed(records("people"), person, lambda p: p.person_no), "person")
    _require(root, "people", people)
    by_certificate: dict[tuple[str, str], str] = {}
    for person in people.values():
        key = (person.certificate_type, person.certificate_no)
        if key in by_certificate:
            raise WorldError(
                "people",
                person.person_no,
                f"certificate {key[0]}/{key[1]} also belongs to {by_certificate[key]}",
            )
        by_certificate[key] = person.person_no
    world = World(
        name=meta.get("name", root.name).text(),
        regions=regions,
        diseases=diseases,
        policies=policies,
        catalogs=catalogs,
        institutions=institutions,
        people=people,
        people_by_certificate=by_certificate,
        institution_tokens=tokens,
        digest=digest.hexdigest(),
    )
    for person in people.values():
        if problem := check_validity(person, world.policy_for(person.insured_region)):
            raise WorldError("people", person.person_no, problem)
    for institution in institutions.values():
        # 就医地目录: an institution that can settle a disease needs its region's catalog.
        if institution.opened_diseases and world.catalog_for(institution.region) is None:
            raise WorldError(
                "institutions",
                institution.code,
                f"opens diseases for settlement in region {institution.region}, which has no catalog "
                "(catalogs/<region>.yaml for it or a region above it)",
            )
    return world
