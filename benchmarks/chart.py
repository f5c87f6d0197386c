"""Realistic patient-view hook requests of a given size (total resources over the ten prefetch keys).

What a chart of N resources holds here, in the proportions a large EHR export has:
- the few resources the rules read (tests/scenarios/fhir_builders.py): a breast-cancer history, new low back
  pain 10 days ago, endocrine therapy, a recent bone scan (context imaging, never suppresses the card), an old
  lumbar MRI, a Backache symptom Observation. Together they must produce a `warning` card;
- ~10% real Synthea records (Conditions, MedicationRequests, Procedures, DiagnosticReports with their
  base64 notes) from tests/data/synthea/spezifhir-mock-patients, re-pointed at the benchmark patient;
- the rest Observations: a quarter real Synthea Observations (reused with fresh ids when N needs more than
  the 132 there are; some of them are pain scores or calcium the rules do read), three quarters generated
  vital signs and routine labs with real LOINC codes, UCUM units, reference ranges and interpretations,
  ~1.2 KB each like an EHR's output, none of them a code the rules read.
Dates of generated resources spread over ten years before now; Synthea dates are kept (1996-2020).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from tests.scenarios import fhir_builders as fb

JSON = dict[str, Any]

SYNTHEA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "synthea" / "spezifhir-mock-patients"
PATIENT_ID = fb.PATIENT_ID
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"

# (LOINC, display, UCUM unit, mean, sd, decimals, low, high). Routine labs and vitals only: none of these
# codes is in the service's value sets (calcium, albumin, ALP and pain scores are deliberately absent).
LABS: tuple[tuple[str, str, str, float, float, int, float, float], ...] = (
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 98, 14, 0, 70, 99),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.85, 0.15, 2, 0.5, 1.1),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 139, 2.5, 0, 136, 145),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 4.2, 0.4, 1, 3.5, 5.1),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 103, 2.5, 0, 98, 107),
    ("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 26, 2.5, 0, 22, 29),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 15, 4, 0, 7, 20),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 13.2, 1.1, 1, 12.0, 15.5),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 40, 3, 1, 36, 46),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 6.8, 1.6, 1, 4.0, 11.0),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 255, 55, 0, 150, 400),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 24, 8, 0, 7, 35),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 23, 6, 0, 8, 33),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 190, 30, 0, 0, 200),
    ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 58, 12, 0, 40, 200),
    ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 120, 40, 0, 0, 150),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 5.6, 0.4, 1, 4.0, 5.6),
    ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 1.9, 0.8, 2, 0.4, 4.0),
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood "
                "by Creatinine-based formula (MDRD)", "mL/min/{1.73_m2}", 85, 12, 0, 60, 120),
)
VITALS: tuple[tuple[str, str, str, float, float, int, float, float], ...] = (
    ("8867-4", "Heart rate", "/min", 74, 9, 0, 60, 100),
    ("9279-1", "Respiratory rate", "/min", 15, 2, 0, 12, 20),
    ("8310-5", "Body temperature", "Cel", 36.8, 0.3, 1, 36.1, 37.5),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 97, 1.2, 0, 95, 100),
    ("29463-7", "Body weight", "kg", 68, 4, 1, 45, 90),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 25.1, 1.5, 1, 18.5, 25),
)
BLOOD_PRESSURE = ("85354-9", "Blood pressure panel with all children optional")
SYSTOLIC: tuple[str, str, float, float] = ("8480-6", "Systolic blood pressure", 124, 12)
DIASTOLIC: tuple[str, str, float, float] = ("8462-4", "Diastolic blood pressure", 78, 8)


def _quantity(value: float, unit: str) -> JSON:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _interpretation(value: float, low: float, high: float) -> JSON:
    code, display = ("L", "Low") if value < low else ("H", "High") if value > high else ("N", "Normal")
    return {"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}


def _category(code: str, display: str) -> list[JSON]:
    return [{"coding": [{"system": fb.OBSERVATION_CATEGORY, "code": code, "display": display}], "text": display}]


def _draw(rng: random.Random, mean: float, sd: float, decimals: int) -> float:
    value = max(rng.gauss(mean, sd), mean / 4)
    return round(value, decimals) if decimals else round(value)


def generated_observation(index: int, rng: random.Random) -> JSON:
    """One irrelevant vital sign or routine lab, as an EHR exports it (~1.2 KB of JSON)."""
    days = rng.uniform(0, 3650)
    when = fb.days_ago(days).replace(microsecond=0)
    effective = when.isoformat()
    issued = (when + timedelta(hours=rng.uniform(0.5, 6))).isoformat(timespec="milliseconds")
    encounter = f"Encounter/enc-{index // 12:06d}"
    kind = rng.random()
    result: JSON = {
        "resourceType": "Observation",
        "id": f"obs-{index:07d}",
        "meta": {"profile": []},
        "status": "final",
    }
    if kind < 0.10:  # blood-pressure panel: components, no valueQuantity
        result["meta"]["profile"] = [US_CORE + "us-core-blood-pressure"]
        result["category"] = _category("vital-signs", "Vital Signs")
        result["code"] = fb.concept(fb.loinc(*BLOOD_PRESSURE), text="Blood pressure")
        components = []
        for code, display, mean, sd in (SYSTOLIC, DIASTOLIC):
            value = _draw(rng, mean, sd, 0)
            components.append({
                "code": fb.concept(fb.loinc(code, display), text=display),
                "valueQuantity": _quantity(value, "mm[Hg]"),
            })
        result.update(subject=fb.reference(PATIENT_ID), encounter={"reference": encounter},
                      effectiveDateTime=effective, issued=issued, component=components)
        return result
    lab = kind >= 0.50
    code, display, unit, mean, sd, decimals, low, high = rng.choice(LABS if lab else VITALS)
    value = _draw(rng, mean, sd, decimals)
    if lab:
        result["meta"]["profile"] = [US_CORE + "us-core-observation-lab"]
        result["category"] = _category("laboratory", "Laboratory")
        performer = {"reference": "Organization/lab-main"}
    else:
        result["meta"]["profile"] = ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]
        result["category"] = _category("vital-signs", "Vital Signs")
        performer = {"reference": f"Practitioner/nurse-{index % 37}"}
    result.update(
        code=fb.concept(fb.loinc(code, display), text=display.split(" [")[0]),  # EHRs show a short name
        subject=fb.reference(PATIENT_ID),
        encounter={"reference": encounter},
        effectiveDateTime=effective,
        issued=issued,
        performer=[performer],
        valueQuantity=_quantity(value, unit),
        interpretation=[_interpretation(value, low, high)],
        referenceRange=[{"low": _quantity(low, unit), "high": _quantity(high, unit)}],
    )
    return result


# --- Synthea ----------------------------------------------------------------------------------------------
@cache
def synthea_pool() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(Observations, other prefetch-type resources) from the SpeziFHIR Synthea patients, each re-pointed at
    the benchmark patient. Kept as JSON bytes so every use is a fresh copy."""
    observations: list[bytes] = []
    others: list[bytes] = []
    files = sorted(SYNTHEA_DIR.glob("*.json"))
    if not files:
        raise SystemExit(f"benchmarks: no Synthea patients found in {SYNTHEA_DIR}")
    for path in files:
        bundle = orjson.loads(path.read_bytes())
        patient_urls = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            kind = resource["resourceType"]
            if kind not in fb.KEY_BY_RESOURCE_TYPE:
                continue
            repointed = orjson.dumps(_repoint(resource, patient_urls))
            (observations if kind == "Observation" else others).append(repointed)
    random.Random(7).shuffle(others)  # a mix of types at every size, the same mix on every run
    return tuple(observations), tuple(others)


def _repoint(value: Any, patient_urls: set[str]) -> Any:
    if isinstance(value, dict):
        if value.get("reference") in patient_urls:
            return {**value, "reference": f"Patient/{PATIENT_ID}"}
        return {k: _repoint(v, patient_urls) for k, v in value.items()}
    if isinstance(value, list):
        return [_repoint(v, patient_urls) for v in value]
    return value


def _synthea_observations(count: int) -> Iterator[JSON]:
    observations, _ = synthea_pool()
    for i in range(count):
        resource: JSON = orjson.loads(observations[i % len(observations)])
        if i >= len(observations):  # reused: a fresh id, as a distinct result would have
            resource["id"] = f"{resource['id']}-{i // len(observations)}"
        yield resource


# --- the chart --------------------------------------------------------------------------------------------
def relevant_resources() -> dict[str, list[JSON]]:
    """What the rules read: breast cancer 3 years ago, new low back pain 10 days ago -> a warning card."""
    return {
        "conditions": [fb.breast_cancer(), fb.back_pain()],
        "medicationRequests": [fb.medication_request(fb.LETROZOLE, authored_days_ago=400)],
        "medicationStatements": [fb.medication_statement(fb.ANASTROZOLE_SCD, effective_days_ago=900)],
        "observations": [fb.symptom_observation(effective_days_ago=10)],
        "diagnosticReports": [fb.diagnostic_report(fb.BONE_SCAN_LOINC, effective_days_ago=5)],
        "imagingStudies": [fb.imaging_study(fb.MRI_LUMBAR_SNOMED, started_days_ago=2 * 365)],
        "procedures": [fb.procedure(fb.MRI_LUMBAR_SNOMED, performed_days_ago=2 * 365)],
    }


def build_request(resources: int, seed: int = 1) -> tuple[bytes, dict[str, int]]:
    """The request body of exactly `resources` resources (Patient included) and its make-up by source."""
    by_key = relevant_resources()
    core = 1 + sum(len(v) for v in by_key.values())
    if resources < core + 10:
        raise ValueError(f"a benchmark chart needs at least {core + 10} resources")
    rest = resources - core
    _, others = synthea_pool()
    synthea_other = min(len(others), rest // 10)
    observations = rest - synthea_other
    synthea_obs = observations // 4
    generated = observations - synthea_obs
    for raw in others[:synthea_other]:
        resource = orjson.loads(raw)
        by_key.setdefault(fb.KEY_BY_RESOURCE_TYPE[resource["resourceType"]], []).append(resource)
    rng = random.Random(seed * 1_000_003 + resources)
    bulk = [generated_observation(i, rng) for i in range(generated)]
    bulk.extend(_synthea_observations(synthea_obs))
    rng.shuffle(bulk)
    by_key["observations"].extend(bulk)
    request = fb.hook_request(fb.patient(age_years=62), **by_key)  # type: ignore[arg-type]
    total = 1 + sum(len(v) for v in by_key.values())
    assert total == resources, (total, resources)
    makeup = {"relevant": core, "synthea_other": synthea_other, "synthea_observations": synthea_obs,
              "generated_observations": generated}
    return orjson.dumps(request), makeup
