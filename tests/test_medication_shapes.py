"""Medication records the way EHRs send them: coded, text only, or by reference to a contained Medication
(docs/clinical-rules.md §1.1 H3: tier-A drugs infer the history; names must resolve whatever the shape)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response

SERVICE = "/cds-services/breast-cancer-back-pain"


def request(**medication: Any) -> fb.JSON:
    return {"resourceType": "MedicationRequest", "id": "med-request", "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/{fb.PATIENT_ID}"}, "authoredOn": fb.iso_datetime(30), **medication}


FULVESTRANT_CONTAINED = {"resourceType": "Medication", "id": "med", "code": {"coding": [fb.FULVESTRANT]}}
# A contained resource whose `code` is a list of Codings, not a CodeableConcept.
QUESTIONNAIRE = {"resourceType": "Questionnaire", "id": "q", "status": "active", "code": [fb.FULVESTRANT]}


@pytest.mark.parametrize(
    ("medication", "expected"),
    [
        pytest.param({"medicationCodeableConcept": {"text": "Faslodex 250 mg/5 mL injection"}}, "warning",
                     id="brand-name-text-only"),
        pytest.param({"medicationCodeableConcept": {"text": "FULVESTRANT 500 MG IM"}}, "warning",
                     id="ingredient-text-only"),
        pytest.param({"contained": [FULVESTRANT_CONTAINED], "medicationReference": {"reference": "#med"}}, "warning",
                     id="contained-medication"),
        pytest.param({"medicationReference": {"reference": "Medication/abc", "display": "palbociclib 125 MG"}},
                     "warning", id="reference-display-only"),
        pytest.param({"medicationCodeableConcept": {"text": "paracetamol 1 g"}}, None, id="unrelated-text"),
        pytest.param({"contained": [QUESTIONNAIRE, FULVESTRANT_CONTAINED],
                      "medicationReference": {"reference": "#med"}}, "warning",
                     id="other-contained-resource-with-a-list-code"),
    ],
)
def test_medication_shape(service_client: Any, medication: dict[str, Any], expected: str | None) -> None:
    body = fb.hook_request(fb.patient(), conditions=[fb.back_pain()], medicationRequests=[request(**medication)])
    response = service_client.post(SERVICE, json=body)
    assert response.status_code == 200, response.text
    assert_valid_cds_response(response.json())
    cards = response.json()["cards"]
    assert (cards[0]["indicator"] if cards else None) == expected
    if expected:
        assert "inferred" in cards[0]["detail"]
