"""The value-set files checked against their sources: SNOMED check digits, the ICD-10-CM tabular, pitfalls.

The ICD-10-CM expansions stored in the files are generated from the official tabular bundled in
simple-icd-10-cm (importing it costs about 1.5 s, so the service reads the stored expansion instead).
After editing an ``icd10cmDescendants`` rule, or when the tabular is upgraded, regenerate them with

    .venv/bin/python -m tests.test_valuesets --write-expansions

and ``test_expansions_match_the_tabular`` fails until that has been done.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import simple_icd_10_cm as icd

from fhir_mapping.terminology import CPT, ICD10CM, LOINC, RXNORM, SNOMED, load_terminology

VALUESET_DIR = Path(__file__).resolve().parent.parent / "fhir_mapping" / "valuesets"


# --- shared with the `--write-expansions` maintenance entry point --------------------------------


def expand_icd10cm(code: str, exclude: list[str]) -> dict[str, str]:
    """The code itself plus every descendant in the tabular, minus `exclude`, with tabular descriptions."""
    if not icd.is_valid_item(code):
        raise ValueError(f"{code} is not in the ICD-10-CM tabular")
    codes = [code, *icd.get_descendants(code)]
    return {c: icd.get_description(c) for c in codes if c not in exclude}


def dump_value_set(data: dict[str, Any]) -> str:
    """Serialise a value-set file with one concept (and one expanded code) per line, for readable diffs."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    keys = list(data)
    for index, key in enumerate(keys):
        comma = "," if index < len(keys) - 1 else ""
        value = data[key]
        if key == "sources":
            lines.append('  "sources": {')
            items = list(value.items())
            lines += [
                f"    {one(k)}: {one(v)}{',' if i < len(items) - 1 else ''}" for i, (k, v) in enumerate(items)
            ]
            lines.append(f"  }}{comma}")
        elif key == "concepts":
            lines.append('  "concepts": [')
            lines += [f"    {one(c)}{',' if i < len(value) - 1 else ''}" for i, c in enumerate(value)]
            lines.append(f"  ]{comma}")
        elif key == "icd10cmDescendants":
            lines.append('  "icd10cmDescendants": [')
            for i, rule in enumerate(value):
                head = {k: v for k, v in rule.items() if k != "expansion"}
                lines.append(f'    {one(head)[:-1]}, "expansion": {{')
                expansion = list(rule.get("expansion", {}).items())
                lines += [
                    f"      {one(k)}: {one(v)}{',' if j < len(expansion) - 1 else ''}"
                    for j, (k, v) in enumerate(expansion)
                ]
                lines.append(f"    }}}}{',' if i < len(value) - 1 else ''}")
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {one(key)}: {one(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_expansions() -> None:
    for path in sorted(VALUESET_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for rule in data.get("icd10cmDescendants", []):
            rule["expansion"] = expand_icd10cm(rule["code"], rule.get("exclude", []))
        path.write_text(dump_value_set(data), encoding="utf-8")


# --- the checks ----------------------------------------------------------------------------------


def _verhoeff_tables() -> tuple[list[list[int]], list[list[int]]]:
    """Multiplication table of the dihedral group D5 and the position permutations (powers of one)."""

    def multiply(j: int, k: int) -> int:
        if j < 5 and k < 5:
            return (j + k) % 5
        if j < 5:
            return 5 + (j + k) % 5
        if k < 5:
            return 5 + (j - k) % 5
        return (j - k) % 5

    table = [[multiply(j, k) for k in range(10)] for j in range(10)]
    base = [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]
    permutations = [list(range(10))]
    for _ in range(7):
        permutations.append([base[x] for x in permutations[-1]])
    return table, permutations


def verhoeff_valid(number: str) -> bool:
    table, permutations = _verhoeff_tables()
    check = 0
    for position, digit in enumerate(reversed(number)):
        check = table[check][permutations[position % 8][int(digit)]]
    return check == 0


@cache
def _files() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VALUESET_DIR.glob("*.json"))}


def _entries() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every concept line of every file (not the expanded ICD codes)."""
    for name, data in _files().items():
        for concept in data["concepts"]:
            yield name, concept


def test_the_verhoeff_implementation_on_known_numbers() -> None:
    assert verhoeff_valid("2363")  # the textbook example
    assert verhoeff_valid("138875005")  # SNOMED CT root concept
    assert verhoeff_valid("22298006")  # Myocardial infarction
    assert not verhoeff_valid("2364")
    # docs/clinical-rules.md §3 item 23: invalid codes seen in public files.
    for invalid in ("372098003", "428090002", "102557002", "22253001"):
        assert not verhoeff_valid(invalid)


def test_every_snomed_code_passes_the_check_digit() -> None:
    bad = [
        (name, c["code"]) for name, c in _entries() if c["system"] == SNOMED and not verhoeff_valid(c["code"])
    ]
    assert bad == []


def test_every_snomed_code_is_a_plain_sctid() -> None:
    for _name, concept in _entries():
        if concept["system"] == SNOMED:
            code = concept["code"]
            assert code.isdigit() and 6 <= len(code) <= 18 and code[0] != "0", code
            # partition digits 00/10 mark concept ids (core/extension); description ids are wrong here
            assert code[-3:-1] in ("00", "10"), code


def test_every_icd10cm_code_exists_in_the_tabular_with_its_description() -> None:
    for name, concept in _entries():
        if concept["system"] == ICD10CM:
            code = concept["code"]
            assert icd.is_valid_item(code), (name, code)
            assert concept["display"] == icd.get_description(code), (name, code)


def test_expansions_match_the_tabular() -> None:
    for name, data in _files().items():
        for rule in data.get("icd10cmDescendants", []):
            expected = expand_icd10cm(rule["code"], rule.get("exclude", []))
            assert rule["expansion"] == expected, (
                f"{name}: {rule['code']} is stale; run with --write-expansions"
            )


def test_excluded_codes_are_real_descendants() -> None:
    for _name, data in _files().items():
        for rule in data.get("icd10cmDescendants", []):
            for excluded in rule.get("exclude", []):
                assert icd.is_descendant(excluded, rule["code"]), (rule["code"], excluded)


def test_every_concept_has_its_fields_and_a_defined_source() -> None:
    for name, data in _files().items():
        assert data["id"] == name
        assert data["title"] and data["description"]
        assert data["sources"] and all(isinstance(v, str) and v for v in data["sources"].values())
        for concept in data["concepts"]:
            for key in ("system", "code", "display", "source"):
                assert isinstance(concept.get(key), str) and concept[key].strip(), (name, concept, key)
            assert concept["source"] in data["sources"], (name, concept)
            assert concept["system"] in (SNOMED, ICD10CM, LOINC, RXNORM, CPT), (name, concept)
        for rule in data.get("icd10cmDescendants", []):
            assert rule["source"] in data["sources"], (name, rule)


def test_loinc_codes_have_the_loinc_check_digit() -> None:
    # LOINC's check digit is a mod-10 (Luhn) digit after the dash.
    def luhn_ok(number: str) -> bool:
        total = 0
        for position, char in enumerate(reversed(number)):
            digit = int(char)
            if position % 2 == 1:
                digit = digit * 2 - 9 if digit > 4 else digit * 2
            total += digit
        return total % 10 == 0

    for name, concept in _entries():
        if concept["system"] == LOINC:
            body, _, check = concept["code"].partition("-")
            assert body.isdigit() and check.isdigit() and len(check) == 1, (name, concept["code"])
            assert luhn_ok(body + check), (name, concept["code"])


# --- pitfalls named in docs/clinical-rules.md ---------------------------------------------------------------


def _codes_in(value_set: str) -> dict[tuple[str, str], Any]:
    return {(c.system, c.code): c for c in load_terminology().value_set(value_set)}


def test_94222008_is_secondary_neoplasm_of_bone_not_liver() -> None:
    concept = _codes_in("bone-metastasis")[(SNOMED, "94222008")]
    assert "bone" in concept.display.lower() and "liver" not in concept.display.lower()
    assert concept.attributes["bone"] is True


def test_c79_31_brain_is_not_a_bone_metastasis_nor_c41_2_primary_bone() -> None:
    bone = _codes_in("bone-metastasis")
    assert (ICD10CM, "C79.31") not in bone
    assert (ICD10CM, "C41.2") not in bone
    assert (ICD10CM, "C79.51") in bone


def test_c79_81_metastasis_to_breast_is_only_an_exclusion() -> None:
    found = load_terminology().lookup(ICD10CM, "C79.81")
    assert [c.value_set for c in found] == ["breast-cancer-exclusions"]
    assert found[0].attributes["reason"] == "metastasis-to-breast"


def test_brain_mri_24590_2_is_not_spine_imaging() -> None:
    assert load_terminology().lookup(LOINC, "24590-2") == ()


def test_c50_a1_inflammatory_breast_cancer_is_present() -> None:
    concept = load_terminology().in_value_set("breast-cancer", ICD10CM, "C50.A1")
    assert concept is not None and concept.display == "Malignant inflammatory neoplasm of right breast"


def test_invalid_or_unverified_codes_are_absent_everywhere() -> None:
    terminology = load_terminology()
    # fails the check digit (372098003, 428090002, 102557002) or not verified (docs/clinical-rules.md §4)
    for code in (
        "372098003",
        "428090002",
        "102557002",
        "71286001",
        "41747008",
        "40492006",
        "54404000",
        "128196005",
        "77568009",
    ):
        assert terminology.lookup(SNOMED, code) == (), code


def test_history_of_metastatic_cancer_is_a_metastasis_flag_not_breast_history() -> None:
    found = {c.value_set for c in load_terminology().lookup(SNOMED, "1287652008")}
    assert found == {"bone-metastasis"}


def test_occipital_neuralgia_and_panniculitis_are_not_spinal_pain() -> None:
    pain = _codes_in("spinal-pain")
    assert (ICD10CM, "M54.81") not in pain
    assert not any(code.startswith("M54.0") for system, code in pain if system == ICD10CM)
    assert (ICD10CM, "M54.89") in pain and (ICD10CM, "M54.5") in pain and (ICD10CM, "M54.8") in pain


def test_skin_of_breast_and_family_history_are_exclusions_not_cancer() -> None:
    terminology = load_terminology()
    for code, reason in (
        ("C43.52", "skin-of-breast"),
        ("C4A.52", "skin-of-breast"),
        ("C44.511", "skin-of-breast"),
        ("Z80.3", "family-history"),
        ("Z15.01", "genetic"),
        ("Z17.0", "receptor-status"),
    ):
        found = {c.value_set: c for c in terminology.lookup(ICD10CM, code)}
        assert "breast-cancer" not in found and "breast-cancer-history" not in found, code
        assert found["breast-cancer-exclusions"].attributes["reason"] == reason, code


def test_c50_covers_all_57_leaves_including_male_and_fy2025_codes() -> None:
    leaves = [code for system, code in _codes_in("breast-cancer") if system == ICD10CM and icd.is_leaf(code)]
    assert len(leaves) == 57
    assert {"C50.921", "C50.022", "C50.A0", "C50.A2"} <= set(leaves)


# --- attribute vocabularies the rules rely on ----------------------------------------------------

_VOCABULARY: dict[str, dict[str, set[Any]]] = {
    "breast-cancer": {"carcinoma": {True, False}},
    "breast-cancer-history": {"kind": {"personal-history", "remission"}},
    "breast-cancer-exclusions": {
        "reason": {
            "family-history",
            "genetic",
            "suspected",
            "at-risk",
            "metastasis-to-breast",
            "skin-of-breast",
            "receptor-status",
            "prophylactic",
        }
    },
    "bone-metastasis": {"bone": {True, False}, "spine": {True, False}},
    "spinal-pain": {
        "region": {"cervical", "thoracic", "lumbar", "sacral", "unspecified"},
        "suggestive": {True, False},
        "radicular": {True, False},
        "chronic": {True, False},
        "acute": {True, False},
        "needsSpinalSite": {True, False},
    },
    "spine-body-sites": {"region": {"cervical", "thoracic", "lumbar", "sacral", "unspecified"}},
    "neuro-red-flags": {
        "alone": {True, False},
        "feature": {
            "cord-compression",
            "cauda-equina",
            "weakness",
            "sensory",
            "bladder",
            "bowel",
            "gait",
            "radicular",
            "reflex",
            "other",
        },
    },
    "breast-cancer-drugs": {
        "tier": {"A", "B", "C"},
        "tty": {"IN", "BN", "SCD", "SBD", "SCDG"},
        "backPainDifferential": {True, False},
        "neuropathyDifferential": {True, False},
        "supportsBoneMetastasis": {True, False},
        "msccTreatment": {True, False},
    },
    "breast-cancer-supporting": {"kind": {"surgery", "radiotherapy", "chemotherapy", "z-code"}},
    "spine-imaging": {
        "modality": {"MR", "CT", "NM", "PET", "XR"},
        "coverage": {
            "whole-spine",
            "cervical",
            "thoracic",
            "lumbar",
            "sacral",
            "thoracolumbar",
            "cervicothoracic",
            "lumbosacral",
            "spine-unspecified",
            "whole-body",
            "unspecified",
        },
        "kind": {
            "mri",
            "ct",
            "ct-myelography",
            "bone-scan",
            "pet",
            "xray",
            "whole-body-mri",
            "whole-body-ct",
        },
        "contrast": {"without", "with", "without-and-with", "unspecified"},
    },
    "end-of-life": {"kind": {"hospice", "palliative", "terminal", "dnr"}},
    "observation-codes": {"role": {"pain-score", "pain-location", "symptom", "stage-group", "tnm-m"}},
    "stage-iv-values": {"kind": {"stage-group", "tnm-m"}},
    "presence-qualifiers": {"present": {True, False}},
}


@pytest.mark.parametrize("value_set", sorted(_VOCABULARY))
def test_every_concept_carries_the_attributes_its_rules_read(value_set: str) -> None:
    concepts = load_terminology().value_set(value_set)
    assert concepts
    for concept in concepts:
        for attribute, allowed in _VOCABULARY[value_set].items():
            assert concept.attributes.get(attribute) in allowed, (concept.code, attribute)


def test_drugs_name_their_ingredient_in_lower_case() -> None:
    for concept in load_terminology().value_set("breast-cancer-drugs"):
        ingredient = concept.attributes["ingredient"]
        assert isinstance(ingredient, str) and ingredient == ingredient.lower() and ingredient
        if concept.attributes["tty"] == "IN":
            assert concept.display == ingredient


def test_spinal_pain_suggestive_follows_the_region_or_a_named_feature() -> None:
    for concept in load_terminology().value_set("spinal-pain"):
        if concept.attributes["region"] in ("thoracic", "cervical"):
            assert concept.attributes["suggestive"] is True, concept.code
    suggestive_elsewhere = {
        c.code
        for c in load_terminology().value_set("spinal-pain")
        if c.attributes["suggestive"] and c.attributes["region"] not in ("thoracic", "cervical")
    }
    assert suggestive_elsewhere == {"161893008", "282743009"}  # straining; malignant bone pain


def test_cord_compression_and_cauda_equina_count_alone_generic_signs_do_not() -> None:
    terminology = load_terminology()
    for system, code in (
        (ICD10CM, "G95.20"),
        (ICD10CM, "G83.4"),
        (SNOMED, "192970008"),
        (SNOMED, "449813001"),
    ):
        concept = terminology.in_value_set("neuro-red-flags", system, code)
        assert concept is not None and concept.attributes["alone"] is True, code
    for system, code in ((ICD10CM, "R53.1"), (ICD10CM, "R32"), (ICD10CM, "R20.2"), (SNOMED, "26544005")):
        concept = terminology.in_value_set("neuro-red-flags", system, code)
        assert concept is not None and concept.attributes["alone"] is False, code


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-expansions"]:
        sys.exit("usage: python -m tests.test_valuesets --write-expansions")
    write_expansions()
