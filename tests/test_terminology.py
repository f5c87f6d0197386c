"""Matching codings against the value sets: system aliases, code spellings, lookups, loading failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_mapping.terminology import (
    CPT,
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    Concept,
    Terminology,
    TerminologyError,
    canonical_system,
    load_terminology,
    normalize_code,
)

# --- canonical_system ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("http://snomed.info/sct", SNOMED),
        ("http://snomed.info/sct/", SNOMED),
        ("HTTP://SNOMED.INFO/sct", SNOMED),
        ("  http://snomed.info/sct  ", SNOMED),
        ("http://snomed.info/sct/900000000000207008", SNOMED),
        ("http://snomed.info/sct/731000124108/version/20250301", SNOMED),
        ("urn:oid:2.16.840.1.113883.6.96", SNOMED),
        ("http://hl7.org/fhir/sid/icd-10-cm", ICD10CM),
        ("http://hl7.org/fhir/sid/icd-10", ICD10CM),
        ("urn:oid:2.16.840.1.113883.6.90", ICD10CM),
        ("URN:OID:2.16.840.1.113883.6.90", ICD10CM),
        ("http://loinc.org", LOINC),
        ("https://loinc.org/", LOINC),
        ("urn:oid:2.16.840.1.113883.6.1", LOINC),
        ("http://www.nlm.nih.gov/research/umls/rxnorm", RXNORM),
        ("urn:oid:2.16.840.1.113883.6.88", RXNORM),
        ("http://www.ama-assn.org/go/cpt", CPT),
        ("urn:oid:2.16.840.1.113883.6.12", CPT),
    ],
)
def test_aliases_map_to_the_canonical_uri(alias: str, canonical: str) -> None:
    assert canonical_system(alias) == canonical


def test_unknown_and_missing_systems() -> None:
    assert canonical_system(None) is None
    assert canonical_system("") is None
    assert canonical_system(" http://example.org/codes ") == "http://example.org/codes"
    # a prefix of a known URI is not that system
    assert canonical_system("http://snomed.info/sctx") == "http://snomed.info/sctx"
    assert canonical_system("urn:oid:2.16.840.1.113883.6.9") == "urn:oid:2.16.840.1.113883.6.9"


# --- normalize_code -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "raw", "normal"),
    [
        (ICD10CM, "C50911", "C50.911"),
        (ICD10CM, "c50.911", "C50.911"),
        (ICD10CM, " C50.911 ", "C50.911"),
        (ICD10CM, "Z853", "Z85.3"),
        (ICD10CM, "Z85.3", "Z85.3"),
        (ICD10CM, "C50", "C50"),
        (ICD10CM, "m8458xa", "M84.58XA"),
        (ICD10CM, "C50.A1", "C50.A1"),
        ("http://hl7.org/fhir/sid/icd-10", "C50911", "C50.911"),
        (SNOMED, 254837009, "254837009"),
        (SNOMED, " 254837009 ", "254837009"),
        (LOINC, "72514-3", "72514-3"),
        (RXNORM, 10324, "10324"),
        (CPT, "72156", "72156"),
    ],
)
def test_codes_are_normalised(system: str, raw: str | int, normal: str) -> None:
    assert normalize_code(system, raw) == normal


def test_snomed_codes_are_not_dotted_like_icd() -> None:
    assert normalize_code(SNOMED, "2548.37009") == "2548.37009"


# --- lookups against the shipped value sets ------------------------------------------------------


def test_lookup_undotted_lowercase_icd_under_the_who_uri() -> None:
    found = load_terminology().lookup("http://hl7.org/fhir/sid/icd-10", "c50911")
    assert [(c.value_set, c.code) for c in found] == [("breast-cancer", "C50.911")]
    assert found[0].system == ICD10CM
    assert found[0].display == "Malignant neoplasm of unspecified site of right female breast"


def test_lookup_integer_snomed_code_under_an_edition_uri() -> None:
    found = load_terminology().lookup("http://snomed.info/sct/731000124108", 254837009)
    assert [c.value_set for c in found] == ["breast-cancer"]
    assert found[0].attributes["carcinoma"] is True
    assert found[0].source == "SYN"


def test_lookup_returns_every_value_set_that_holds_the_code() -> None:
    found = load_terminology().lookup("urn:oid:2.16.840.1.113883.6.90", "M5412")
    by_set = {c.value_set: c for c in found}
    assert set(by_set) == {"spinal-pain", "neuro-red-flags"}
    assert by_set["spinal-pain"].attributes["region"] == "cervical"
    assert by_set["spinal-pain"].attributes["radicular"] is True
    assert by_set["neuro-red-flags"].attributes["feature"] == "radicular"
    assert by_set["neuro-red-flags"].attributes["alone"] is False


def test_receptor_status_is_both_an_exclusion_and_supporting_evidence() -> None:
    found = {c.value_set for c in load_terminology().lookup(ICD10CM, "Z17.0")}
    assert found == {"breast-cancer-exclusions", "breast-cancer-supporting"}


def test_lookup_misses() -> None:
    terminology = load_terminology()
    assert terminology.lookup(SNOMED, "22298006") == ()  # myocardial infarction: in no value set
    assert terminology.lookup(None, "254837009") == ()  # no system: no guessing
    assert terminology.lookup(SNOMED, None) == ()
    assert terminology.lookup("http://example.org", "254837009") == ()
    assert terminology.lookup(LOINC, "254837009") == ()  # right code, wrong system


def test_in_value_set() -> None:
    terminology = load_terminology()
    concept = terminology.in_value_set("spinal-pain", "HTTP://SNOMED.INFO/sct/", "279038004")
    assert concept is not None and concept.display == "Thoracic back pain"
    assert concept.attributes["suggestive"] is True
    assert terminology.in_value_set("breast-cancer", SNOMED, "279038004") is None
    assert terminology.in_value_set("spinal-pain", None, None) is None
    with pytest.raises(KeyError):
        terminology.in_value_set("no-such-value-set", SNOMED, "279038004")


def test_header_and_excluded_descendants() -> None:
    terminology = load_terminology()
    assert terminology.in_value_set("spinal-pain", ICD10CM, "M545") is not None  # legacy header
    assert terminology.in_value_set("spinal-pain", ICD10CM, "M54.81") is None  # occipital neuralgia


def test_drug_term_types_resolve_to_one_ingredient() -> None:
    terminology = load_terminology()
    ingredients = {
        terminology.in_value_set("breast-cancer-drugs", RXNORM, code).attributes["ingredient"]  # type: ignore[union-attr]
        for code in ("282357", "203870", "727762")  # fulvestrant IN, Faslodex BN, SCD
    }
    assert ingredients == {"fulvestrant"}


def test_value_set_and_codes() -> None:
    terminology = load_terminology()
    observation = terminology.value_set("observation-codes")
    assert [c.code for c in observation][:2] == ["72514-3", "38208-5"]
    assert all(isinstance(c, Concept) and c.value_set == "observation-codes" for c in observation)
    codes = terminology.codes("observation-codes")
    assert (LOINC, "21907-1") in codes and (LOINC, "38204-4") in codes
    assert all(system == LOINC for system, _ in codes)
    imaging_loinc = terminology.codes("spine-imaging", systems=["urn:oid:2.16.840.1.113883.6.1"])
    assert (LOINC, "42698-1") in imaging_loinc
    assert {system for system, _ in imaging_loinc} == {LOINC}
    imaging_all = terminology.codes("spine-imaging")
    assert {system for system, _ in imaging_all} == {LOINC, SNOMED, CPT}
    assert terminology.codes("spine-imaging", systems=[RXNORM]) == ()
    with pytest.raises(KeyError):
        terminology.value_set("no-such-value-set")


def test_relevant_codes_are_those_the_rules_read() -> None:
    from fhir_mapping.intake import READ_VALUE_SETS, relevant_codes

    terminology = load_terminology()
    relevant = relevant_codes(terminology)
    assert (ICD10CM, "C50.A1") in relevant and (SNOMED, "278860009") in relevant
    for value_set in READ_VALUE_SETS:
        assert set(terminology.codes(value_set)) <= relevant
    assert (SNOMED, "22298006") not in relevant
    assert (SNOMED, "2667000") not in relevant  # "Absent" only qualifies a value; it never makes a record matter


def test_concepts_are_immutable() -> None:
    concept = load_terminology().value_set("spinal-pain")[0]
    with pytest.raises(AttributeError):
        concept.code = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        concept.attributes["region"] = "lumbar"  # type: ignore[index]
    assert hash(concept) == hash(concept)


def test_load_is_cached() -> None:
    assert load_terminology() is load_terminology()


def test_terminology_refuses_a_code_twice_in_one_value_set() -> None:
    one = Concept("vs", SNOMED, "1", "a", "GM", {})
    with pytest.raises(TerminologyError):
        Terminology([one, one])


# --- loading fails loudly on broken files --------------------------------------------------------


def _rule_file(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "test-set",
        "title": "A test set",
        "description": "For the loader tests.",
        "sources": {"ICD26": "tabular", "GM": "GM"},
        "concepts": [
            {
                "system": SNOMED,
                "code": "279038004",
                "display": "Thoracic back pain",
                "source": "GM",
                "region": "thoracic",
            },
            {
                "system": ICD10CM,
                "code": "M54.12",
                "display": "Radiculopathy, cervical region",
                "source": "ICD26",
                "region": "cervical",
            },
        ],
        "icd10cmDescendants": [
            {
                "code": "M54.1",
                "source": "ICD26",
                "exclude": ["M54.11"],
                "attributes": {"radicular": True},
                "expansion": {"M54.1": "Radiculopathy", "M54.12": "Radiculopathy, cervical region"},
            },
        ],
    }
    data.update(changes)
    return data


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the package with its own valuesets folder, so load_terminology reads test files."""
    package = tmp_path / "fhir_mapping"
    (package / "valuesets").mkdir(parents=True)
    monkeypatch.setattr("fhir_mapping.terminology.files", lambda _name: package)
    load_terminology.cache_clear()
    yield package / "valuesets"
    load_terminology.cache_clear()


def _write(folder: Path, data: Any, name: str = "test-set.json") -> None:
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


def test_a_valid_file_loads_and_merges_a_rule_with_a_concept(fake_package: Path) -> None:
    _write(fake_package, _rule_file())
    terminology = load_terminology()
    merged = terminology.in_value_set("test-set", ICD10CM, "M5412")
    assert merged is not None
    assert dict(merged.attributes) == {"region": "cervical", "radicular": True}
    header = terminology.in_value_set("test-set", ICD10CM, "M54.1")
    assert header is not None and dict(header.attributes) == {"radicular": True}
    assert [c.code for c in terminology.value_set("test-set")] == ["279038004", "M54.12", "M54.1"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": "other"}, "does not match the file name"),
        ({"extra": 1}, "unknown keys"),
        ({"description": ""}, "description is missing"),
        ({"sources": {}}, "sources must map"),
        (
            {"concepts": [{"system": SNOMED, "code": "1", "display": "x", "source": "NOPE"}]},
            "unknown source key",
        ),
        (
            {"concepts": [{"system": SNOMED, "code": "1", "source": "GM"}]},
            "needs system, code, display and source",
        ),
        (
            {
                "concepts": [
                    {"system": "urn:oid:2.16.840.1.113883.6.96", "code": "1", "display": "x", "source": "GM"}
                ]
            },
            "not a canonical URI",
        ),
        (
            {"concepts": [{"system": ICD10CM, "code": "C50911", "display": "x", "source": "ICD26"}]},
            "not in normal form",
        ),
        (
            {"concepts": [{"system": ICD10CM, "code": "C5", "display": "x", "source": "ICD26"}]},
            "not in normal form",
        ),
        (
            {"concepts": [{"system": ICD10CM, "code": "M54.12", "display": "x", "source": "ICD26"}]},
            "listed twice with different display",
        ),
        (
            {
                "concepts": [
                    {
                        "system": ICD10CM,
                        "code": "M54.12",
                        "display": "Radiculopathy, cervical region",
                        "source": "ICD26",
                        "radicular": False,
                    }
                ]
            },
            "listed twice with different radicular",
        ),
        (
            {"icd10cmDescendants": [{"code": "M54.1", "source": "ICD26", "exclude": []}]},
            "no stored expansion",
        ),
        (
            {
                "icd10cmDescendants": [
                    {
                        "code": "M54.1",
                        "source": "ICD26",
                        "exclude": ["M54.12"],
                        "expansion": {"M54.1": "Radiculopathy", "M54.12": "Radiculopathy, cervical region"},
                    }
                ]
            },
            "does not belong",
        ),
        (
            {
                "icd10cmDescendants": [
                    {
                        "code": "M54.1",
                        "source": "ICD26",
                        "expansion": {"M54.1": "Radiculopathy", "C50.9": "Malignant neoplasm"},
                    }
                ]
            },
            "does not belong",
        ),
        (
            {
                "icd10cmDescendants": [
                    {"code": "M54.1", "source": "NOPE", "expansion": {"M54.1": "Radiculopathy"}}
                ]
            },
            "unknown source key",
        ),
        (
            {
                "icd10cmDescendants": [
                    {
                        "code": "M54.1",
                        "source": "ICD26",
                        "attributes": {"display": "x"},
                        "expansion": {"M54.1": "Radiculopathy"},
                    }
                ]
            },
            "may not set",
        ),
    ],
)
def test_a_broken_file_fails_loudly(fake_package: Path, changes: dict[str, Any], message: str) -> None:
    _write(fake_package, _rule_file(**changes))
    with pytest.raises(TerminologyError, match=message):
        load_terminology()


def test_invalid_json_fails_loudly(fake_package: Path) -> None:
    (fake_package / "test-set.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TerminologyError, match="not valid JSON"):
        load_terminology()


def test_no_files_fails_loudly(fake_package: Path) -> None:
    with pytest.raises(TerminologyError, match="no value-set files"):
        load_terminology()
