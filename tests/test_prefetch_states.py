"""The prefetch key states of CDS Hooks 2.0 (docs/cds-hooks-conformance.md §1.5 and the matrix in §5.3), in-process.

    absent                         -> fetched from fhirServer; without one, 412 naming the key
    null                           -> "no data": never fetched
    OperationOutcome, a Bundle
      holding one, not a resource  -> treated as absent
    Bundle with a `next` link      -> the whole search is fetched
    undeclared key                 -> ignored (and named when a 412 is answered)
    another patient's resources    -> not used

Where a fhirServer is given it is a real loopback server (`FhirTestServer`) holding data that would change
the answer, so fetching, or not fetching, shows in the cards as well as in the server's request log.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.conftest import SERVICE_ID, free_port
from tests.scenarios.fhir_builders import (
    JSON,
    OTHER_PATIENT_ID,
    PATIENT_ID,
    PREFETCH_KEYS,
    back_pain,
    breast_cancer,
    hook_request,
    patient,
    searchset,
)
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response
from tests.test_fhir_server_fallback import FhirTestServer
from tests.test_hook_errors import assert_operation_outcome

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
HTML_ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "timeout", "diagnostics": "query timed out"}],
}
# Named so that none is a substring of a declared key (HealthChain's `condition` would be, of `conditions`).
UNDECLARED = {
    "medicationrequest": searchset([]),
    "hemoglobin-a1c": "garbage",
    "patientToGreet": {"resourceType": "Patient"},
}


def warning_request() -> JSON:
    """Breast cancer + new back pain, all nine keys prefetched: a warning card."""
    return hook_request(patient(), conditions=[breast_cancer(), back_pain()])


def warning_chart() -> list[JSON]:
    """The same patient's data, held by the FHIR server."""
    return [patient(), breast_cancer(), back_pain()]


def evaluate(service_client: Any, body: JSON) -> list[str]:
    response = service_client.post(SERVICE_PATH, json=body)
    assert response.status_code == 200, f"{response.status_code}: {response.text[:800]}"
    assert_valid_cds_response(response.json(), patient_id=body["context"]["patientId"])
    return [card["indicator"] for card in response.json()["cards"]]


def test_all_keys_present_is_200_with_the_card(service_client: Any) -> None:
    assert evaluate(service_client, warning_request()) == ["warning"]


# --- null: no data, never fetched -------------------------------------------------------------------------
@pytest.mark.parametrize("key", PREFETCH_KEYS)
def test_null_key_is_never_fetched(httpserver: HTTPServer, service_client: Any, key: str) -> None:
    server = FhirTestServer(httpserver, warning_chart())
    body = warning_request()
    body["prefetch"][key] = None
    body["fhirServer"] = server.base_url
    response = service_client.post(SERVICE_PATH, json=body)
    assert response.status_code == 200, response.text[:800]
    assert server.seen == []


def test_null_conditions_mean_no_data_even_when_the_server_has_some(
    httpserver: HTTPServer, service_client: Any
) -> None:
    server = FhirTestServer(httpserver, warning_chart())
    body = warning_request()
    body["prefetch"]["conditions"] = None
    body["fhirServer"] = server.base_url
    assert evaluate(service_client, body) == []
    assert server.seen == []


def test_all_keys_null_is_200_without_cards(httpserver: HTTPServer, service_client: Any) -> None:
    server = FhirTestServer(httpserver, warning_chart())
    body = warning_request()
    body["prefetch"] = dict.fromkeys(PREFETCH_KEYS)
    body["fhirServer"] = server.base_url
    assert evaluate(service_client, body) == []
    assert server.seen == []


# --- absent ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", PREFETCH_KEYS)
def test_absent_key_without_fhir_server_is_412_naming_it(service_client: Any, key: str) -> None:
    body = warning_request()
    del body["prefetch"][key]
    outcome = assert_operation_outcome(service_client.post(SERVICE_PATH, json=body), 412, f"'{key}'")
    assert outcome["issue"][0]["expression"] == [f"prefetch.{key}"]


def test_no_prefetch_at_all_without_fhir_server_is_412_naming_every_key(service_client: Any) -> None:
    body = warning_request()
    del body["prefetch"]
    outcome = assert_operation_outcome(service_client.post(SERVICE_PATH, json=body), 412, "fhirServer")
    assert outcome["issue"][0]["expression"] == [f"prefetch.{key}" for key in PREFETCH_KEYS]


def test_412_names_each_key_and_its_reason_on_its_own_line(service_client: Any) -> None:
    body = warning_request()
    del body["prefetch"]["conditions"], body["prefetch"]["observations"]
    body["prefetch"]["labs"] = searchset([])  # not declared: named on a line of its own
    outcome = assert_operation_outcome(service_client.post(SERVICE_PATH, json=body), 412, "fhirServer")
    lines = outcome["issue"][0]["diagnostics"].splitlines()
    assert lines[1:] == [
        "- prefetch key 'conditions': not provided in prefetch",
        "- prefetch key 'observations': not provided in prefetch",
        "- ignored prefetch keys this service does not declare: labs (it declares: " + ", ".join(PREFETCH_KEYS) + ")",
    ]


# --- values that are not data: treated as absent --------------------------------------------------------------
def outcome_in_bundle() -> JSON:
    bundle = searchset([breast_cancer(), back_pain()])
    bundle["entry"].append({"resource": OUTCOME, "search": {"mode": "outcome"}})
    return bundle


def paged_bundle() -> JSON:
    """Only the first page of the search: the back pain is on a page the client did not send."""
    bundle = searchset([breast_cancer()])
    bundle["total"] = 2
    bundle["link"] = [{"relation": "next", "url": f"Condition?patient={PATIENT_ID}&_page=2"}]
    return bundle


NOT_DATA = [
    pytest.param(OUTCOME, id="operation-outcome"),
    pytest.param(outcome_in_bundle(), id="bundle-holding-an-operation-outcome"),
    pytest.param("Service Unavailable", id="string"),
    pytest.param(HTML_ERROR_PAGE, id="html-error-page"),
    pytest.param(42, id="number"),
    pytest.param([breast_cancer(), back_pain()], id="bare-array"),
    pytest.param({"entry": []}, id="object-without-resourceType"),
]


@pytest.mark.parametrize("value", NOT_DATA)
def test_unusable_value_without_fhir_server_is_412(service_client: Any, value: Any) -> None:
    body = warning_request()
    body["prefetch"]["conditions"] = copy.deepcopy(value)
    outcome = assert_operation_outcome(service_client.post(SERVICE_PATH, json=body), 412, "'conditions'")
    assert outcome["issue"][0]["expression"] == ["prefetch.conditions"]


@pytest.mark.parametrize("value", [*NOT_DATA, pytest.param(paged_bundle(), id="bundle-with-next-link")])
def test_unusable_value_is_fetched_from_fhir_server(httpserver: HTTPServer, service_client: Any, value: Any) -> None:
    server = FhirTestServer(httpserver, warning_chart())
    body = warning_request()
    body["prefetch"]["conditions"] = copy.deepcopy(value)
    body["prefetch"]["patient"] = None  # so the only possible request is the one for conditions
    body["fhirServer"] = server.base_url
    assert evaluate(service_client, body) == ["warning"]
    assert server.first_page_types() == ["Condition"]
    assert server.seen[0].args["patient"] == PATIENT_ID


def test_paged_prefetch_without_fhir_server_is_412(service_client: Any) -> None:
    body = warning_request()
    body["prefetch"]["conditions"] = paged_bundle()
    assert_operation_outcome(service_client.post(SERVICE_PATH, json=body), 412, "'conditions'", "next")


# --- undeclared keys ------------------------------------------------------------------------------------------
def test_undeclared_keys_are_ignored(service_client: Any) -> None:
    body = warning_request()
    body["prefetch"].update(copy.deepcopy(UNDECLARED))
    assert evaluate(service_client, body) == ["warning"]


def test_undeclared_keys_are_named_in_a_412_without_fhir_server(service_client: Any) -> None:
    body = warning_request()
    del body["prefetch"]["observations"]
    body["prefetch"].update(copy.deepcopy(UNDECLARED))
    outcome = assert_operation_outcome(service_client.post(SERVICE_PATH, json=body), 412, "'observations'")
    for key in UNDECLARED:
        assert key in outcome["issue"][0]["diagnostics"]
    assert outcome["issue"][0]["expression"] == ["prefetch.observations"]


def test_undeclared_keys_are_named_in_a_412_after_a_failed_fetch(service_client: Any) -> None:
    body = warning_request()
    del body["prefetch"]["observations"]
    body["prefetch"].update(copy.deepcopy(UNDECLARED))
    body["fhirServer"] = f"http://127.0.0.1:{free_port()}/fhir"
    outcome = assert_operation_outcome(service_client.post(SERVICE_PATH, json=body), 412, "'observations'")
    for key in UNDECLARED:
        assert key in outcome["issue"][0]["diagnostics"]


# --- another patient's resources --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "conditions",
    [
        pytest.param(
            [breast_cancer(patient_id=OTHER_PATIENT_ID), back_pain(patient_id=OTHER_PATIENT_ID)],
            id="both-for-another-patient",
        ),
        pytest.param([breast_cancer(), back_pain(patient_id=OTHER_PATIENT_ID)], id="pain-for-another-patient"),
        pytest.param([breast_cancer(patient_id=OTHER_PATIENT_ID), back_pain()], id="cancer-for-another-patient"),
    ],
)
def test_another_patients_resources_are_not_used(service_client: Any, conditions: list[JSON]) -> None:
    body = hook_request(patient(), conditions=copy.deepcopy(conditions))
    assert evaluate(service_client, body) == []
