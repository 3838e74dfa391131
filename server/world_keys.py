"""What a world directory may contain (docs/world-format.md): the keys each kind
of record allows and the files and folders the loader reads. Anything else is an
error, never ignored: a misspelled `conected: false` or a `people.yml` would
otherwise change results silently."""

from __future__ import annotations

from collections.abc import Iterable

WORLD_KEYS = frozenset({"name", "description", "illustrative", "source"})
REGION_KEYS = frozenset({"code", "name"})
DISEASE_KEYS = frozenset({"code", "name"})
POLICY_KEYS = frozenset({"region", "source", "scheme", "terms", "funds"})
# funds: {insutype: {date: {...}}}: the funds after the pooled one (docs/world-format.md).
# serious_illness (城乡居民大病保险) is the residents' (390), large_amount (职工大额医疗费用补助)
# the employees' (310).
FUND_KEYS = frozenset({"serious_illness", "large_amount", "medical_assistance"})
SERIOUS_ILLNESS_KEYS = frozenset({"threshold_fen", "ratio", "annual_cap_fen"})
ASSISTANCE_KEYS = frozenset({"ratio", "annual_cap_fen"})
SCHEME_KEYS = frozenset(
    {"scope", "max_institutions", "min_residence_months", "allow_settle_at_home", "validity_months"}
)
TERMS_KEYS = frozenset({"coverage", "deductible_fen", "ratio", "annual_cap_fen"})
CATALOG_KEYS = frozenset({"region", "source", "items"})
ITEM_KEYS = frozenset({"code", "name", "terms"})
ITEM_TERMS_KEYS = frozenset({"class", "b_share", "price_ceiling_fen"})
INSTITUTION_KEYS = frozenset(
    {"code", "name", "region", "level", "designated", "connected", "opened_diseases", "departments", "token"}
)
PERSON_KEYS = frozenset(
    {"psn_no", "name", "certificate", "insured_region", "insurance_type", "insured", "qualifications",
     "registrations", "medical_assistance", "account_opening_fen"}
)  # fmt: skip
CERTIFICATE_KEYS = frozenset({"type", "number"})
PERIOD_KEYS = frozenset({"from", "to"})
QUALIFICATION_KEYS = frozenset({"disease", "from", "to"})
REGISTRATION_KEYS = frozenset(
    {"id", "category", "destination", "from", "to", "institutions", "status", "ended_on", "resident_since",
     "replaced_by"}
)  # fmt: skip


def unknown_key(keys: Iterable[object], allowed: frozenset[str]) -> str | None:
    """`unknown key 'x' (allowed: ...)` for the first key not allowed, or None; world files
    and case files (clients/replay/cases.py) word it alike."""
    unknown = sorted(str(k) for k in keys if k not in allowed)
    if not unknown:
        return None
    return f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"


# --- files -----------------------------------------------------------------------------------

LIST_KINDS = ("regions", "diseases", "institutions", "people")  # <kind>.yaml and <kind>/*.yaml|*.jsonl
FILE_KINDS = ("policies", "catalogs")  # one record per <kind>/*.yaml
# Written by `settlesim world generate` for load tests; the loader does not read them.
GENERATED_FILES = frozenset({"manifest.json", "visits.csv"})
# Documentation that may travel with a world, at any level; hidden files (.git, .gitignore) too.
DOCUMENT_PREFIXES = ("readme", "license", "licence", "notice", "copying", "changelog")

ALLOWED_FILES = (
    "world.yaml, regions.yaml, diseases.yaml, institutions.yaml, people.yaml; folders regions/ diseases/ "
    "institutions/ people/ (*.yaml, *.jsonl) and policies/ catalogs/ (*.yaml); manifest.json, visits.csv "
    "(world generate); README*, LICENSE*, NOTICE*, COPYING*, CHANGELOG* and hidden files"
)


def ignorable(name: str) -> bool:
    """A hidden file or folder, or documentation: allowed and not read."""
    return name.startswith(".") or name.lower().startswith(DOCUMENT_PREFIXES)
