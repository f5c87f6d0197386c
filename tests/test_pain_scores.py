"""Pain scores (LOINC 72514-3): severe pain is suggestive; a 2-point rise re-qualifies chronic back pain
(docs/clinical-rules.md §1.2 item 5, §1.3 list S) against a baseline in the washout period before the new-pain
window."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from cards.decision import pain_score_horizon
from cards.policy import Policy
from fhir_mapping.intake import collect
from fhir_mapping.terminology import load_terminology
from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response

SERVICE = "/cds-services/breast-cancer-back-pain"
PAIN_SCORE = fb.loinc("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported")


def score(value: float, days_ago: float, **shape: Any) -> fb.JSON:
    value_shape = shape or {"valueQuantity": {"value": value, "unit": "{score}", "system": "http://unitsofmeasure.org",
                                              "code": "{score}"}}
    return fb.observation(fb.concept(PAIN_SCORE), effective_days_ago=days_ago, **value_shape)


def chronic_with_new_code(*observations: fb.JSON) -> fb.JSON:
    """Chronic low back pain for two years, coded again 5 days ago: not new by itself."""
    return fb.hook_request(
        fb.patient(),
        conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED),
                    fb.back_pain(*fb.CHRONIC_LOW_BACK_PAIN, onset_days_ago=730, category="problem-list-item"),
                    fb.back_pain(onset_days_ago=5)],
        observations=list(observations),
    )


def indicator(service_client: Any, body: fb.JSON) -> str | None:
    response = service_client.post(SERVICE, json=body)
    assert response.status_code == 200, response.text
    assert_valid_cds_response(response.json())
    cards = response.json()["cards"]
    return cards[0]["indicator"] if cards else None


def test_chronic_pain_without_scores_is_not_new(service_client: Any) -> None:
    assert indicator(service_client, chronic_with_new_code()) is None


def test_a_two_point_rise_against_a_recent_baseline_makes_it_new(service_client: Any) -> None:
    body = chronic_with_new_code(score(3, days_ago=100), score(8, days_ago=3))
    response = service_client.post(SERVICE, json=body).json()
    assert response["cards"][0]["indicator"] == "warning"
    assert "pain score up 5 points" in response["cards"][0]["detail"]


def test_a_one_point_rise_does_not(service_client: Any) -> None:
    assert indicator(service_client, chronic_with_new_code(score(6, days_ago=100), score(7, days_ago=3))) is None


def test_a_baseline_older_than_the_washout_does_not_count(service_client: Any) -> None:
    assert indicator(service_client, chronic_with_new_code(score(2, days_ago=400), score(8, days_ago=3))) is None


@pytest.mark.parametrize(
    "shape",
    [{"valueInteger": 8}, {"valueString": "8/10"}, {"valueQuantity": {"value": 80, "unit": "mm"}}],
    ids=["integer", "string-8-of-10", "vas-80-mm"],
)
def test_severe_score_in_the_window_is_suggestive(service_client: Any, shape: dict[str, Any]) -> None:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()],
                           observations=[score(0, days_ago=2, **shape)])
    card = service_client.post(SERVICE, json=body).json()["cards"][0]
    assert card["indicator"] == "warning"
    assert "severe pain (score 8/10)" in card["detail"]
    assert "within 24 hours" in card["detail"]


def test_old_pain_scores_are_not_validated() -> None:
    """The intake drops what the decision would never read, before paying for validation."""
    now = datetime.now(UTC)
    old, recent = score(3, days_ago=400), score(5, days_ago=10)
    bundle = orjson.dumps(fb.searchset([old, recent]))
    intake = collect([bundle], fb.PATIENT_ID, load_terminology(), pain_scores_since=pain_score_horizon(Policy(), now))
    assert [r.id for r in intake.resources] == [recent["id"]]
    everything = collect([bundle], fb.PATIENT_ID, load_terminology())
    assert len(everything.resources) == 2
