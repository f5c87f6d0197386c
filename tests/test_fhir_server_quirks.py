"""Simpler FHIR servers: one that refuses our search filters (400) and one that lacks a resource type (404).

We filter what we fetch ourselves, so a refused filter is retried without it; a type the server does not offer
holds no data to miss, but only when the server answers other searches (a wrong base URL is still a 412).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

import orjson
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.scenarios import fhir_builders as fb

SERVICE = "/cds-services/breast-cancer-back-pain"


class SimpleServer:
    def __init__(self, httpserver: HTTPServer, resources: list[fb.JSON], *, refuse_filters: bool = False,
                 missing_types: frozenset[str] = frozenset()) -> None:
        self.resources = resources
        self.refuse_filters = refuse_filters
        self.missing_types = missing_types
        self.queries: list[tuple[str, int]] = []
        httpserver.expect_request(re.compile(r"^/fhir/.+$"), method="GET").respond_with_handler(self.handle)
        self.base_url = httpserver.url_for("/fhir")

    def handle(self, request: Request) -> Response:
        kind = request.path.removeprefix("/fhir/").split("/")
        params = parse_qs(request.query_string.decode())
        status, body = self.answer(kind, params)
        self.queries.append((request.path + ("?" + request.query_string.decode() if params else ""), status))
        return Response(orjson.dumps(body), status=status, content_type="application/fhir+json")

    def answer(self, kind: list[str], params: dict[str, list[str]]) -> tuple[int, Any]:
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]}
        if kind[0] in self.missing_types:
            return 404, outcome
        if len(kind) == 2:
            found = [r for r in self.resources if r["resourceType"] == kind[0] and r["id"] == kind[1]]
            return (200, found[0]) if found else (404, outcome)
        if self.refuse_filters and set(params) - {"patient"}:
            return 400, outcome
        matches = [r for r in self.resources if r["resourceType"] == kind[0]]
        return 200, {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in matches]}


def request_for(server: SimpleServer, *, with_patient: bool = False) -> fb.JSON:
    body = fb.hook_request(fb.patient())
    body["prefetch"] = {"patient": fb.patient()} if with_patient else {}
    body["fhirServer"] = server.base_url
    return body


def record() -> list[fb.JSON]:
    return [fb.patient(), fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()]


def test_a_refused_filter_is_retried_without_it(service_client: Any, httpserver: HTTPServer) -> None:
    server = SimpleServer(httpserver, record(), refuse_filters=True)
    response = service_client.post(SERVICE, json=request_for(server))
    assert response.status_code == 200, response.text
    assert response.json()["cards"][0]["indicator"] == "warning"
    refused = [q for q, status in server.queries if status == 400]
    assert refused and all("code=" in q or "modality=" in q for q in refused)
    assert any(q.startswith("/fhir/Observation?patient=") and "code=" not in q and s == 200
               for q, s in server.queries)


def test_a_resource_type_the_server_lacks_holds_no_data(service_client: Any, httpserver: HTTPServer) -> None:
    server = SimpleServer(httpserver, record(), missing_types=frozenset({"ImagingStudy", "MedicationStatement"}))
    response = service_client.post(SERVICE, json=request_for(server))
    assert response.status_code == 200, response.text
    assert response.json()["cards"][0]["indicator"] == "warning"


def test_a_server_that_answers_nothing_is_still_a_412(service_client: Any, httpserver: HTTPServer) -> None:
    every_type = frozenset({"Patient", *fb.KEY_BY_RESOURCE_TYPE})
    server = SimpleServer(httpserver, record(), missing_types=every_type)
    response = service_client.post(SERVICE, json=request_for(server, with_patient=True))
    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"
