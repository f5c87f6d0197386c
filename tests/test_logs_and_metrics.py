"""The running service's log and /metrics after a full scenario: no PHI and no tokens in the log, one
structured JSON line per request, and Prometheus metrics that count what happened.

The scenario, all against one `mscc-alert serve` with MSCC_ALERT_LOG_FORMAT=json, MSCC_ALERT_LOG_LEVEL=DEBUG
and a trusted issuer whose FHIR servers are configured:
a patient with distinctive identifying data (name, id, MRN, birth date, phone) whose chart fires a warning,
sent once as prefetch and once through a loopback FHIR server that requires the hook's access token; then a
400 (truncated JSON full of PHI), a 412 (missing data, no fhirServer), a 412 from a failing FHIR server,
and a 401 (an expired JWT). Every JWT and the access token are then searched for in the log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from tests.conftest import SERVICE_ID, LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb
from tests.test_auth_e2e import (
    ISSUER,
    JWKS_PATH,
    Signer,
    log_records,
    request_records,
    send,
    send_logged,
)

pytestmark = pytest.mark.e2e  # starts servers or subprocesses

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
HOOK_ROUTE = "/cds-services/{service_id}"
FHIR_PATH = "/fhir"
BROKEN_FHIR_PATH = "/broken-fhir"

GIVEN, FAMILY = "Zebulonia", "Quixotelle"
PATIENT_ID = "zq-7f3a91c2"
MRN = "MRN-58291734"
BIRTH_DATE = "1961-03-17"
PHONE = "+1-555-014-2977"
PHI = (GIVEN, FAMILY, PATIENT_ID, MRN, "58291734", BIRTH_DATE, PHONE)


def identified_patient() -> dict[str, Any]:
    patient = fb.patient(patient_id=PATIENT_ID, birth_date=BIRTH_DATE)
    patient["name"] = [{"use": "official", "family": FAMILY, "given": [GIVEN]}]
    patient["identifier"] = [
        {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": MRN,
        }
    ]
    patient["telecom"] = [{"system": "phone", "value": PHONE}]
    return patient


def chart() -> dict[str, list[dict[str, Any]]]:
    """The patient's data by prefetch key: breast cancer history and new low back pain (a warning)."""
    return {"conditions": [fb.breast_cancer(patient_id=PATIENT_ID), fb.back_pain(patient_id=PATIENT_ID)]}


def fhir_json(document: dict[str, Any]) -> dict[str, Any]:
    return {"response_data": json.dumps(document), "content_type": "application/fhir+json"}


@dataclass
class Scenario:
    service: LiveService
    tokens: list[str] = field(default_factory=list)  # every JWT sent
    access_token: str = ""
    hook_instances: dict[str, str] = field(default_factory=dict)  # what -> hookInstance
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # what -> its log line
    statuses: dict[str, int] = field(default_factory=dict)  # what -> HTTP status


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP384R1()), "ec-logs-1", "ES384")


@pytest.fixture(scope="module")
def loopback(signer: Signer) -> Iterator[HTTPServer]:
    """The issuer's JWKS, a FHIR server that wants the hook's access token, and a FHIR server that fails."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request(JWKS_PATH).respond_with_json({"keys": [signer.public_jwk()]})
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, signer: Signer, loopback: HTTPServer) -> Iterator[Scenario]:
    service = start_live_service(
        tmp_path_factory.mktemp("logs"),
        {
            "MSCC_ALERT_TRUSTED_ISSUERS": json.dumps({ISSUER: {
                "jwks_url": loopback.url_for(JWKS_PATH),
                "fhir_servers": [loopback.url_for(FHIR_PATH), loopback.url_for(BROKEN_FHIR_PATH)],
            }}),
            "MSCC_ALERT_LOG_FORMAT": "json",
            # The most a log can say: the HTTP client libraries log request URLs (patient ids) at DEBUG.
            "MSCC_ALERT_LOG_LEVEL": "DEBUG",
        },
    )
    run = Scenario(service, access_token=f"tok-{uuid.uuid4()}")

    access = {"Authorization": f"Bearer {run.access_token}"}
    loopback.expect_request(f"{FHIR_PATH}/Patient/{PATIENT_ID}", headers=access).respond_with_data(
        **fhir_json(identified_patient())
    )
    for resource_type, key in fb.KEY_BY_RESOURCE_TYPE.items():
        loopback.expect_request(f"{FHIR_PATH}/{resource_type}", headers=access).respond_with_data(
            **fhir_json(fb.searchset(chart().get(key, [])))
        )
    loopback.expect_request(f"{BROKEN_FHIR_PATH}/Condition").respond_with_data("overloaded", status=503)

    def hook(what: str, body: dict[str, Any] | bytes, *, token: str | None = None) -> None:
        if token is None:
            token = signer.token(service.url(SERVICE_PATH))
        run.tokens.append(token)
        if isinstance(body, dict):
            run.hook_instances[what] = body["hookInstance"]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response, record = send_logged(
            service,
            "POST",
            SERVICE_PATH,
            data=data,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        run.records[what], run.statuses[what] = record, response.status_code

    try:
        prefetched = fb.hook_request(identified_patient(), **chart())
        hook("prefetch", prefetched)

        fetched = fb.hook_request(None, patient_id=PATIENT_ID)
        del fetched["prefetch"]
        fetched["fhirServer"] = loopback.url_for(FHIR_PATH)
        fetched["fhirAuthorization"] = {
            "access_token": run.access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": SERVICE_ID,
        }
        hook("fhir-server", fetched)

        truncated = json.dumps(fb.hook_request(identified_patient(), **chart())).encode()
        hook("400", truncated[: len(truncated) // 2])

        missing = fb.hook_request(identified_patient(), **chart())
        del missing["prefetch"]["conditions"]
        hook("412", missing)

        failing = fb.hook_request(identified_patient(), **chart())
        del failing["prefetch"]["conditions"]
        failing["fhirServer"] = loopback.url_for(BROKEN_FHIR_PATH)
        failing["fhirAuthorization"] = {"access_token": run.access_token, "token_type": "Bearer"}
        hook("412-fetch-failed", failing)

        expired = signer.token(service.url(SERVICE_PATH), iat=1_700_000_000, exp=1_700_000_300)
        hook("401", fb.hook_request(identified_patient(), **chart()), token=expired)

        discovery_token = signer.token(service.url("/cds-services"))
        run.tokens.append(discovery_token)
        response, run.records["discovery"] = send_logged(
            service, "GET", "/cds-services", headers={"Authorization": f"Bearer {discovery_token}"}
        )
        run.statuses["discovery"] = response.status_code
        yield run
    finally:
        stop_live_service(service)


def test_scenario_did_what_it_says(scenario: Scenario) -> None:
    assert scenario.statuses == {
        "prefetch": 200,
        "fhir-server": 200,
        "400": 400,
        "412": 412,
        "412-fetch-failed": 412,
        "401": 401,
        "discovery": 200,
    }
    assert scenario.records["prefetch"]["indicator"] == "warning"
    assert scenario.records["fhir-server"]["indicator"] == "warning"


def test_log_holds_no_phi_and_no_token(scenario: Scenario) -> None:
    log = scenario.service.logs()
    assert len(request_records(scenario.service)) == len(scenario.statuses)
    secrets = [*PHI, scenario.access_token, scenario.access_token.removeprefix("tok-")]
    for token in scenario.tokens:
        _header, payload, signature = token.split(".")
        secrets += [token, signature, payload]
    for secret in secrets:
        assert secret not in log, f"{secret!r} is in the service log"


def test_every_log_line_is_json(scenario: Scenario) -> None:
    lines = [line for line in scenario.service.logs().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= record.keys()


def test_one_request_line_per_request_with_its_fields(scenario: Scenario) -> None:
    for what, record in scenario.records.items():
        assert record["status"] == scenario.statuses[what], what
        assert isinstance(record["latency_ms"], int | float) and record["latency_ms"] >= 0
        assert record["method"] in ("GET", "POST")
        if what == "discovery":
            assert record["route"] == "/cds-services"
            assert record["issuer"] == ISSUER
            continue
        assert record["route"] == HOOK_ROUTE
        assert record["service_id"] == SERVICE_ID
        if what in scenario.hook_instances and what not in ("400", "401"):
            assert record["hook_instance"] == scenario.hook_instances[what], what
        if record["status"] == 200:
            assert (record["cards"], record["indicator"], record["issuer"]) == (1, "warning", ISSUER)
            assert isinstance(record["jti"], str)


def test_fetched_keys_are_logged_by_name(scenario: Scenario) -> None:
    assert sorted(scenario.records["fhir-server"]["fetched_keys"].split(",")) == sorted(fb.PREFETCH_KEYS)
    assert "fetched_keys" not in scenario.records["prefetch"]


def test_refusals_say_why_in_the_log_only(scenario: Scenario) -> None:
    assert scenario.records["401"]["reason"] == "auth: expired"
    assert scenario.records["412"]["reason"] == "precondition-failed"
    # Why the fetch failed is in the log (key, reason, status), and only there.
    assert scenario.records["412-fetch-failed"]["fetch_errors"] == "conditions:server-error:503"
    assert "hook_instance" not in scenario.records["400"]  # the body was never decoded


def test_412_logs_the_keys_it_could_not_obtain_by_name_only(scenario: Scenario) -> None:
    for what in ("412", "412-fetch-failed"):
        keys = scenario.records[what]["failed_keys"].split(",")
        assert keys and set(keys) <= set(fb.PREFETCH_KEYS), what
    assert "fhirServer" not in scenario.service.logs() and "not provided" not in scenario.service.logs()


def test_start_is_logged_with_auth_mode(scenario: Scenario) -> None:
    starting = [r for r in log_records(scenario.service) if r["message"] == "starting"]
    assert len(starting) == 1
    assert (starting[0]["auth"], starting[0]["host"]) == ("jwt", "127.0.0.1")


# --- /metrics --------------------------------------------------------------------------------------------


def scrape(service: LiveService) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = send(service, "GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metrics(scenario: Scenario) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return scrape(scenario.service)


def test_requests_are_counted_by_route_and_status(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> None:
    counted = {
        status: value(metrics, "mscc_alert_requests_total", route=HOOK_ROUTE, method="POST", status=status)
        for status in ("200", "400", "401", "412", "500")
    }
    assert counted == {"200": 2, "400": 1, "401": 1, "412": 2, "500": 0}
    assert value(metrics, "mscc_alert_requests_total", route="/cds-services", method="GET", status="200") == 1


def test_latency_histogram(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in metrics.items()
        if name == "mscc_alert_request_seconds_bucket" and dict(labels)["route"] == HOOK_ROUTE
    )
    assert len(buckets) >= 5
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1] == (float("inf"), 6)
    assert value(metrics, "mscc_alert_request_seconds_count", route=HOOK_ROUTE) == 6
    assert value(metrics, "mscc_alert_request_seconds_sum", route=HOOK_ROUTE) > 0


def test_cards_are_counted_by_indicator(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    assert value(metrics, "mscc_alert_cards_total", indicator="warning") == 2
    assert value(metrics, "mscc_alert_cards_total", indicator="critical") == 0


def test_fhir_fetches_are_counted(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    assert value(metrics, "mscc_alert_fhir_fetches_total", outcome="ok") == len(fb.PREFETCH_KEYS)


def test_fhir_fetch_failures_are_counted(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    failed = sum(
        count
        for (name, labels), count in metrics.items()
        if name == "mscc_alert_fhir_fetches_total" and dict(labels).get("outcome") != "ok"
    )
    assert failed >= 1


def test_metrics_hold_no_phi_and_no_token(scenario: Scenario) -> None:
    text = requests.get(scenario.service.url("/metrics"), timeout=30).text
    for secret in (*PHI, scenario.access_token, *scenario.tokens):
        assert secret not in text


def test_text_log_format_holds_no_phi_either(tmp_path: Path) -> None:
    """The default (text) format goes through the same field allowlist."""
    service = start_live_service(tmp_path, {"MSCC_ALERT_LOG_FORMAT": "text"})
    try:
        body = json.dumps(fb.hook_request(identified_patient(), **chart())).encode()
        for data in (body, body[:-7]):
            send(service, "POST", SERVICE_PATH, data=data, headers={"Content-Type": "application/json"})
    finally:
        stop_live_service(service)  # a graceful stop: every line is written by then
    log = service.logs()
    assert log.count("route=/cds-services/{service_id}") == 2
    for secret in PHI:
        assert secret not in log


def test_client_strings_cannot_forge_or_flood_text_log_lines(tmp_path: Path) -> None:
    forged = "2026-11-21T06:00:00 INFO mscc_alert.http: request route=/cds-services method=GET status=200"
    request = fb.hook_request(fb.patient(), **chart())
    request["hookInstance"] = "abc\n" + forged
    request["prefetch"]["note\n" + forged] = None
    flood = fb.hook_request(fb.patient(), **chart())
    flood["hookInstance"] = "h" * 100_000
    service = start_live_service(tmp_path, {"MSCC_ALERT_LOG_FORMAT": "text"})
    try:
        for body in (request, flood):
            response = send(
                service,
                "POST",
                SERVICE_PATH,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 200
    finally:
        stop_live_service(service)
    lines = service.logs().splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert max(len(line) for line in lines) < 4096
