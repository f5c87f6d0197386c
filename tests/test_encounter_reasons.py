"""Back pain documented only as a visit's reason (Encounter.reasonCode; docs/clinical-rules.md §1.2, where the
sources of evidence are listed)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response

SERVICE = "/cds-services/breast-cancer-back-pain"
LOW_BACK_PAIN = fb.snomed("279039007", "Low back pain")


def highest(service_client: Any, *encounters: fb.JSON) -> str | None:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED)],
                           encounters=list(encounters))
    response = service_client.post(SERVICE, json=body)
    assert response.status_code == 200, response.text
    assert_valid_cds_response(response.json())
    cards = response.json()["cards"]
    return cards[0]["indicator"] if cards else None


@pytest.mark.parametrize(
    ("encounters", "expected"),
    [
        pytest.param([fb.encounter(LOW_BACK_PAIN, days_ago=5)], "warning", id="coded-reason"),
        pytest.param([fb.encounter(fb.icd10cm("M5450", "Low back pain, unspecified"), days_ago=5)], "warning",
                     id="undotted-icd-reason"),
        pytest.param([fb.encounter({"text": "lower back ache for a week"}, days_ago=5)], "warning", id="text-reason"),
        pytest.param([fb.encounter({"text": "no back pain, review of results"}, days_ago=5)], None,
                     id="negated-text-reason"),
        pytest.param([fb.encounter(LOW_BACK_PAIN, days_ago=5, status="cancelled")], None, id="cancelled-visit"),
        pytest.param([fb.encounter(LOW_BACK_PAIN, days_ago=d) for d in (5, 35, 65, 95, 125)], None,
                     id="monthly-visits-for-months-not-new"),
        pytest.param([fb.encounter(LOW_BACK_PAIN, days_ago=5),
                      fb.encounter(fb.icd10cm("R26.2", "Difficulty in walking, not elsewhere classified"),
                                   days_ago=1)], "critical", id="pain-then-difficulty-walking"),
        pytest.param([fb.encounter(LOW_BACK_PAIN, days_ago=400)], None, id="old-visit"),
    ],
)
def test_encounter_reason(service_client: Any, encounters: list[fb.JSON], expected: str | None) -> None:
    assert highest(service_client, *encounters) == expected


def test_the_card_cites_the_visit(service_client: Any) -> None:
    visit = fb.encounter(LOW_BACK_PAIN, days_ago=5)
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED)], encounters=[visit])
    card = service_client.post(SERVICE, json=body).json()["cards"][0]
    # Named in words on the card, and by reference in its machine-readable evidence (never in the text).
    assert "low back pain at a visit" in card["detail"]
    assert f"Encounter/{visit['id']}" in card["extension"]["org.mscc-alert.evidence"]
    assert "Encounter/" not in card["detail"]
