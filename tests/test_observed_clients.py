"""Requests real CDS clients sent (tests/data/cds-hooks-examples/observed-client-requests), replayed against
the real `mscc-alert serve`.

- The CDS Hooks sandbox: prefetch keys of another service (only `patient` is one of ours), an open FHIR
  server and no fhirAuthorization. Its fhirServer pointed at a port that is gone, so it is rewritten to a
  loopback `FhirTestServer` holding the Synthea patient it showed (sample-bulk-10-patients/129c6ac7-…),
  who had breast cancer and died in 1989: the answer is 200 with no card.
- HealthChain 0.16.1: no fhirServer, prefetch keys named after resource types, and a patientId that
  matches none of its data: 412 naming what is missing and what was ignored, and a log that says the same
  without any patient data.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.conftest import SERVICE_ID, TEST_DATA, LiveService
from tests.scenarios.fhir_builders import JSON, KEY_BY_RESOURCE_TYPE, PREFETCH_KEYS
from tests.test_fhir_server_fallback import FhirTestServer
from tests.test_hook_errors import assert_operation_outcome

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
OBSERVED = TEST_DATA / "cds-hooks-examples/observed-client-requests"
SYNTHEA_PATIENT = "129c6ac7-8d06-89de-ad63-0204a93e76c3"
SYNTHEA_BUNDLE = TEST_DATA / f"synthea/sample-bulk-10-patients/{SYNTHEA_PATIENT}.json"
BREAST_CANCER = ("http://snomed.info/sct", "254837009")
HEALTHCHAIN_KEYS = ["condition", "medicationrequest", "observation"]


def load(path: Path) -> JSON:
    body: JSON = json.loads(path.read_text())
    return body


def leaf_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in leaf_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in leaf_strings(item)]
    return [value] if isinstance(value, str) else []


def patient_data(body: JSON) -> set[str]:
    """The strings of a request that identify or describe the patient: ids, dates, codes, names, displays.
    Left out: resource type names, lower-case vocabulary (`active`, `final`) and system URIs, which any log
    may legitimately contain."""
    strings = leaf_strings(body["context"]) + leaf_strings(body.get("prefetch", {}))
    return {
        s
        for s in strings
        if len(s) >= 6 and not s.startswith("http") and not re.fullmatch(r"[a-z-]+|[A-Z][a-z]+(?:[A-Z][a-z]+)*", s)
    }


def names_key(text: str, key: str) -> bool:
    """`key` as a whole word: `condition` must not be found inside `conditions`."""
    return re.search(rf"(?<![A-Za-z]){re.escape(key)}(?![A-Za-z])", text) is not None


def log_lines_for(live: LiveService, hook_instance: str) -> list[str]:
    """The service's log lines for one call. The access line is written just after the response is sent,
    so it may lag the response by a moment: poll briefly for it."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in live.logs().splitlines() if hook_instance in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# --- the CDS Hooks sandbox ------------------------------------------------------------------------------------
@pytest.fixture
def synthea_server(httpserver: HTTPServer) -> FhirTestServer:
    resources = [entry["resource"] for entry in load(SYNTHEA_BUNDLE)["entry"]]
    return FhirTestServer(httpserver, resources, token=None, page_size=50)


def test_sandbox_request_is_answered_from_the_fhir_server(
    live_service: LiveService, synthea_server: FhirTestServer
) -> None:
    body = load(OBSERVED / "cds-hooks-sandbox_patient-view_request.json")
    assert "fhirAuthorization" not in body and body["context"]["patientId"] == SYNTHEA_PATIENT
    body["fhirServer"] = synthea_server.base_url

    response = live_service.session.post(live_service.url(SERVICE_PATH), json=body, timeout=60)

    assert response.status_code == 200, response.text[:800]
    assert response.json() == {"cards": []}  # breast cancer in 1989, but deceased in 1989
    # `patient` was prefetched; the other eight declared keys were not (the sandbox used its own names).
    assert synthea_server.first_page_types() == sorted(KEY_BY_RESOURCE_TYPE)
    assert all(seen.authorization is None for seen in synthea_server.seen)
    assert all(seen.status == 200 for seen in synthea_server.seen)
    lines = log_lines_for(live_service, body["hookInstance"])
    assert lines, "the call was not logged"
    assert SYNTHEA_PATIENT not in live_service.logs()


def test_sandbox_patient_really_has_breast_cancer() -> None:
    """The 'no card' above is only meaningful if the chart holds the history (it does, ending in death)."""
    resources = [entry["resource"] for entry in load(SYNTHEA_BUNDLE)["entry"]]
    codes = {
        (c["system"], c["code"]) for r in resources if r["resourceType"] == "Condition" for c in r["code"]["coding"]
    }
    assert BREAST_CANCER in codes
    assert next(r for r in resources if r["resourceType"] == "Patient")["deceasedDateTime"].startswith("1989")


# --- HealthChain -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def healthchain_answer(live_service: LiveService) -> tuple[JSON, Any]:
    body = load(OBSERVED / "healthchain-0.16.1_patient-view_request.json")
    assert sorted(body["prefetch"]) == HEALTHCHAIN_KEYS and "fhirServer" not in body
    response = live_service.session.post(live_service.url(SERVICE_PATH), json=body, timeout=60)
    return body, response


def test_healthchain_request_is_412_naming_missing_and_ignored_keys(healthchain_answer: tuple[JSON, Any]) -> None:
    _, response = healthchain_answer
    outcome = assert_operation_outcome(response, 412)
    issue = outcome["issue"][0]
    assert issue["expression"] == [f"prefetch.{key}" for key in PREFETCH_KEYS]
    for key in PREFETCH_KEYS:
        assert f"'{key}'" in issue["diagnostics"]
    for key in HEALTHCHAIN_KEYS:
        assert names_key(issue["diagnostics"], key), f"the ignored key {key!r} is not named"


def test_healthchain_request_is_logged_by_key_name_without_patient_data(
    live_service: LiveService, healthchain_answer: tuple[JSON, Any]
) -> None:
    body, _ = healthchain_answer
    lines = log_lines_for(live_service, body["hookInstance"])
    assert lines, "the call was not logged with its hookInstance"
    assert any(all(names_key(line, key) for key in HEALTHCHAIN_KEYS) for line in lines), lines
    logs = live_service.logs()
    leaked = sorted(s for s in patient_data(body) if s in logs)
    assert leaked == []
    assert len(patient_data(body)) > 20  # the check above had something to look for


def test_service_still_serves_after_the_observed_clients(
    live_service: LiveService, healthchain_answer: tuple[JSON, Any]
) -> None:
    assert live_service.session.get(live_service.url("/healthz"), timeout=30).status_code == 200
    assert live_service.process.poll() is None
