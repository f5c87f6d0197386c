"""Value sets as data: load the package's JSON files and match codings against them.

Matching is on (canonical system, normalised code), so aliases of a code system (OIDs, SNOMED edition
URIs, the ICD-10 URI that EHRs often send for ICD-10-CM) and the usual code spellings (undotted ICD-10-CM,
integer SNOMED ids, stray spaces) all find the same concept.

Each file lists ``concepts`` and may add ``icd10cmDescendants`` rules. A rule names an ICD-10-CM code and
the codes to leave out; its ``expansion`` (the code and all its descendants with their tabular
descriptions) is generated from the official tabular in simple-icd-10-cm and checked against it by
tests/test_valuesets.py. The service reads the stored expansion because importing the tabular costs
about 1.5 s. A code listed twice in one value set (say as a rule's descendant and as a concept that
adds a region) is merged; the two must agree on display and source and must not give one attribute two
values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib.resources import files
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "CPT",
    "ICD10CM",
    "LOINC",
    "RXNORM",
    "SNOMED",
    "Concept",
    "Terminology",
    "TerminologyError",
    "canonical_system",
    "load_terminology",
    "normalize_code",
]

SNOMED: Final[str] = "http://snomed.info/sct"
ICD10CM: Final[str] = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC: Final[str] = "http://loinc.org"
RXNORM: Final[str] = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT: Final[str] = "http://www.ama-assn.org/go/cpt"

_CANONICAL: Final = frozenset({SNOMED, ICD10CM, LOINC, RXNORM, CPT})

# Keys are compared after lower-casing, dropping trailing slashes and reading https as http.
_ALIASES: Final[Mapping[str, str]] = {
    SNOMED: SNOMED,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    ICD10CM: ICD10CM,
    # The WHO ICD-10 URI is what many EHRs put on ICD-10-CM codes; US data using it means ICD-10-CM.
    "http://hl7.org/fhir/sid/icd-10": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    LOINC: LOINC,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    RXNORM: RXNORM,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    CPT: CPT,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
}

_ICD10CM_CODE: Final = re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")
_FILE_KEYS: Final = frozenset({"id", "title", "description", "sources", "concepts", "icd10cmDescendants"})
_RULE_KEYS: Final = frozenset({"code", "source", "exclude", "attributes", "expansion"})
_CONCEPT_FIELDS: Final = ("system", "code", "display", "source")


class TerminologyError(ValueError):
    """A value-set file is malformed or contradicts itself."""


@dataclass(frozen=True, slots=True)
class Concept:
    """One code of one value set, with the attributes the rules read (e.g. region, tier, reason)."""

    value_set: str
    system: str
    code: str
    display: str
    source: str
    attributes: Mapping[str, Any] = field(hash=False)


@lru_cache(maxsize=512)
def canonical_system(system: str | None) -> str | None:
    """The canonical URI of a known code system; other systems come back trimmed but otherwise as given."""
    if system is None:
        return None
    trimmed = system.strip()
    if trimmed in _CANONICAL:
        return trimmed
    key = trimmed.lower().rstrip("/")
    if key.startswith("https://"):
        key = "http://" + key.removeprefix("https://")
    if key.startswith(SNOMED + "/"):
        return SNOMED  # edition and version URIs: http://snomed.info/sct/900000000000207008/version/...
    return _ALIASES.get(key, trimmed or None)


def normalize_code(system: str, code: str | int) -> str:
    """The code as the value sets spell it: no whitespace; ICD-10-CM upper-case and dotted after 3 chars."""
    text = "".join(str(code).split())
    canonical = canonical_system(system)
    if canonical == ICD10CM:
        bare = text.upper().replace(".", "")
        return f"{bare[:3]}.{bare[3:]}" if len(bare) > 3 else bare
    if canonical == CPT:
        return text.upper()
    return text


class Terminology:
    """All value sets, indexed by (canonical system, normalised code) and by value-set id."""

    __slots__ = ("_by_code", "_members", "_value_sets")

    def __init__(self, concepts: Iterable[Concept]) -> None:
        by_code: dict[tuple[str, str], list[Concept]] = {}
        members: dict[str, dict[tuple[str, str], Concept]] = {}
        for concept in concepts:
            key = (concept.system, concept.code)
            if key in members.setdefault(concept.value_set, {}):
                raise TerminologyError(f"{concept.value_set}: {concept.code} is listed twice")
            members[concept.value_set][key] = concept
            by_code.setdefault(key, []).append(concept)
        self._by_code: dict[tuple[str, str], tuple[Concept, ...]] = {k: tuple(v) for k, v in by_code.items()}
        self._members = members
        self._value_sets = {name: tuple(codes.values()) for name, codes in members.items()}

    def _key(self, system: str | None, code: str | int | None) -> tuple[str, str] | None:
        canonical = canonical_system(system)
        if canonical is None or code is None:
            return None
        return canonical, normalize_code(canonical, code)

    def lookup(self, system: str | None, code: str | int | None) -> tuple[Concept, ...]:
        """Every value set's concept for this coding; () if none, or if system or code is missing."""
        key = self._key(system, code)
        return self._by_code.get(key, ()) if key else ()

    def in_value_set(self, value_set: str, system: str | None, code: str | int | None) -> Concept | None:
        """The concept if the coding is in `value_set`; KeyError for an unknown value-set id."""
        members = self._members[value_set]
        key = self._key(system, code)
        return members.get(key) if key else None

    def value_set(self, value_set_id: str) -> tuple[Concept, ...]:
        """The concepts of one value set in file order; KeyError for an unknown id."""
        return self._value_sets[value_set_id]

    def codes(self, value_set_id: str, systems: Collection[str] | None = None) -> tuple[tuple[str, str], ...]:
        """(system, code) pairs of a value set, optionally only for some systems (aliases accepted)."""
        wanted = None if systems is None else {canonical_system(s) for s in systems}
        return tuple(
            (c.system, c.code) for c in self._value_sets[value_set_id] if wanted is None or c.system in wanted
        )


@cache
def load_terminology() -> Terminology:
    """Load every value set shipped in fhir_mapping/valuesets once per process."""
    folder = files("fhir_mapping") / "valuesets"
    concepts: list[Concept] = []
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".json"))
    if not names:
        raise TerminologyError("no value-set files found")
    for name in names:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TerminologyError(f"{name}: not valid JSON: {error}") from error
        concepts.extend(_parse_file(name.removesuffix(".json"), data))
    return Terminology(concepts)


def _parse_file(name: str, data: Any) -> list[Concept]:
    def fail(message: str) -> TerminologyError:
        return TerminologyError(f"{name}.json: {message}")

    if not isinstance(data, dict):
        raise fail("the file must hold a JSON object")
    if unknown := set(data) - _FILE_KEYS:
        raise fail(f"unknown keys {sorted(unknown)}")
    if data.get("id") != name:
        raise fail(f"id {data.get('id')!r} does not match the file name")
    for key in ("title", "description"):
        if not _text(data.get(key)):
            raise fail(f"{key} is missing")
    sources = data.get("sources")
    if not isinstance(sources, dict) or not sources or not all(_text(v) for v in sources.values()):
        raise fail("sources must map each source key to what was read")
    merged: dict[tuple[str, str], dict[str, Any]] = {}

    def add(entry: dict[str, Any], where: str) -> None:
        system, code = entry["system"], entry["code"]
        if entry["source"] not in sources:
            raise fail(f"{where}: unknown source key {entry['source']!r}")
        if canonical_system(system) != system or system not in _CANONICAL:
            raise fail(f"{where}: system {system!r} is not a canonical URI")
        if normalize_code(system, code) != code or (system == ICD10CM and not _ICD10CM_CODE.fullmatch(code)):
            raise fail(f"{where}: code {code!r} is not in normal form")
        previous = merged.setdefault((system, code), entry)
        if previous is entry:
            return
        for key, value in entry.items():
            if previous.setdefault(key, value) != value:
                raise fail(f"{where}: {code} is listed twice with different {key}")

    concepts = data.get("concepts")
    if not isinstance(concepts, list):
        raise fail("concepts must be a list")
    for index, raw in enumerate(concepts):
        where = f"concepts[{index}]"
        if not isinstance(raw, dict) or not all(_text(raw.get(k)) for k in _CONCEPT_FIELDS):
            raise fail(f"{where}: needs system, code, display and source")
        add(dict(raw), where)
    rules = data.get("icd10cmDescendants", [])
    if not isinstance(rules, list):
        raise fail("icd10cmDescendants must be a list")
    for index, rule in enumerate(rules):
        for entry in _expand(rule, f"icd10cmDescendants[{index}]", fail):
            add(entry, f"icd10cmDescendants[{index}]")
    return [
        Concept(
            value_set=name,
            system=entry["system"],
            code=entry["code"],
            display=entry["display"],
            source=entry["source"],
            attributes=MappingProxyType({k: v for k, v in entry.items() if k not in _CONCEPT_FIELDS}),
        )
        for entry in merged.values()
    ]


def _expand(rule: Any, where: str, fail: Callable[[str], TerminologyError]) -> list[dict[str, Any]]:
    if not isinstance(rule, dict) or set(rule) - _RULE_KEYS or not _text(rule.get("code")):
        raise fail(f"{where}: a rule has code, source, exclude, attributes and expansion")
    root, exclude = rule["code"], rule.get("exclude", [])
    attributes, expansion = rule.get("attributes", {}), rule.get("expansion")
    if not isinstance(exclude, list) or not isinstance(attributes, dict):
        raise fail(f"{where}: exclude must be a list and attributes an object")
    if set(attributes) & set(_CONCEPT_FIELDS):
        raise fail(f"{where}: attributes may not set {sorted(set(attributes) & set(_CONCEPT_FIELDS))}")
    if not isinstance(expansion, dict) or root not in expansion:
        raise fail(f"{where}: {root} has no stored expansion (see tests/test_valuesets.py)")
    for code, display in expansion.items():
        # ICD-10-CM descendants always extend their ancestor's code, so a foreign code means a damaged file.
        if not code.startswith(root) or code in exclude or not _text(display):
            raise fail(f"{where}: {code!r} does not belong in the expansion of {root}")
    return [
        {"system": ICD10CM, "code": code, "display": display, "source": rule.get("source"), **attributes}
        for code, display in expansion.items()
    ]


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
