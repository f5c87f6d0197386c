"""Findings that change what the card says, never its tier (docs/clinical-rules.md §1.3 "Modifiers", §2.7,
§3 item 18)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response

SERVICE = "/cds-services/breast-cancer-back-pain"


def only_card(service_client: Any, *conditions: fb.JSON) -> dict[str, Any]:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), *conditions])
    response = service_client.post(SERVICE, json=body)
    assert response.status_code == 200, response.text
    assert_valid_cds_response(response.json())
    cards = response.json()["cards"]
    assert len(cards) == 1
    card: dict[str, Any] = cards[0]
    return card


@pytest.mark.parametrize(
    ("modifier", "words"),
    [
        (fb.icd10cm("M84.58XA", "Pathological fracture in neoplastic disease, other site"), "Pathological fracture"),
        (fb.snomed("42942008", "Compression fracture of vertebral column"), "Compression fracture"),
        (fb.icd10cm("R63.4", "Abnormal weight loss"), "Abnormal weight loss"),
        (fb.icd10cm("E83.52", "Hypercalcemia"), "separate emergency"),
        (fb.icd10cm("G62.0", "Drug-induced polyneuropathy"), "Drug-induced polyneuropathy"),
    ],
    ids=["neoplastic-fracture", "compression-fracture", "weight-loss", "hypercalcaemia", "cipn-differential"],
)
def test_modifier_is_shown_and_the_tier_stays_warning(service_client: Any, modifier: fb.JSON, words: str) -> None:
    recorded = fb.finding(modifier, onset_days_ago=20)
    card = only_card(service_client, fb.back_pain(), recorded)
    assert card["indicator"] == "warning"
    assert words.lower() in card["detail"].lower()
    assert f"Condition/{recorded['id']}" in card["extension"]["org.mscc-alert.evidence"]


def test_modifier_alone_gives_no_card(service_client: Any) -> None:
    body = fb.hook_request(fb.patient(), conditions=[
        fb.breast_cancer(fb.BREAST_CANCER_SNOMED),
        fb.finding(fb.icd10cm("M84.58XA", "Pathological fracture in neoplastic disease, other site")),
    ])
    assert service_client.post(SERVICE, json=body).json() == {"cards": []}


def test_resolved_modifier_is_not_shown(service_client: Any) -> None:
    fracture = fb.finding(fb.snomed("42942008", "Compression fracture of vertebral column"),
                          onset_days_ago=400, clinical_status="resolved")
    card = only_card(service_client, fb.back_pain(), fracture)
    assert "compression fracture" not in card["detail"].lower()


def test_severe_lumbar_pain_is_suggestive_and_asks_for_advice_within_24_hours(service_client: Any) -> None:
    severe = fb.back_pain(severity=fb.concept(fb.snomed("24484000", "Severe")))
    card = only_card(service_client, severe)
    assert card["indicator"] == "warning"
    assert "within 24 hours" in card["detail"]
    plain = only_card(service_client, fb.back_pain())
    assert "within 24 hours" not in plain["detail"]
