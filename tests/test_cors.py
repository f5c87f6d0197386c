"""CORS for browser CDS clients (docs/cds-hooks-conformance.md §1.8 "CORS", §5.6), against the real `mscc-alert serve`.

The CDS Hooks sandbox sends `Authorization`, so the browser preflights discovery and every service call.
The preflights replayed here are the ones the sandbox really sent (observed-client-requests/
http-exchange-log.json, from Origin http://localhost:8080). Allowed origins get their own origin echoed,
never `*`; other origins get no Access-Control-Allow-Origin at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

import cards.evaluate
from cds_hooks.protocol.app import create_app
from cds_hooks.settings import Settings
from tests.conftest import SERVICE_ID, TEST_DATA, LiveService, start_live_service, stop_live_service
from tests.scenarios.fhir_builders import back_pain, breast_cancer, hook_request, patient

pytestmark = pytest.mark.e2e  # starts servers or subprocesses

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{SERVICE_PATH}/feedback"
EXCHANGE_LOG = TEST_DATA / "cds-hooks-examples/observed-client-requests/http-exchange-log.json"
SANDBOX_DEV_ORIGIN = "http://localhost:8080"
ALLOWED = [
    "https://sandbox.cds-hooks.org",
    "http://127.0.0.1:5173",
    "http://localhost:8080",
    "http://localhost",
    "http://[::1]:3000",
]
REFUSED = [
    "https://evil.example",
    "http://localhost.evil.example",
    "http://127.0.0.1.evil.example:8080",
    "https://sandbox.cds-hooks.org.evil.example",
    "http://sandbox.cds-hooks.org",
    "null",
]
HOP_BY_HOP = {"host", "connection", "content-length"}


def logged_preflights() -> list[tuple[str, dict[str, str]]]:
    """(our path, headers) of each OPTIONS the sandbox sent; its service id `probe` becomes ours."""
    exchanges = json.loads(Path(EXCHANGE_LOG).read_text())
    preflights = []
    for exchange in exchanges:
        if exchange["method"] == "OPTIONS":
            path = exchange["path"].replace("/cds-services/probe", SERVICE_PATH)
            headers = {k: v for k, v in exchange["headers"].items() if k.lower() not in HOP_BY_HOP}
            preflights.append((path, headers))
    return preflights


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }


def assert_allowed(response: requests.Response, origin: str) -> None:
    headers = response.headers
    assert headers.get("access-control-allow-origin") == origin, dict(headers)
    assert "origin" in [v.strip().lower() for v in headers.get("vary", "").split(",")], "caches must vary on Origin"
    assert not (
        headers.get("access-control-allow-origin") == "*" and headers.get("access-control-allow-credentials") == "true"
    )


def assert_preflight_allowed(response: requests.Response, origin: str, method: str) -> None:
    assert response.status_code in (200, 204), response.text[:300]
    assert_allowed(response, origin)
    methods = [m.strip() for m in response.headers.get("access-control-allow-methods", "").split(",")]
    assert method in methods
    allowed_headers = {h.strip().lower() for h in response.headers.get("access-control-allow-headers", "").split(",")}
    assert {"authorization", "content-type"} <= allowed_headers


def warning_request() -> dict[str, Any]:
    return hook_request(patient(), conditions=[breast_cancer(), back_pain()])


def test_the_log_holds_the_sandbox_preflights() -> None:
    assert [path for path, _ in logged_preflights()] == ["/cds-services", SERVICE_PATH]


@pytest.mark.parametrize(("path", "headers"), logged_preflights(), ids=["discovery", "service"])
def test_replayed_sandbox_preflight_is_allowed(live_service: LiveService, path: str, headers: dict[str, str]) -> None:
    response = live_service.session.options(live_service.url(path), headers=headers, timeout=30)
    assert_preflight_allowed(response, headers["Origin"], headers["Access-Control-Request-Method"])


def test_feedback_preflight_is_allowed(live_service: LiveService) -> None:
    _, headers = logged_preflights()[1]  # the sandbox preflights feedback exactly as a service call
    response = live_service.session.options(live_service.url(FEEDBACK_PATH), headers=headers, timeout=30)
    assert_preflight_allowed(response, SANDBOX_DEV_ORIGIN, "POST")


@pytest.mark.parametrize("origin", ALLOWED)
@pytest.mark.parametrize(
    ("path", "method"), [("/cds-services", "GET"), (SERVICE_PATH, "POST"), (FEEDBACK_PATH, "POST")]
)
def test_allowed_origin_preflight(live_service: LiveService, origin: str, path: str, method: str) -> None:
    response = live_service.session.options(
        live_service.url(path), headers=preflight_headers(origin, method), timeout=30
    )
    assert_preflight_allowed(response, origin, method)


@pytest.mark.parametrize("origin", REFUSED)
@pytest.mark.parametrize("path", ["/cds-services", SERVICE_PATH, FEEDBACK_PATH])
def test_other_origin_preflight_is_refused(live_service: LiveService, origin: str, path: str) -> None:
    response = live_service.session.options(live_service.url(path), headers=preflight_headers(origin), timeout=30)
    assert "access-control-allow-origin" not in response.headers
    assert response.status_code >= 400


@pytest.mark.parametrize("origin", ALLOWED)
def test_actual_responses_carry_the_origin(live_service: LiveService, origin: str) -> None:
    session = live_service.session
    discovery = session.get(live_service.url("/cds-services"), headers={"Origin": origin}, timeout=30)
    assert discovery.status_code == 200
    assert_allowed(discovery, origin)
    call = session.post(live_service.url(SERVICE_PATH), json=warning_request(), headers={"Origin": origin}, timeout=30)
    assert call.status_code == 200 and call.json()["cards"]
    assert_allowed(call, origin)


def test_error_responses_carry_the_origin(live_service: LiveService) -> None:
    """A browser client can only read the OperationOutcome of a 4xx if the 4xx carries the header too."""
    missing = warning_request()
    del missing["prefetch"]["conditions"]
    for response in (
        live_service.session.post(
            live_service.url(SERVICE_PATH),
            data=b"{",
            timeout=30,
            headers={"Origin": SANDBOX_DEV_ORIGIN, "Content-Type": "application/json"},
        ),
        live_service.session.post(
            live_service.url(SERVICE_PATH), json=missing, timeout=30, headers={"Origin": SANDBOX_DEV_ORIGIN}
        ),
        live_service.session.get(live_service.url(SERVICE_PATH), headers={"Origin": SANDBOX_DEV_ORIGIN}, timeout=30),
    ):
        assert response.status_code in (400, 405, 412)
        assert_allowed(response, SANDBOX_DEV_ORIGIN)


@pytest.mark.parametrize("origin", REFUSED)
def test_actual_responses_for_other_origins_carry_no_origin(live_service: LiveService, origin: str) -> None:
    call = live_service.session.post(
        live_service.url(SERVICE_PATH), json=warning_request(), headers={"Origin": origin}, timeout=30
    )
    assert "access-control-allow-origin" not in call.headers


def test_internal_error_response_carries_the_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("forced")

    monkeypatch.setattr(cards.evaluate, "decide", explode)
    app = create_app(Settings(database_url="memory://"))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(SERVICE_PATH, json=warning_request(), headers={"Origin": SANDBOX_DEV_ORIGIN})
    assert response.status_code == 500
    assert response.headers.get("access-control-allow-origin") == SANDBOX_DEV_ORIGIN


# --- MSCC_ALERT_CORS_ORIGINS ------------------------------------------------------------------------------------
EHR_ORIGINS = ("https://ehr.example.org", "https://portal.example.net:8443")


@pytest.fixture(scope="module")
def configured_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    service = start_live_service(tmp_path_factory.mktemp("cors"), {"MSCC_ALERT_CORS_ORIGINS": ",".join(EHR_ORIGINS)})
    yield service
    stop_live_service(service)


@pytest.mark.parametrize("origin", EHR_ORIGINS)
def test_configured_origins_are_allowed(configured_service: LiveService, origin: str) -> None:
    response = configured_service.session.options(
        configured_service.url(SERVICE_PATH), headers=preflight_headers(origin), timeout=30
    )
    assert_preflight_allowed(response, origin, "POST")


@pytest.mark.parametrize("origin", ["https://sandbox.cds-hooks.org", "https://evil.example"])
def test_configured_origins_replace_the_default_list(configured_service: LiveService, origin: str) -> None:
    response = configured_service.session.options(
        configured_service.url(SERVICE_PATH), headers=preflight_headers(origin), timeout=30
    )
    assert "access-control-allow-origin" not in response.headers
