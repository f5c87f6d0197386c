"""Prefetch absent -> the service fetches from `fhirServer` (CDS Hooks 2.0 §Prefetch;
docs/cds-hooks-conformance.md §1.5, §5.3).

The FHIR server is real HTTP on loopback (`FhirTestServer`, on pytest-httpserver): it runs the service's own
template queries (search by patient and by `code`/`modality` tokens), pages its searchset Bundles with
relative and absolute `next` links, and answers 401 to anything without the right bearer token. The main
test runs both in-process and against the real `mscc-alert serve`. Other protocol tests import
`FhirTestServer` and `fallback_request` from here.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import SERVICE_ID, free_port
from tests.scenarios.fhir_builders import (
    CORD_COMPRESSION,
    HEART_RATE,
    JSON,
    KEY_BY_RESOURCE_TYPE,
    OTHER_PATIENT_ID,
    PREFETCH_KEYS,
    TAMOXIFEN,
    back_pain,
    breast_cancer,
    concept,
    condition,
    finding,
    medication_statement,
    observation,
    patient,
    searchset,
    snomed,
)
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response
from tests.test_hook_errors import assert_operation_outcome

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
TOKEN = "fhir-access-token-7c1e"
ALL_TYPES = {"Patient", *KEY_BY_RESOURCE_TYPE}
SEARCH_PARAMS = {"patient", "code", "modality", "reason-code", "_count"}
CONTINUATION = "_search"


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the FHIR server received."""

    resource_type: str
    args: dict[str, str]
    authorization: str | None
    status: int

    @property
    def first_page(self) -> bool:
        return CONTINUATION not in self.args


def _outcome(code: str, text: str) -> JSON:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _refers_to(resource: JSON, patient_id: str) -> bool:
    references = [resource.get(field, {}).get("reference", "") for field in ("subject", "patient")]
    return any(ref == f"Patient/{patient_id}" or ref.endswith(f"/Patient/{patient_id}") for ref in references)


def _codings(resource: JSON, param: str) -> list[JSON]:
    if param == "reason-code":
        return [c for reason in resource.get("reasonCode", []) for c in reason.get("coding", [])]
    if param == "modality":
        series = [s["modality"] for s in resource.get("series", []) if "modality" in s]
        return [*resource.get("modality", []), *series]
    code = resource.get("code", {})
    return code.get("coding", []) if isinstance(code, dict) else []


def _token_matches(codings: list[JSON], tokens: str) -> bool:
    """FHIR token search by equality: `system|code` or a bare `code`; a comma means OR."""
    for token in tokens.split(","):
        system, bar, code = token.rpartition("|")
        if any(str(c.get("code")) == code and (not bar or c.get("system") == system) for c in codings):
            return True
    return False


class FhirTestServer:
    """A small FHIR R4 server on loopback for the prefetch queries.

    Reads `Patient/<id>`; type-level searches by `patient` and the token params `code` and `modality`; unknown
    search parameters get 400, as a strict server answers. Searchset Bundles hold `page_size` entries, and
    their `next` links alternate relative (page 1) and absolute (page 2 on). With a `token`, a request
    without `Authorization: Bearer <token>` gets 401. `fail_with` answers every request with that status.
    """

    def __init__(
        self,
        httpserver: HTTPServer,
        resources: Iterable[JSON],
        *,
        token: str | None = None,
        page_size: int = 3,
        fail_with: int | None = None,
    ) -> None:
        self.resources = list(resources)
        self.token = token
        self.page_size = page_size
        self.fail_with = fail_with
        self.seen: list[Seen] = []
        self._searches: dict[str, tuple[str, list[JSON]]] = {}
        self._lock = threading.Lock()
        self.base_url = httpserver.url_for("/fhir")
        httpserver.expect_request(re.compile(r"^/fhir(/.*)?$")).respond_with_handler(self._handle)

    def first_page_types(self) -> list[str]:
        return sorted(s.resource_type for s in self.seen if s.first_page)

    def _handle(self, request: Request) -> Response:
        segments = request.path.removeprefix("/fhir").strip("/").split("/")
        authorization = request.headers.get("Authorization")
        status, body = self._answer(segments, dict(request.args), authorization)
        with self._lock:
            self.seen.append(Seen(segments[0], dict(request.args), authorization, status))
        return Response(json.dumps(body), status=status, content_type="application/fhir+json")

    def _answer(self, segments: list[str], args: dict[str, str], authorization: str | None) -> tuple[int, JSON]:
        if self.fail_with is not None:
            return self.fail_with, _outcome("exception", "the test server is failing on purpose")
        if self.token is not None and authorization != f"Bearer {self.token}":
            return 401, _outcome("login", "a valid bearer token is required")
        if len(segments) == 2 and segments[0] == "Patient":
            found = [r for r in self.resources if r["resourceType"] == "Patient" and r.get("id") == segments[1]]
            return (200, found[0]) if found else (404, _outcome("not-found", "no such Patient"))
        if len(segments) != 1:
            return 400, _outcome("not-supported", "only reads of Patient and type-level searches")
        if CONTINUATION in args:
            resource_type, matches = self._searches[args[CONTINUATION]]
            return 200, self._page(resource_type, matches, args[CONTINUATION], int(args["_offset"]))
        unknown = set(args) - SEARCH_PARAMS
        if unknown:
            return 400, _outcome("not-supported", f"unknown search parameters {sorted(unknown)}")
        return 200, self._search(segments[0], args)

    def _search(self, resource_type: str, args: dict[str, str]) -> JSON:
        patient_id = args.get("patient", "").removeprefix("Patient/")
        matches = [r for r in self.resources if r["resourceType"] == resource_type and _refers_to(r, patient_id)]
        for param in ("code", "modality", "reason-code"):
            if param in args:
                matches = [r for r in matches if _token_matches(_codings(r, param), args[param])]
        search_id = uuid.uuid4().hex
        with self._lock:
            self._searches[search_id] = (resource_type, matches)
        return self._page(resource_type, matches, search_id, 0)

    def _page(self, resource_type: str, matches: list[JSON], search_id: str, offset: int) -> JSON:
        bundle = searchset(matches[offset : offset + self.page_size])
        bundle["total"] = len(matches)
        following = offset + self.page_size
        if following < len(matches):
            relative = f"{resource_type}?{CONTINUATION}={search_id}&_offset={following}"
            bundle["link"] = [{"relation": "next", "url": relative if offset == 0 else f"{self.base_url}/{relative}"}]
        return bundle


def fallback_request(
    patient_id: str, fhir_server: str | None, *, token: str | None = None, prefetch: JSON | None = None
) -> JSON:
    """A patient-view request with no prefetch (or only `prefetch`), pointing at `fhir_server`."""
    body: JSON = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/fallback-clinician", "patientId": patient_id},
    }
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if token is not None:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "mscc-alert",
            "patient": patient_id,
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


# --- the charts the server holds -----------------------------------------------------------------------------
WARNING_ID = "fallback-warning-1"
CRITICAL_ID = "fallback-critical-2"
UNRELATED = [
    ("38341003", "Hypertensive disorder"),
    ("44054006", "Diabetes mellitus type 2"),
    ("195662009", "Acute viral pharyngitis"),
    ("10509002", "Acute bronchitis"),
    ("40055000", "Chronic sinusitis"),
]


def chart(patient_id: str, *extra: JSON) -> list[JSON]:
    """Breast cancer first, five unrelated Conditions, then `extra` and the new back pain last, so that with
    pages of three the pain is only on page three: a service that ignored `next` links would miss it."""
    unrelated = [
        condition(concept(snomed(code, display)), onset_days_ago=2000, patient_id=patient_id)
        for code, display in UNRELATED
    ]
    return [
        patient(patient_id=patient_id),
        breast_cancer(patient_id=patient_id),
        *unrelated,
        *extra,
        back_pain(patient_id=patient_id),
        medication_statement(TAMOXIFEN, effective_days_ago=900, patient_id=patient_id),
        observation(concept(HEART_RATE), category="vital-signs", patient_id=patient_id, valueQuantity={"value": 70}),
    ]


def charts() -> list[JSON]:
    other = [patient(patient_id=OTHER_PATIENT_ID), finding(CORD_COMPRESSION, patient_id=OTHER_PATIENT_ID)]
    return [*chart(WARNING_ID), *chart(CRITICAL_ID, finding(CORD_COMPRESSION, patient_id=CRITICAL_ID)), *other]


CallService = Callable[[JSON], Any]


@pytest.fixture(params=["in-process", "live"])
def call_service(request: pytest.FixtureRequest) -> CallService:
    if request.param == "in-process":
        client = request.getfixturevalue("service_client")
        return lambda body: client.post(SERVICE_PATH, json=body)
    live = request.getfixturevalue("live_service")
    return lambda body: live.session.post(live.url(SERVICE_PATH), json=body, timeout=60)


def indicators(response: Any, patient_id: str) -> list[str]:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:800]}"
    body = response.json()
    assert_valid_cds_response(body, patient_id=patient_id)
    return [card["indicator"] for card in body["cards"]]


@pytest.mark.parametrize(("patient_id", "expected"), [(WARNING_ID, "warning"), (CRITICAL_ID, "critical")])
def test_no_prefetch_fetches_every_key_with_the_token(
    httpserver: HTTPServer, call_service: CallService, patient_id: str, expected: str
) -> None:
    server = FhirTestServer(httpserver, charts(), token=TOKEN)
    response = call_service(fallback_request(patient_id, server.base_url, token=TOKEN))

    assert indicators(response, patient_id) == [expected]
    assert server.first_page_types() == sorted(ALL_TYPES)
    assert all(s.authorization == f"Bearer {TOKEN}" for s in server.seen), server.seen
    assert all(s.status == 200 for s in server.seen)
    assert all(
        s.args.get("patient") == patient_id for s in server.seen if s.first_page and s.resource_type != "Patient"
    )
    condition_pages = [s for s in server.seen if s.resource_type == "Condition"]
    assert sorted(s.args.get("_offset", "0") for s in condition_pages) == ["0", "3", "6"]


def test_observations_and_imaging_are_searched_by_code(httpserver: HTTPServer, service_client: Any) -> None:
    server = FhirTestServer(httpserver, charts(), token=TOKEN)
    indicators(
        service_client.post(SERVICE_PATH, json=fallback_request(WARNING_ID, server.base_url, token=TOKEN)), WARNING_ID
    )
    filters = {s.resource_type: set(s.args) - {"patient"} for s in server.seen if s.first_page}
    for resource_type in ("Observation", "ServiceRequest", "DiagnosticReport", "Procedure"):
        assert filters[resource_type] == {"code"}, resource_type
    assert filters["ImagingStudy"] == {"modality"}
    assert filters["Encounter"] == {"reason-code"}


def test_open_server_is_fetched_without_authorization(httpserver: HTTPServer, service_client: Any) -> None:
    server = FhirTestServer(httpserver, charts(), token=None)
    response = service_client.post(SERVICE_PATH, json=fallback_request(WARNING_ID, server.base_url))
    assert indicators(response, WARNING_ID) == ["warning"]
    assert server.first_page_types() == sorted(ALL_TYPES)
    assert [s.authorization for s in server.seen] == [None] * len(server.seen)


NETWORK_DETAIL = ("unauthorized", "401", "500", "server-error", "unreachable", "timeout", "refused", "closed")


def assert_no_network_detail(outcome: JSON) -> None:
    text = json.dumps(outcome).lower()
    for word in NETWORK_DETAIL:
        assert word not in text, f"{word!r} in {text[:300]}"


def test_wrong_token_is_412_that_names_no_status(httpserver: HTTPServer, service_client: Any) -> None:
    server = FhirTestServer(httpserver, charts(), token=TOKEN)
    wrong = "not-the-right-token-e93b"
    response = service_client.post(SERVICE_PATH, json=fallback_request(WARNING_ID, server.base_url, token=wrong))
    outcome = assert_operation_outcome(response, 412, "could not be fetched", "prefetch.conditions")
    assert wrong not in json.dumps(outcome)
    assert_no_network_detail(outcome)
    assert {s.status for s in server.seen} == {401}


def test_server_error_is_412(httpserver: HTTPServer, service_client: Any) -> None:
    server = FhirTestServer(httpserver, charts(), token=TOKEN, fail_with=500)
    response = service_client.post(SERVICE_PATH, json=fallback_request(WARNING_ID, server.base_url, token=TOKEN))
    assert_no_network_detail(assert_operation_outcome(response, 412, "could not be fetched", "prefetch.patient"))
    assert server.seen


def test_unreachable_server_is_412(service_client: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}/fhir"
    response = service_client.post(SERVICE_PATH, json=fallback_request(WARNING_ID, closed, token=TOKEN))
    outcome = assert_operation_outcome(response, 412, "could not be fetched", "prefetch.observations")
    assert_no_network_detail(outcome)
    # In the order discovery declares the keys, whichever fetch failed first.
    assert outcome["issue"][0]["expression"] == [f"prefetch.{key}" for key in PREFETCH_KEYS]


def test_only_the_missing_keys_are_fetched(httpserver: HTTPServer, service_client: Any) -> None:
    server = FhirTestServer(httpserver, charts(), token=TOKEN)
    chart_resources = chart(WARNING_ID)
    prefetch = {
        "patient": chart_resources[0],
        "conditions": searchset(r for r in chart_resources if r["resourceType"] == "Condition"),
    }
    body = fallback_request(WARNING_ID, server.base_url, token=TOKEN, prefetch=prefetch)
    assert indicators(service_client.post(SERVICE_PATH, json=body), WARNING_ID) == ["warning"]
    assert server.first_page_types() == sorted(ALL_TYPES - {"Patient", "Condition"})


def test_open_mode_list_replaces_the_loopback_default(httpserver: HTTPServer) -> None:
    """With MSCC_ALERT_FHIR_SERVERS set, a loopback server outside it is not contacted either."""
    from fastapi.testclient import TestClient

    from cds_hooks.protocol.app import create_app
    from cds_hooks.settings import Settings

    server = FhirTestServer(httpserver, charts(), token=TOKEN)
    listed = f"http://localhost:{httpserver.port}/fhir"
    assert server.base_url == listed
    app = create_app(Settings(database_url="memory://", fhir_servers=(listed,)))
    other_name = f"http://127.0.0.1:{httpserver.port}/fhir"  # the same listener by another name: not listed
    with TestClient(app) as client:
        refused = client.post(SERVICE_PATH, json=fallback_request(WARNING_ID, other_name, token=TOKEN))
        assert_operation_outcome(refused, 412, "not a FHIR server this client may name", "fhirServer")
        assert server.seen == []
        allowed = client.post(SERVICE_PATH, json=fallback_request(WARNING_ID, server.base_url, token=TOKEN))
        assert indicators(allowed, WARNING_ID) == ["warning"]


@pytest.mark.parametrize(("system", "expected"), [("http://snomed.info/sct", ["warning"]),
                                                   ("http://example.org/local-codes", [])])
def test_bare_code_filters_are_narrowed_by_system_in_the_service(
    httpserver: HTTPServer, service_client: Any, system: str, expected: list[str]
) -> None:
    """The templates' code filters carry no `system|` (to stay short), so a server also returns a local code
    that happens to equal one of ours. The service keeps only system + code matches: the same Backache code
    under a local system is fetched and then not read as back pain."""
    patient_id = "bare-code-3"
    backache = observation({"coding": [{"system": system, "code": "161891005"}]}, effective_days_ago=5,
                           patient_id=patient_id)
    server = FhirTestServer(httpserver, [patient(patient_id=patient_id), breast_cancer(patient_id=patient_id),
                                         backache], token=TOKEN)
    response = service_client.post(SERVICE_PATH, json=fallback_request(patient_id, server.base_url, token=TOKEN))
    assert indicators(response, patient_id) == expected
    observation_search = next(s for s in server.seen if s.resource_type == "Observation" and s.first_page)
    assert _token_matches(backache["code"]["coding"], observation_search.args["code"]), "the server returned it"
