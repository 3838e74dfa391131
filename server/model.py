"""Plain data the rules engine works on: the world (regions, policies, catalogs,
institutions, people) and a visit. Frozen dataclasses (and named tuples for what every
settle makes: cheaper to make), no I/O, no gRPC.

Money is integer fen (分); ratios and shares are integer basis points (1/10000).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")

BASIS_POINTS = 10_000


def province_of(region_code: str) -> str:
    """省: the first two digits of a 6-digit region code (医保区划)."""
    return region_code[:2]


def region_covers(destination: str, region: str) -> bool:
    """Whether a registration destination (province xx0000, city xxxx00 or a
    district) includes `region`."""
    if destination.endswith("0000"):
        return region[:2] == destination[:2]
    if destination.endswith("00"):
        return region[:4] == destination[:4]
    return region == destination


def add_months(day: date, months: int) -> date:
    """The same day `months` later (or earlier), clamped to the month's end."""
    month0 = day.month - 1 + months
    year, month = day.year + month0 // 12, month0 % 12 + 1
    for d in (day.day, 30, 29, 28):
        try:
            return date(year, month, d)
        except ValueError:
            continue
    raise ValueError(day)


def region_lineage(region: str) -> tuple[str, ...]:
    """The region, its city and its province, most specific first: where to
    look for a policy or catalog that applies to `region`."""
    city, province = region[:4] + "00", region[:2] + "0000"
    return tuple(dict.fromkeys((region, city, province)))


@dataclass(frozen=True, slots=True)
class Dated(Generic[T]):
    """A value that changes over time: versions keyed by their effective date.
    A `None` version ends the value from that date (OpenFisca style)."""

    starts: tuple[date, ...]
    values: tuple[T | None, ...]

    @classmethod
    def of(cls, versions: Mapping[date, T | None]) -> Dated[T]:
        ordered = sorted(versions.items())
        return cls(tuple(d for d, _ in ordered), tuple(v for _, v in ordered))

    def on(self, day: date) -> tuple[date, T] | None:
        """(effective date, value) in force on `day`, or None."""
        i = bisect.bisect_right(self.starts, day) - 1
        if i < 0 or self.values[i] is None:
            return None
        return self.starts[i], self.values[i]  # type: ignore[return-value]


class InsuranceType(StrEnum):
    """险种 insutype."""

    EMPLOYEE = "310"  # 职工基本医疗保险
    RESIDENT = "390"  # 城乡居民基本医疗保险

    @classmethod
    def parse(cls, value: object) -> InsuranceType:
        """The one reading of an insurance type, in world files and case files alike:
        "310" or 310, EMPLOYEE or INSURANCE_TYPE_EMPLOYEE (the proto enum name);
        390 / RESIDENT likewise. ValueError, saying the spellings, for anything else."""
        if not isinstance(value, bool) and isinstance(value, str | int):
            found = _INSURANCE_SPELLINGS.get(str(value))
            if found is not None:
                return found
        raise ValueError(f"insurance type {value!r} is not one of {INSURANCE_TYPE_SPELLINGS}")


_INSURANCE_SPELLINGS = {
    spelling: kind
    for kind in InsuranceType
    for spelling in (kind.value, kind.name, f"INSURANCE_TYPE_{kind.name}")
}
INSURANCE_TYPE_SPELLINGS = "310, EMPLOYEE, INSURANCE_TYPE_EMPLOYEE (employees); 390, RESIDENT, INSURANCE_TYPE_RESIDENT"


class Coverage(StrEnum):
    """How an insured region covers a disease in outpatient care."""

    CHRONIC_SPECIAL = "chronic_special"  # 门诊慢特病
    GENERAL_OUTPATIENT = "general_outpatient"  # 普通门诊
    NONE = "none"


class RegistrationScope(StrEnum):
    """What a cross-province registration (跨省异地就医备案) names."""

    CITY = "city"  # 备案到就医地市 (Hotan, Datong)
    INSTITUTION = "institution"  # 异地定点机构备案 (Beijing special diseases)


class RegistrationStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"  # 撤销备案
    SUPERSEDED = "superseded"  # 变更备案: replaced by a newer registration


class CatalogClass(StrEnum):
    """收费项目等级 chrgitm_lv."""

    A = "A"  # 01 甲类
    B = "B"  # 02 乙类
    C = "C"  # 03 丙类
    NOT_LISTED = "not_listed"


@dataclass(frozen=True, slots=True)
class Region:
    """医保区划: a 6-digit region code."""

    code: str
    name: str

    @property
    def province(self) -> str:
        return province_of(self.code)


@dataclass(frozen=True, slots=True)
class Disease:
    """A chronic/special disease of the national list (病种编码)."""

    code: str
    name: str


@dataclass(frozen=True, slots=True)
class DiseaseTerms:
    """An insured region's terms for one disease and insurance type, from a date.

    deductible — 起付线; ratio_bp — 报销比例 (basis points);
    annual_cap — 年度限额/封顶线 (None: no cap)."""

    coverage: Coverage
    deductible: int = 0
    ratio_bp: int = 0
    annual_cap: int | None = None


@dataclass(frozen=True, slots=True)
class SeriousIllnessTerms:
    """The fund above the pooled fund, from a date: 城乡居民大病保险 (residents, hifmi_pay) or
    职工大额医疗费用补助 (employees, hifob_pay). It pays `ratio_bp` of the patient's in-scope
    share (合规自付: in scope minus the pooled fund) above a yearly `threshold` (起付线), like
    the pooled fund's deductible; `annual_cap` None is no cap."""

    threshold: int
    ratio_bp: int
    annual_cap: int | None = None


@dataclass(frozen=True, slots=True)
class AssistanceTerms:
    """医疗救助 (maf_pay), from a date: for people the world flags as assisted, it pays
    `ratio_bp` of the in-scope share the funds above left to the patient; `annual_cap` None
    is no cap."""

    ratio_bp: int
    annual_cap: int | None = None


@dataclass(frozen=True, slots=True)
class FundTerms:
    """The funds beyond the pooled one for one insured region and insurance type, from a
    date; None: that fund does not pay."""

    serious_illness: SeriousIllnessTerms | None = None
    assistance: AssistanceTerms | None = None


@dataclass(frozen=True, slots=True)
class Scheme:
    """An insured region's registration scheme, from a date (参保地备案政策)."""

    scope: RegistrationScope
    max_institutions: int = 2
    min_residence_months: int = 0
    allow_settle_at_home: bool = False
    # Bounds on a registration's validity (Beijing: 1-3 years); None: unbounded.
    validity_months: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class RegionPolicy:
    """参保地政策: the insured region's policy, every value effective-dated."""

    region: str
    scheme: Dated[Scheme]
    # (insurance type, disease code) -> terms over time
    terms: Mapping[tuple[InsuranceType, str], Dated[DiseaseTerms]]
    source: str = ""
    # insurance type -> the funds beyond the pooled one over time (absent: none pay)
    funds: Mapping[InsuranceType, Dated[FundTerms]] = field(default_factory=dict)
    # Where each of its terms comes from, as the trace says it (rules/funds.py terms_source,
    # fund_input), made on first use: one per term and version of the policy's own. Not a field
    # of the policy's value: `replace(policy, ...)` starts with an empty one.
    sources: dict[tuple[Any, ...], str] = field(default_factory=dict, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class CatalogTerms:
    """A catalog item's terms from a date. b_share_bp — 先行自付比例;
    price_ceiling — 限价 (None: no ceiling)."""

    catalog_class: CatalogClass
    b_share_bp: int = 0
    price_ceiling: int | None = None


@dataclass(frozen=True, slots=True)
class CatalogItem:
    code: str
    name: str
    terms: Dated[CatalogTerms]


@dataclass(frozen=True, slots=True)
class Catalog:
    """就医地目录: the treatment region's catalog."""

    region: str
    items: Mapping[str, CatalogItem]
    source: str = ""
    # What the rules say of each listed item's versions (rules/settlement.py ItemWords), made on
    # first use, keyed by the catalog's own item codes. Not a field of the catalog's value:
    # `replace(catalog, ...)` starts with an empty one.
    words: dict[str, tuple[tuple[date, ...], tuple[Any, ...]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )


@dataclass(frozen=True, slots=True)
class Institution:
    """定点医疗机构 fixmedins_code."""

    code: str
    name: str
    region: str
    level: str = ""
    designated: bool = True
    connected: bool = True  # 已接入国家跨省结算平台
    opened_diseases: frozenset[str] = frozenset()  # 开通病种
    departments: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Period:
    """A closed date range; `end` None is open-ended."""

    start: date
    end: date | None = None

    def contains(self, day: date) -> bool:
        return self.start <= day and (self.end is None or day <= self.end)


@dataclass(frozen=True, slots=True)
class Qualification:
    """病种资格认定: the insured region certifies the person has the disease."""

    disease: str
    valid: Period


@dataclass(frozen=True, slots=True)
class Registration:
    """跨省异地就医备案. `ended_on` is the first day it no longer applies when
    revoked or superseded."""

    id: str
    category: str
    destination: str
    valid: Period
    institutions: tuple[str, ...] = ()
    status: RegistrationStatus = RegistrationStatus.ACTIVE
    ended_on: date | None = None
    resident_since: date | None = None
    replaced_by: str = ""


@dataclass(frozen=True, slots=True)
class Person:
    """参保人员 psn_no."""

    person_no: str
    name: str
    certificate_type: str
    certificate_no: str
    insured_region: str
    insurance_type: InsuranceType
    insured: tuple[Period, ...]
    qualifications: tuple[Qualification, ...] = ()
    registrations: tuple[Registration, ...] = ()
    # 医疗救助对象: the periods the person is entitled to medical assistance.
    assisted: tuple[Period, ...] = ()
    # 个人账户: (year, opening balance in fen) for the years the person has an account.
    account_openings: tuple[tuple[int, int], ...] = ()

    def assisted_on(self, day: date) -> bool:
        # most people are never assisted: no generator made for them on every settle
        return bool(self.assisted) and any(p.contains(day) for p in self.assisted)

    def account_opening(self, year: int) -> int | None:
        """The personal account's balance at the start of `year`, or None without one."""
        for y, balance in self.account_openings:
            if y == year:
                return balance
        return None


REMEMBERED_REGIONS = 100_000  # World.policy_for / catalog_for: regions remembered, at most


@dataclass(frozen=True, slots=True)
class World:
    name: str
    regions: Mapping[str, Region]
    diseases: Mapping[str, Disease]
    policies: Mapping[str, RegionPolicy]
    catalogs: Mapping[str, Catalog]
    institutions: Mapping[str, Institution]
    people: Mapping[str, Person]
    people_by_certificate: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # Per-institution bearer tokens for callers without mutual TLS.
    institution_tokens: Mapping[str, str] = field(default_factory=dict)
    # SHA-256 of the files it was loaded from (world_loader.WorldDigest): which world a server serves.
    digest: str = ""

    # Each region's policy and catalog as found along its lineage, remembered on first use (a
    # settle asks for both; the regions are the world's people's and institutions', and at most
    # REMEMBERED_REGIONS are kept). Not fields of the world's value: `replace(world, ...)`
    # starts with empty ones.
    _policy_of: dict[str, RegionPolicy | None] = field(default_factory=dict, init=False, repr=False, compare=False)
    _catalog_of: dict[str, Catalog | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def policy_for(self, region: str) -> RegionPolicy | None:
        return _along_lineage(self._policy_of, self.policies, region)

    def catalog_for(self, region: str) -> Catalog | None:
        return _along_lineage(self._catalog_of, self.catalogs, region)


def _along_lineage(remembered: dict[str, T | None], table: Mapping[str, T], region: str) -> T | None:
    """The entry of `table` for `region` or its nearest ancestor (city, then province), as
    `remembered` has it or else found and remembered (at most REMEMBERED_REGIONS of them)."""
    try:
        return remembered[region]
    except KeyError:
        found = next((table[r] for r in region_lineage(region) if r in table), None)
        if len(remembered) < REMEMBERED_REGIONS:
            remembered[region] = found
        return found


# --- a visit, as the rules see it ---------------------------------------------------------

# `new_tuple(Cls, (field, ...))` makes the named tuple Cls with every field given in order, in C:
# `Cls(field, ...)` runs the class's generated __new__, a Python function (about 1,300 of the
# 2,500 instructions a named tuple costs). For the settle path's tuples, made several a settle.
new_tuple = tuple.__new__



class FeeLine(NamedTuple):
    """2204 费用明细: amount = unit price × quantity, all fen."""

    sequence_no: str
    catalog_code: str
    unit_price: int
    quantity: int
    hospital_item_code: str = ""

    @property
    def amount(self) -> int:
        return self.unit_price * self.quantity


class VisitKey(NamedTuple):
    """What the registration check needs to know about a visit."""

    institution_code: str
    disease_code: str
    visit_date: date
    person_no: str = ""
    certificate_type: str = ""
    certificate_no: str = ""
    insurance_type: InsuranceType | None = None


@dataclass(slots=True)
class YearlyTotals:
    """The person's running totals for one disease and calendar year. Not frozen, though nothing
    changes one once made (`replace()` makes another): every settle reads one and makes one, and
    a frozen dataclass sets each field through object.__setattr__."""

    deductible_used: int = 0  # 已付起付线
    fund_paid: int = 0  # 年度基金已支付 (the pooled fund, hifp_pay)
    serious_threshold_used: int = 0  # 大病/大额起付线已付
    serious_paid: int = 0  # 大病保险/大额补助 已支付 (hifmi_pay / hifob_pay)
    assistance_paid: int = 0  # 医疗救助 已支付 (maf_pay)
    account_paid: int = 0  # 个人账户 已支付 for this disease (acct_pay)
    # 个人账户 已支付 this year for every disease of the person: what the balance is taken from.
    account_paid_year: int = 0


class TraceEntry(NamedTuple):
    """Which data produced a figure: the rule, the source (with its effective
    date) and the arithmetic. A named tuple: a settle makes 10-20."""

    figure: str
    rule: str
    source: str
    detail: str
