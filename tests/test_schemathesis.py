"""Schemathesis against the app's own OpenAPI document (GET /openapi.json), in-process over ASGI.

Every operation in the document gets schema-driven cases (positive and negative: bodies that follow the
HookRequest/FeedbackRequest schemas and bodies that break them), bounded and derandomized for CI. Each answer
must be no 5xx and, in our own terms, either a valid 200 for the route or a 4xx OperationOutcome.

The path parameter `service_id` is pinned to our service so that generated bodies reach the hook and feedback
code (unknown ids are fuzzed in test_fuzz.py), and any fhirServer a case makes up is pointed at a closed
loopback port so nothing leaves the machine.

Conformance of the answers to the document itself (documented statuses, media types, schemas) is checked
separately on one request per kind of answer, with the gaps found marked as service bugs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_hooks.protocol.app import create_app
from cds_hooks.services.registry import SERVICES
from cds_hooks.settings import Settings
from tests.conftest import SERVICE_ID
from tests.scenarios import fhir_builders as fb

pytestmark = pytest.mark.e2e  # slow: hundreds of generated requests

CLOSED_LOOPBACK = "http://127.0.0.1:1/fhir"
INDICATORS = {"info", "warning", "critical"}
OPERATIONS = {
    ("GET", "/cds-services"),
    ("POST", "/cds-services/{service_id}"),
    ("POST", "/cds-services/{service_id}/feedback"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
}

app = create_app(Settings(database_url="memory://", fhir_connect_timeout=0.5, fhir_total_seconds=2.0))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_document_lists_every_route_with_its_request_body() -> None:
    document = app.openapi()
    found = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert found == OPERATIONS
    for path in ("/cds-services/{service_id}", "/cds-services/{service_id}/feedback"):
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        assert "$ref" in schema or len(schema["oneOf"]) > 1
    # One request model per hook, named after it (its context differs).
    for service in SERVICES:
        name = service.context_model.__name__.removesuffix("Context") + "Request"
        hook = document["components"]["schemas"][name]
        assert set(hook["required"]) == {"hook", "hookInstance", "context"}
    assert set(document["components"]["schemas"]["FeedbackRequest"]["required"]) == {"feedback"}


# --- our terms for a good answer ------------------------------------------------------------------------


def answer_is_cds_hooks(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """200: the route's valid body; 4xx: a FHIR OperationOutcome (application/fhir+json)."""
    status = response.status_code
    if case.method == "OPTIONS" and status == 204:  # schemathesis probes other methods; OPTIONS says Allow
        assert response.headers["allow"][0].startswith(("GET", "POST"))
        return
    if 400 <= status < 500:
        assert response.headers["content-type"][0].startswith("application/fhir+json"), response.headers
        outcome = json.loads(response.content)
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"] and all(issue["severity"] and issue["code"] for issue in outcome["issue"])
        return
    assert status == 200, status
    if case.operation.path == "/cds-services/{service_id}":
        body = json.loads(response.content)
        assert isinstance(body["cards"], list)
        for card in body["cards"]:
            assert isinstance(card["uuid"], str) and isinstance(card["summary"], str)
            assert card["indicator"] in INDICATORS
            assert isinstance(card["source"]["label"], str)
    elif case.operation.path == "/cds-services/{service_id}/feedback":
        assert json.loads(response.content)["resourceType"] == "OperationOutcome"


def pin(case: schemathesis.Case) -> None:
    """Aim the case at our service and hook so it gets past the first checks, and keep any fhirServer on a
    closed loopback port. The document allows any hook name and any prefetch keys; the service answers only
    `patient-view` and needs all nine keys (else 412), so a well-typed case gets the right hook, and its
    missing prefetch keys are sent as null ("no data")."""
    if "service_id" in (case.path_parameters or {}):
        case.path_parameters["service_id"] = SERVICE_ID
    body = case.body
    if not isinstance(body, dict) or case.operation.path != "/cds-services/{service_id}":
        return
    if isinstance(body.get("hook"), str):
        body["hook"] = "patient-view"
    if isinstance(body.get("prefetch"), dict):
        for key in fb.PREFETCH_KEYS:
            body["prefetch"].setdefault(key, None)
    if isinstance(body.get("fhirServer"), str):
        parts = urlsplit(body["fhirServer"])
        if parts.scheme.lower() in ("http", "https") and parts.hostname not in (None, "127.0.0.1"):
            body["fhirServer"] = CLOSED_LOOPBACK


@schema.parametrize()
@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_never_get_a_server_error(case: schemathesis.Case) -> None:
    pin(case)
    case.call_and_validate(checks=[not_a_server_error, answer_is_cds_hooks])


# --- answers against the document -----------------------------------------------------------------------

HOOK = "/cds-services/{service_id}"
FEEDBACK = "/cds-services/{service_id}/feedback"
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


def warning_request() -> dict[str, Any]:
    return fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])


def missing_data_request() -> dict[str, Any]:
    request = warning_request()
    del request["prefetch"]["conditions"]
    return request


FEEDBACK_ITEM = {"card": "card-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:05:31Z"}

ANSWERS = [
    pytest.param("GET", "/cds-services", None, None, "application/json", 200, id="discovery-200"),
    pytest.param("GET", "/healthz", None, None, "application/json", 200, id="healthz-200"),
    pytest.param("GET", "/metrics", None, None, "application/json", 200, id="metrics-200"),
    pytest.param("POST", HOOK, SERVICE_ID, warning_request(), "application/json", 200, id="hook-200"),
    pytest.param(
        "POST",
        HOOK,
        SERVICE_ID,
        {"hook": "patient-view"},
        "application/json",
        400,
        id="hook-400",
    ),
    pytest.param(
        "POST",
        HOOK,
        "no-such-service",
        warning_request(),
        "application/json",
        404,
        id="hook-404",
    ),
    pytest.param(
        "POST",
        HOOK,
        SERVICE_ID,
        missing_data_request(),
        "application/json",
        412,
        id="hook-412",
    ),
    pytest.param("POST", HOOK, SERVICE_ID, "plain text", "text/plain", 415, id="hook-415"),
    pytest.param(
        "POST",
        FEEDBACK,
        SERVICE_ID,
        {"feedback": [FEEDBACK_ITEM]},
        "application/json",
        200,
        id="feedback-200",
    ),
    pytest.param(
        "POST",
        FEEDBACK,
        SERVICE_ID,
        {"feedback": []},
        "application/json",
        400,
        id="feedback-400",
    ),
]


@pytest.mark.parametrize(("method", "path", "service_id", "body", "media_type", "status"), ANSWERS)
def test_answers_are_documented(
    method: str, path: str, service_id: str | None, body: Any, media_type: str, status: int
) -> None:
    """The service's real answers, one of each kind, checked against what the document declares."""
    operation = schema[path][method]
    case = operation.Case(
        path_parameters={"service_id": service_id} if service_id else None,
        body=body if body is not None else schemathesis.core.NOT_SET,
        media_type=media_type if body is not None else None,
    )
    response = case.call()
    assert response.status_code == status, response.text
    case.validate_response(response, checks=CONFORMANCE)
