"""Evidence recorded as components of a panel or score Observation, as EHR flowsheets export it.

A nursing pain assessment is one Observation whose own code is the flowsheet's (in no value set) and whose
components are LOINC 38204-4 "Pain primary location" (a body site) and 72514-3 "Pain severity - 0-10 verbal
numeric rating [Score] - Reported"; a neurological examination is one Observation whose components are
findings (SNOMED) with a presence value. Each component counts as a standalone Observation would, through the
whole pipeline (the intake's relevance peek, validation, extraction, the decision and the card); a broken
component loses only itself.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from fhir_mapping.intake import read_document
from fhir_mapping.terminology import load_terminology
from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import call_service, highest_indicator

# A flowsheet row as a hospital's EHR codes it: a local system, no standard code.
FLOWSHEET = "http://hospital.example.org/fhir/CodeSystem/flowsheet-row"
LOWER_BACK = fb.snomed("37822005", "Lower back structure")
THORACIC_VERTEBRA = fb.snomed("35769007", "Bone structure of thoracic vertebra")
MUSCLE_WEAKNESS = fb.snomed("26544005", "Muscle weakness")
DIFFICULTY_WALKING = fb.snomed("719232003", "Difficulty walking")


def panel(name: str, components: list[fb.JSON], *, days_ago: float = 2, category: str = "survey") -> fb.JSON:
    """An R4 Observation panel as flowsheets export it: local code, effective time, components, no value."""
    return {
        "resourceType": "Observation",
        "id": fb._id("flowsheet"),
        "status": "final",
        "category": [fb.concept(fb.coding(fb.OBSERVATION_CATEGORY, category))],
        "code": {"coding": [{"system": FLOWSHEET, "code": name.upper().replace(" ", "_"), "display": name}],
                 "text": name},
        "subject": fb.reference(),
        "effectiveDateTime": fb.iso_datetime(days_ago),
        "issued": fb.iso_datetime(days_ago),
        "component": components,
    }


def location(site: fb.JSON) -> fb.JSON:
    return {"code": fb.concept(fb.PAIN_PRIMARY_LOCATION), "valueCodeableConcept": fb.concept(site)}


def severity(score: Any) -> fb.JSON:
    code = fb.concept(fb.loinc("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported"))
    return {"code": code, "valueQuantity": {"value": score, "unit": "{score}", "system": "http://unitsofmeasure.org",
                                            "code": "{score}"}}


def finding(code: fb.JSON, present: bool | None) -> fb.JSON:
    value = {"valueCodeableConcept": fb.concept(fb.PRESENT if present else fb.ABSENT)}
    return {"code": fb.concept(code), **value}


def pain_assessment(*components: fb.JSON, days_ago: float = 2) -> fb.JSON:
    return panel("Pain assessment", list(components), days_ago=days_ago)


def neuro_exam(*components: fb.JSON, days_ago: float = 1) -> fb.JSON:
    return panel("Neuro assessment", list(components), days_ago=days_ago, category="exam")


def request(*observations: fb.JSON, conditions: list[fb.JSON] | None = None) -> fb.JSON:
    return fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), *(conditions or [])],
                           observations=list(observations))


def test_pain_location_component_is_new_spinal_pain(service_client: Any) -> None:
    body = call_service(service_client, request(pain_assessment(location(LOWER_BACK), severity(4))))
    assert highest_indicator(body) == "warning"
    card = body["cards"][0]
    noted = r"low back pain noted \d{1,2} [A-Z][a-z]{2}( \d{4})? \(2 days ago\)"
    assert re.search(noted, card["detail"]), card["detail"]
    observation_id = body["cards"][0]["extension"]["org.mscc-alert.evidence"]
    assert any(r.startswith("Observation/flowsheet") for r in observation_id)


def test_severe_score_component_makes_the_pain_suggestive(service_client: Any) -> None:
    mild = call_service(service_client, request(pain_assessment(location(LOWER_BACK), severity(3))))
    severe = call_service(service_client, request(pain_assessment(location(LOWER_BACK), severity(8))))
    assert highest_indicator(mild) == highest_indicator(severe) == "warning"
    assert "within 24 hours" not in mild["cards"][0]["detail"]
    assert "severe pain (score 8/10)" in severe["cards"][0]["detail"]


def test_thoracic_location_component_is_suggestive(service_client: Any) -> None:
    body = call_service(service_client, request(pain_assessment(location(THORACIC_VERTEBRA))))
    assert highest_indicator(body) == "warning"
    assert "thoracic back pain" in body["cards"][0]["detail"] and "within 24 hours" in body["cards"][0]["detail"]


def test_score_components_over_time_requalify_chronic_pain(service_client: Any) -> None:
    """Chronic low back pain for two years: a 2-point rise between two assessments makes it new again."""
    chronic = fb.back_pain(*fb.CHRONIC_LOW_BACK_PAIN, onset_days_ago=2 * 365)
    before = pain_assessment(location(LOWER_BACK), severity(3), days_ago=100)
    steady = call_service(service_client, request(before, pain_assessment(location(LOWER_BACK), severity(4)),
                                                  conditions=[chronic]))
    assert highest_indicator(steady) is None
    worse = call_service(service_client, request(before, pain_assessment(location(LOWER_BACK), severity(8)),
                                                 conditions=[chronic]))
    assert highest_indicator(worse) == "warning"
    assert "pain score up 5 points" in worse["cards"][0]["detail"]


def test_neurological_finding_component_makes_it_critical(service_client: Any) -> None:
    exam = neuro_exam(finding(MUSCLE_WEAKNESS, True), finding(DIFFICULTY_WALKING, False))
    body = call_service(service_client, request(exam, conditions=[fb.back_pain()]))
    assert highest_indicator(body) == "critical"
    assert "muscle weakness noted yesterday" in body["cards"][0]["detail"]
    assert "difficulty walking" not in body["cards"][0]["detail"]


def test_neurological_findings_recorded_absent_stay_warning(service_client: Any) -> None:
    exam = neuro_exam(finding(MUSCLE_WEAKNESS, False), {"code": fb.concept(DIFFICULTY_WALKING), "valueBoolean": False})
    body = call_service(service_client, request(exam, conditions=[fb.back_pain()]))
    assert highest_indicator(body) == "warning"


def test_neurological_component_with_boolean_true_counts(service_client: Any) -> None:
    exam = neuro_exam({"code": fb.concept(DIFFICULTY_WALKING), "valueBoolean": True})
    body = call_service(service_client, request(exam, pain_assessment(location(LOWER_BACK))))
    assert highest_indicator(body) == "critical"


def test_pain_and_neurological_findings_in_one_panel(service_client: Any) -> None:
    body = call_service(service_client, request(pain_assessment(location(LOWER_BACK), severity(6),
                                                                finding(MUSCLE_WEAKNESS, True))))
    assert highest_indicator(body) == "critical"


def test_a_panel_about_another_site_gives_no_card(service_client: Any) -> None:
    knee = {"code": fb.concept(fb.PAIN_PRIMARY_LOCATION), "valueCodeableConcept": {"text": "left knee"}}
    body = call_service(service_client, request(pain_assessment(knee, severity(8))))
    assert highest_indicator(body) is None


def test_a_broken_component_does_not_silence_the_rest_of_the_panel(service_client: Any) -> None:
    broken = severity("eight")  # valueQuantity.value must be a number
    body = call_service(service_client, request(pain_assessment(location(LOWER_BACK), broken)))
    assert highest_indicator(body) == "warning"
    card = body["cards"][0]
    assert "low back pain" in card["detail"]
    assert "1 unreadable record (Observation)" in card["detail"]  # and the loss is said
    assert card["extension"]["org.mscc-alert.unreadable"][0].startswith("Observation/flowsheet")


def test_a_component_the_peek_cannot_read_does_not_silence_the_rest(service_client: Any) -> None:
    mangled = {"code": "72514-3", "valueInteger": 8}  # code must be a CodeableConcept
    exam = neuro_exam(mangled, finding(MUSCLE_WEAKNESS, True))
    body = call_service(service_client, request(exam, conditions=[fb.back_pain()]))
    assert highest_indicator(body) == "critical"
    assert "muscle weakness" in body["cards"][0]["detail"]


def test_intake_keeps_a_panel_only_for_its_components() -> None:
    terminology = load_terminology()
    blood_pressure = panel("Blood pressure", [
        {"code": fb.concept(fb.loinc("8480-6", "Systolic blood pressure")), "valueQuantity": {"value": 120}},
        {"code": fb.concept(fb.loinc("8462-4", "Diastolic blood pressure")), "valueQuantity": {"value": 80}},
    ], category="vital-signs")
    pain = pain_assessment(location(LOWER_BACK))
    empty_pain = pain_assessment()
    document = read_document(orjson.dumps(fb.searchset([blood_pressure, pain, empty_pain])), terminology)
    assert document.seen == 3
    assert [peek.id for peek, _ in document.picked] == [pain["id"]]
