"""Every way a hook call can go wrong, over real HTTP: status code, OperationOutcome body, content type.

docs/cds-hooks-conformance.md §5.1: 400 for a malformed body (never 404), 404 for an unknown id, 412 for missing
data, and (3.0 SHOULD, our rule) an OperationOutcome body on every non-2xx. The error matrix runs against the real
`mscc-alert serve` (`live_service`); only the forced internal error runs in-process, because it needs a
monkeypatch. `assert_operation_outcome` is the error contract the other protocol test files share.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

import cards.evaluate
from cds_hooks.protocol.app import create_app
from cds_hooks.services.registry import SERVICES
from cds_hooks.settings import Settings
from tests.conftest import SERVICE_ID, LiveService, free_port, start_live_service, stop_live_service
from tests.scenarios.fhir_builders import JSON, PATIENT_ID, back_pain, breast_cancer, hook_request, patient

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": "application/json"}
SMALL_LIMIT = 10_000


def assert_operation_outcome(response: Any, status: int, *mentions: str) -> JSON:
    """The error contract: `status`, an application/fhir+json OperationOutcome whose first issue has a
    severity, a code and diagnostics, and whose diagnostics or expression name each of `mentions`."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:800]}"
    assert response.headers.get("content-type", "").split(";")[0].strip() == FHIR_JSON
    body: JSON = response.json()
    assert body.get("resourceType") == "OperationOutcome", body
    issue = body["issue"][0]
    for field in ("severity", "code", "diagnostics"):
        assert isinstance(issue.get(field), str) and issue[field].strip(), f"issue[0].{field} is empty: {issue}"
    assert issue["severity"] in ("fatal", "error", "warning", "information")
    said = issue["diagnostics"] + " " + " ".join(issue.get("expression", []))
    for mention in mentions:
        assert mention in said, f"{mention!r} not named in {said!r}"
    return body


def valid_request() -> JSON:
    """Breast cancer + new back pain with all nine keys prefetched: a warning card, no fetching."""
    return hook_request(patient(), conditions=[breast_cancer(), back_pain()])


def without(field: str) -> bytes:
    body = valid_request()
    *parents, last = field.split(".")
    target = body
    for name in parents:
        target = target[name]
    del target[last]
    return json.dumps(body).encode()


def changed(**fields: Any) -> bytes:
    """The valid request with fields replaced; a dotted name (`context__patientId`) reaches inside."""
    body = valid_request()
    for name, value in fields.items():
        *parents, last = name.split("__")
        target = body
        for parent in parents:
            target = target[parent]
        target[last] = value
    return json.dumps(body).encode()


def nested_prefetch(depth: int) -> bytes:
    head = b'{"hook":"patient-view","hookInstance":"deep-1","context":{"patientId":"p1"},"prefetch":{"patient":'
    return head + b"[" * depth + b"]" * depth + b"}}"


CLOSED_FHIR_SERVER = f"http://127.0.0.1:{free_port()}/fhir"
AUTHORIZATION = {
    "access_token": "opaque-token-1",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/*.read",
    "subject": "mscc-alert",
}

BAD_REQUESTS = [
    pytest.param(b'{"hook": "patient-view",', "JSON", id="not-json"),
    pytest.param(b"", "JSON", id="empty-body"),
    pytest.param(b"[]", "object", id="json-array"),
    pytest.param(json.dumps([valid_request()]).encode(), "object", id="json-array-holding-a-request"),
    pytest.param(b'"patient-view"', "object", id="json-string"),
    pytest.param(b"null", "object", id="json-null"),
    pytest.param(b"{}", "hook", id="empty-object"),
    pytest.param(without("hook"), "hook", id="missing-hook"),
    pytest.param(without("hookInstance"), "hookInstance", id="missing-hookInstance"),
    pytest.param(without("context"), "context", id="missing-context"),
    pytest.param(without("context.patientId"), "patientId", id="missing-context.patientId"),
    pytest.param(changed(context=[]), "context", id="context-not-an-object"),
    pytest.param(changed(hookInstance=""), "hookInstance", id="empty-hookInstance"),
    pytest.param(changed(context__patientId="../Patient/1"), "patientId", id="patientId-path"),
    pytest.param(changed(context__patientId="pat 1"), "patientId", id="patientId-space"),
    pytest.param(changed(context__patientId="x" * 65), "patientId", id="patientId-too-long"),
    pytest.param(changed(context__patientId=""), "patientId", id="patientId-empty"),
    pytest.param(changed(context__patientId=12345), "patientId", id="patientId-number"),
    pytest.param(changed(hook="order-sign"), "hook", id="wrong-hook-order-sign"),
    pytest.param(changed(fhirAuthorization=AUTHORIZATION), "fhirServer", id="fhirAuthorization-without-fhirServer"),
    pytest.param(changed(fhirServer="not a url"), "fhirServer", id="fhirServer-not-a-url"),
    pytest.param(changed(fhirServer="ftp://127.0.0.1/fhir"), "fhirServer", id="fhirServer-ftp"),
    pytest.param(
        changed(fhirServer=CLOSED_FHIR_SERVER, fhirAuthorization={"token_type": "Bearer"}),
        "access_token",
        id="fhirAuthorization-without-access_token",
    ),
    pytest.param(changed(prefetch=[]), "prefetch", id="prefetch-not-an-object"),
    pytest.param(
        b'{"hook": "patient-view\xff", "hookInstance": "u1", "context": {"patientId": "p1"}}',
        "",
        id="invalid-utf8",
    ),
    pytest.param(
        nested_prefetch(1000),
        "",
        id="nested-1000-deep",
    ),
]


def post(
    live: LiveService, path: str, body: bytes | Iterator[bytes], headers: dict[str, str] | None = None
) -> requests.Response:
    return live.session.post(
        live.url(path), data=body, headers=JSON_HEADERS if headers is None else headers, timeout=30
    )


@pytest.mark.parametrize(("body", "mention"), BAD_REQUESTS)
def test_malformed_request_is_400(live_service: LiveService, body: bytes, mention: str) -> None:
    assert_operation_outcome(post(live_service, SERVICE_PATH, body), 400, mention)


def test_wrong_hook_names_both_hooks(live_service: LiveService) -> None:
    body = assert_operation_outcome(post(live_service, SERVICE_PATH, changed(hook="order-sign")), 400)
    assert "patient-view" in body["issue"][0]["diagnostics"]
    assert "order-sign" in body["issue"][0]["diagnostics"]


def test_unknown_service_id_is_404(live_service: LiveService) -> None:
    response = post(live_service, "/cds-services/no-such-service", json.dumps(valid_request()).encode())
    assert_operation_outcome(response, 404, "/cds-services")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nowhere"),
        ("GET", "/cds-services/breast-cancer-back-pain/feedback/extra"),
        ("POST", "/cds-services/breast-cancer-back-pain/nowhere"),
        ("GET", "/.well-known/cds-services"),  # the pre-1.0 discovery path (docs/cds-hooks-conformance.md §1.2)
    ],
)
def test_unknown_path_is_404(live_service: LiveService, method: str, path: str) -> None:
    response = live_service.session.request(method, live_service.url(path), timeout=30)
    assert_operation_outcome(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", SERVICE_PATH, "POST"),
        ("PUT", SERVICE_PATH, "POST"),
        ("DELETE", SERVICE_PATH, "POST"),
        ("PATCH", SERVICE_PATH, "POST"),
        ("POST", "/cds-services", "GET"),
        ("DELETE", "/cds-services", "GET"),
        ("GET", f"{SERVICE_PATH}/feedback", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(live_service: LiveService, method: str, path: str, allowed: str) -> None:
    response = live_service.session.request(
        method, live_service.url(path), data=b"{}", headers=JSON_HEADERS, timeout=30
    )
    assert_operation_outcome(response, 405, method)
    assert allowed in [m.strip() for m in response.headers.get("allow", "").split(",")]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        None,
    ],
)
@pytest.mark.parametrize("path", [SERVICE_PATH, f"{SERVICE_PATH}/feedback"])
def test_non_json_content_type_is_415(live_service: LiveService, path: str, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = post(live_service, path, json.dumps(valid_request()).encode(), headers)
    assert_operation_outcome(response, 415, "Content-Type")


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/fhir+json", "Application/JSON"]
)
def test_json_content_types_are_accepted(live_service: LiveService, content_type: str) -> None:
    response = post(live_service, SERVICE_PATH, json.dumps(valid_request()).encode(), {"Content-Type": content_type})
    assert response.status_code == 200, response.text[:500]
    assert [card["indicator"] for card in response.json()["cards"]] == ["warning"]


def test_unknown_extra_fields_are_tolerated(live_service: LiveService) -> None:
    body = valid_request()
    body["extension"] = {"com.example.timestamp": "2017-11-27T22:13:25Z"}
    body["com.example.unknown"] = [1, 2, 3]
    body["context"]["encounterId"] = "enc-1"
    body["context"]["com.example.context-extra"] = {"anything": True}
    # fhirAuthorization needs fhirServer (cds-r-1); every key is prefetched, so the closed port is never called.
    body["fhirServer"] = CLOSED_FHIR_SERVER
    body["fhirAuthorization"] = {**AUTHORIZATION, "patient": PATIENT_ID, "com.example.auth-extra": "x"}
    response = post(live_service, SERVICE_PATH, json.dumps(body).encode())
    assert response.status_code == 200, response.text[:500]
    assert [card["indicator"] for card in response.json()["cards"]] == ["warning"]


# --- 413: a live service with a small body limit -----------------------------------------------------------
@pytest.fixture(scope="module")
def small_limit_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    service = start_live_service(
        tmp_path_factory.mktemp("small-limit"), {"MSCC_ALERT_MAX_BODY_BYTES": str(SMALL_LIMIT)}
    )
    yield service
    stop_live_service(service)


def padded_request(size: int) -> bytes:
    """A valid request padded (in a tolerated extension) to exactly `size` bytes."""
    body = valid_request()
    body["extension"] = {"com.example.padding": ""}
    base = len(json.dumps(body).encode())
    body["extension"]["com.example.padding"] = "x" * (size - base)
    encoded = json.dumps(body).encode()
    assert len(encoded) == size
    return encoded


def test_body_under_the_limit_is_evaluated(small_limit_service: LiveService) -> None:
    response = post(small_limit_service, SERVICE_PATH, padded_request(SMALL_LIMIT))
    assert response.status_code == 200, response.text[:500]
    assert [card["indicator"] for card in response.json()["cards"]] == ["warning"]


def test_body_over_the_limit_with_content_length_is_413(small_limit_service: LiveService) -> None:
    body = padded_request(2 * SMALL_LIMIT)
    response = post(small_limit_service, SERVICE_PATH, body)
    assert response.request.headers["Content-Length"] == str(len(body))
    assert_operation_outcome(response, 413, str(SMALL_LIMIT))


def test_chunked_body_over_the_limit_is_413(small_limit_service: LiveService) -> None:
    body = padded_request(2 * SMALL_LIMIT)
    chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
    response = post(small_limit_service, SERVICE_PATH, chunks)  # a generator: sent chunked, no Content-Length
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert_operation_outcome(response, 413, str(SMALL_LIMIT))


def test_small_limit_service_still_serves_after_413(small_limit_service: LiveService) -> None:
    post(small_limit_service, SERVICE_PATH, padded_request(3 * SMALL_LIMIT))
    assert small_limit_service.session.get(small_limit_service.url("/cds-services"), timeout=30).status_code == 200
    assert post(small_limit_service, SERVICE_PATH, padded_request(SMALL_LIMIT // 2)).status_code == 200


# --- 500: forced in-process ----------------------------------------------------------------------------------
def test_internal_error_is_500_operation_outcome_logged_without_content(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    leaked = "Jane Q Public MRN-0451-77"

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"could not decide for {leaked}")  # as if a message quoted resource content

    monkeypatch.setattr(cards.evaluate, "decide", explode)
    body = valid_request()
    app = create_app(Settings(database_url="memory://"))
    with caplog.at_level(logging.INFO), TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(SERVICE_PATH, json=body)

    outcome = assert_operation_outcome(response, 500)
    assert "cards" not in outcome
    assert outcome["issue"][0]["severity"] == "fatal"
    assert leaked not in response.text
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors, "the internal error was not logged"
    assert any(getattr(record, "hook_instance", None) == body["hookInstance"] for record in errors)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert leaked not in logged
    assert PATIENT_ID not in logged


# --- and after all that, the service is still there -----------------------------------------------------------
def test_live_service_still_serves_after_garbage(live_service: LiveService) -> None:
    garbage: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", SERVICE_PATH, bytes(range(256)) * 40, JSON_HEADERS),
        ("POST", SERVICE_PATH, b"{" * 50_000, JSON_HEADERS),
        ("POST", SERVICE_PATH, nested_prefetch(5000), JSON_HEADERS),
        ("POST", SERVICE_PATH, b"\x00" * 1000, {"Content-Type": "application/octet-stream"}),
        ("POST", "/cds-services", b"{}", JSON_HEADERS),
        ("PUT", SERVICE_PATH, b"garbage", {}),
        ("POST", f"{SERVICE_PATH}/feedback", b'{"feedback": "nope"}', JSON_HEADERS),
    ]
    for method, path, body, headers in garbage:
        response = live_service.session.request(method, live_service.url(path), data=body, headers=headers, timeout=30)
        assert 400 <= response.status_code < 600
        assert response.json()["resourceType"] == "OperationOutcome"

    discovery = live_service.session.get(live_service.url("/cds-services"), timeout=30)
    assert discovery.status_code == 200
    assert [s["id"] for s in discovery.json()["services"]] == [cls.id for cls in SERVICES]
    response = post(live_service, SERVICE_PATH, json.dumps(valid_request()).encode())
    assert response.status_code == 200
    assert [card["indicator"] for card in response.json()["cards"]] == ["warning"]
    assert live_service.process.poll() is None
