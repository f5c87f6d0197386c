"""Bad input at every route: malformed, huge-ish, deeply nested and wrong-typed requests, random prefetch
values and resources, random feedback, random bytes. The answer must always be a 200 with a valid CDS Hooks
response or a 4xx with an OperationOutcome: never a 5xx.

Most tests run in-process (TestClient over the real app, server exceptions turned into 500s as in
production). Hypothesis runs derandomized with a bounded number of examples, so CI sees the same inputs on
every run. No request ever leaves the machine: the only fhirServer used is a closed loopback port.
The last test fires a few thousand malformed requests at a running `mscc-alert serve` and checks that it
still answers properly afterwards.
"""

from __future__ import annotations

import copy
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer

from cds_hooks.protocol.app import create_app
from cds_hooks.services.registry import SERVICES
from cds_hooks.settings import Settings
from tests.conftest import SERVICE_ID, LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb

pytestmark = pytest.mark.e2e  # slow: bounded Hypothesis runs (and one live flood)

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{SERVICE_PATH}/feedback"
POST_PATHS = (SERVICE_PATH, FEEDBACK_PATH)
ORDER_PATHS = tuple(f"/cds-services/{cls.id}" for cls in SERVICES if cls.hook in ("order-select", "order-sign"))
# Nothing listens on port 1: a fetch is refused at once and never leaves the machine.
CLOSED_LOOPBACK = "http://127.0.0.1:1/fhir"
INDICATORS = {"info", "warning", "critical"}

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

JSON = Any


# --- the app and what a good answer is --------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(
        Settings(database_url="memory://", fhir_connect_timeout=0.5, fhir_read_timeout=1.0, fhir_total_seconds=2.0)
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def assert_operation_outcome(body: JSON) -> None:
    assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", body
    assert isinstance(body["issue"], list) and body["issue"]
    for issue in body["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information")
        assert isinstance(issue["code"], str) and issue["code"]


def assert_cds_response(body: JSON) -> None:
    assert isinstance(body, dict) and isinstance(body.get("cards"), list), body
    for card in body["cards"]:
        assert isinstance(card["uuid"], str) and card["uuid"]
        assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
        assert card["indicator"] in INDICATORS
        assert isinstance(card["source"], dict) and isinstance(card["source"]["label"], str)
        for suggestion in card.get("suggestions", []):
            assert isinstance(suggestion["label"], str) and isinstance(suggestion["uuid"], str)


def assert_good_answer(response: Any, path: str) -> None:
    """200 with the route's valid body, or a 4xx OperationOutcome; never a 5xx."""
    status = response.status_code
    assert status < 500, f"{status} on {path}: {response.text[:500]}"
    body = response.json()
    if status == 200:
        if path in (SERVICE_PATH, *ORDER_PATHS):
            assert_cds_response(body)
        elif path == FEEDBACK_PATH:
            assert_operation_outcome(body)
        else:
            assert isinstance(body, dict)
        return
    assert 400 <= status < 500, status
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert_operation_outcome(body)


def no_outbound(body: JSON) -> JSON:
    """Point any fhirServer a generator made up at the closed loopback port."""
    if isinstance(body, dict) and isinstance(body.get("fhirServer"), str):
        try:
            parts = urlsplit(body["fhirServer"])
            hostname = parts.hostname
        except ValueError:  # the service refuses it with a 400 (the tests below check it does)
            return body
        if parts.scheme.lower() in ("http", "https") and hostname not in (None, "127.0.0.1", "localhost"):
            body = {**body, "fhirServer": CLOSED_LOOPBACK}
    return body


def post(client: TestClient, path: str, body: JSON | bytes, content_type: str = "application/json") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(no_outbound(body)).encode()
    return client.post(path, content=data, headers={"Content-Type": content_type})


def post_checked(client: TestClient, path: str, body: JSON | bytes) -> Any:
    response = post(client, path, body)
    assert_good_answer(response, path)
    return response


# --- requests to start from -------------------------------------------------------------------------------


def all_resources() -> dict[str, list[JSON]]:
    """One resource of every type the service reads, by prefetch key; together they fire a warning."""
    return {
        "conditions": [fb.breast_cancer(), fb.back_pain()],
        "medicationStatements": [fb.medication_statement(fb.LETROZOLE)],
        "medicationRequests": [fb.medication_request(fb.TAMOXIFEN)],
        "observations": [fb.symptom_observation(effective_days_ago=5)],
        "serviceRequests": [fb.service_request(fb.MRI_LUMBAR_SNOMED, authored_days_ago=400)],
        "diagnosticReports": [fb.diagnostic_report(fb.MRI_LUMBAR_SNOMED, effective_days_ago=400)],
        "imagingStudies": [fb.imaging_study(fb.MRI_LUMBAR_SNOMED, started_days_ago=400)],
        "procedures": [fb.procedure(fb.MRI_LUMBAR_SNOMED, performed_days_ago=400)],
        "encounters": [fb.encounter(fb.snomed("279039007", "Low back pain"), days_ago=6)],
    }


def warning_request() -> JSON:
    """A complete patient-view request (every optional field present) that fires a warning card."""
    patient = {
        **fb.patient(deceased=False),
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "identifier": [{"system": "urn:mrn", "value": "123"}],
        "active": True,
        "meta": {"lastUpdated": fb.iso_datetime(1)},
    }
    request = fb.hook_request(patient, **all_resources())
    request["context"]["encounterId"] = "encounter-1"
    request["fhirServer"] = CLOSED_LOOPBACK
    request["fhirAuthorization"] = {
        "access_token": "tok-fuzz",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "mscc-alert",
    }
    return request


def valid_feedback() -> JSON:
    return {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-20T10:05:31Z",
                "overrideReason": {
                    "reason": {
                        "system": "urn:mscc-alert:override-reason",
                        "code": "patient-declines",
                        "display": "Patient declines",
                    },
                    "userComment": "x",
                },
                "extension": {"x": 1},
            },
            {
                "card": str(uuid.uuid4()),
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "s-1"}],
                "outcomeTimestamp": "2026-11-20T10:05:31+01:00",
            },
        ]
    }


def test_the_starting_points_are_valid(client: TestClient) -> None:
    """The mutations below start from requests the service fully accepts."""
    response = post_checked(client, SERVICE_PATH, warning_request())
    assert [c["indicator"] for c in response.json()["cards"]] == ["warning"]
    assert post_checked(client, FEEDBACK_PATH, valid_feedback()).status_code == 200


# --- every field, every JSON type ----------------------------------------------------------------------------

SAMPLES: dict[str, JSON] = {
    "null": None,
    "true": True,
    "zero": 0,
    "negative": -1,
    "float": 2.5,
    "huge integer": 10**30,
    "empty string": "",
    "string": "x",
    "empty array": [],
    "array": [1, "a", None, {}],
    "empty object": {},
    "object": {"a": 1},
    "OperationOutcome": {"resourceType": "OperationOutcome", "issue": []},
    "empty Bundle": {"resourceType": "Bundle"},
}
DELETE = object()


def paths_in(value: JSON, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every member and array index inside `value`, outermost first."""
    found: list[tuple[str | int, ...]] = []
    items: list[tuple[str | int, JSON]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, child in items:
        found.append((*prefix, key))
        found += paths_in(child, (*prefix, key))
    return found


def mutated(document: JSON, path: tuple[str | int, ...], value: JSON) -> JSON:
    """A copy of `document` with the value at `path` replaced by `value` (or removed, for DELETE)."""
    result = copy.deepcopy(document)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)
    return result


def every_mutation(document: JSON, paths: list[tuple[str | int, ...]]) -> Iterator[tuple[str, JSON]]:
    for path in paths:
        for name, value in [*SAMPLES.items(), ("deleted", DELETE)]:
            yield f"{'.'.join(map(str, path))} = {name}", mutated(document, path, value)


def check_all(client: TestClient, path: str, cases: Iterator[tuple[str, JSON]]) -> dict[int, int]:
    """Send every case; fail listing every bad answer, not just the first. Returns the count by status."""
    bad = []
    statuses: dict[int, int] = {}
    for label, body in cases:
        response = post(client, path, body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        try:
            assert_good_answer(response, path)
        except AssertionError as exc:
            bad.append(f"{label}: {str(exc)[:300]}")
    assert not bad, f"{len(bad)} of {sum(statuses.values())} bad answers:\n" + "\n".join(bad[:40])
    return statuses


HOOK_FIELDS = [
    path
    for path in paths_in(warning_request())
    if path[0] != "prefetch" or len(path) <= 2  # the prefetch values get their own tests below
]


def test_hook_request_fields_with_every_json_type(client: TestClient) -> None:
    assert ("fhirAuthorization", "expires_in") in HOOK_FIELDS and ("prefetch", "procedures") in HOOK_FIELDS
    statuses = check_all(client, SERVICE_PATH, every_mutation(warning_request(), HOOK_FIELDS))
    assert sum(statuses.values()) > 300
    assert {200, 400, 412} <= set(statuses)  # the mutations reach decoding, prefetch handling and evaluation


@pytest.mark.parametrize("key", fb.PREFETCH_KEYS)
def test_resources_with_every_field_of_every_json_type(client: TestClient, key: str) -> None:
    """Every member of the prefetch value (Bundle, entries, the resources and all their fields: codes,
    codings, dates, subject, statuses...) replaced by every JSON type, and removed."""
    request = warning_request()
    fields = paths_in(request["prefetch"][key], ("prefetch", key))
    assert len(fields) > 10
    statuses = check_all(client, SERVICE_PATH, every_mutation(request, fields))
    assert statuses.get(200, 0) > len(fields)  # most mutated charts are evaluated, not refused


def test_feedback_fields_with_every_json_type(client: TestClient) -> None:
    body = valid_feedback()
    statuses = check_all(client, FEEDBACK_PATH, every_mutation(body, paths_in(body)))
    assert {200, 400} <= set(statuses)


@pytest.mark.parametrize(
    "resource_type", [*fb.KEY_BY_RESOURCE_TYPE, "Patient", "Bundle", "OperationOutcome", "Basic", "", "condition"]
)
def test_resources_under_the_wrong_type_or_key(client: TestClient, resource_type: str) -> None:
    """Every resource relabelled as `resource_type`, wherever it is."""
    request = warning_request()
    for key in fb.PREFETCH_KEYS[1:]:
        for entry in request["prefetch"][key].get("entry", []):
            entry["resource"]["resourceType"] = resource_type
    request["prefetch"]["patient"]["resourceType"] = resource_type
    post_checked(client, SERVICE_PATH, request)


# --- random input (hypothesis) ---------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
post_paths = st.sampled_from(POST_PATHS)


@FUZZ
@given(path=post_paths, body=json_values)
def test_any_json_body(client: TestClient, path: str, body: JSON) -> None:
    post_checked(client, path, body)


@FUZZ
@given(path=post_paths, body=st.binary(max_size=2048))
def test_random_bytes_as_json(client: TestClient, path: str, body: bytes) -> None:
    post_checked(client, path, body)


@FUZZ
@given(field=st.sampled_from(HOOK_FIELDS), value=json_values)
def test_hook_request_field_with_random_json(client: TestClient, field: tuple[str | int, ...], value: JSON) -> None:
    post_checked(client, SERVICE_PATH, mutated(warning_request(), field, value))


# --- values a FHIR client library chokes on: each is the client's error, a 400 naming the field -----------
HOSTILE_FIELDS: list[tuple[str, tuple[str | int, ...], str]] = [
    *[("fhirServer", ("fhirServer",), url) for url in (
        "http://127.0.0.1:65536/fhir", "http://127.0.0.1:99999999999/fhir", "http://127.0.0.1:abc/fhir",
        "http://127.0.0.1:-1/fhir", "http://[::1/fhir", "http://[zz::1]/fhir", "http://[::1]]:1/fhir",
        "http://127.0.0.1:1/fhir?x=1", "http://127.0.0.1:1/fhir?", "http://127.0.0.1:1/fhir#top",
        "http://user:pw@127.0.0.1:1/fhir", "http://127.0.0.1:1/fhir/../admin", "http://127.0.0.1:1/fhir/%2e%2e",
        "http://127.0.0.1:1/fh ir", "http://127.0.0.1:1/fhir\r\nX: 1", "http://127.0.0.1:1\\fhir", "http://",
        "http://a..b/fhir",
    )],
    *[("context.patientId", ("context", "patientId"), pid) for pid in (".", "..", "...")],
    *[("fhirAuthorization.access_token", ("fhirAuthorization", "access_token"), token) for token in (
        "tök€n", "\u0100bc", "abc\r\nX-Injected: 1", "abc\ndef", "abc\rdef", "a b", "abc\x00", "é",
    )],
]


@pytest.mark.parametrize(("name", "field", "value"), HOSTILE_FIELDS, ids=[repr(v) for _, _, v in HOSTILE_FIELDS])
def test_values_http_cannot_carry_are_a_400_naming_the_field(
    client: TestClient, name: str, field: tuple[str | int, ...], value: str
) -> None:
    request = mutated(warning_request(), field, value)
    del request["prefetch"]["conditions"]  # a key to fetch: the request must be refused before any fetch
    # Sent as is (not through `no_outbound`): each URL is on loopback or names no host that could resolve.
    response = post(client, SERVICE_PATH, json.dumps(request).encode())
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == [name]


url_parts = st.sampled_from(["http://", "https://", "http://[", "]", ":", "@", "/", "?", "#", "%2e", "..", ".",
                             "127.0.0.1", "::1", "localhost", "65536", "0", "fhir", "\\", " ", "\r\n", "é"])


@FUZZ
@given(fhir_server=st.lists(url_parts, max_size=10).map("".join), token=st.text(max_size=20),
       patient_id=st.from_regex(r"\A[A-Za-z0-9.\-]{1,5}\Z"))
def test_random_fhir_servers_tokens_and_patient_ids(
    client: TestClient, fhir_server: str, token: str, patient_id: str
) -> None:
    request = warning_request()
    request["fhirServer"] = fhir_server
    request["fhirAuthorization"]["access_token"] = token
    request["context"]["patientId"] = patient_id
    del request["prefetch"]["conditions"]
    post_checked(client, SERVICE_PATH, request)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(fb.PREFETCH_KEYS), json_values, min_size=1))
def test_random_prefetch_values(client: TestClient, values: dict[str, JSON]) -> None:
    request = warning_request()
    del request["fhirServer"]  # unusable values must then be a 412, not a fetch
    del request["fhirAuthorization"]
    request["prefetch"].update(values)
    post_checked(client, SERVICE_PATH, request)


def resource_strategy() -> st.SearchStrategy[JSON]:
    """Resources of the types the service reads, each field it reads present or not, any JSON in each."""
    read_fields = [
        "id",
        "subject",
        "patient",
        "code",
        "clinicalStatus",
        "verificationStatus",
        "category",
        "onsetDateTime",
        "onsetPeriod",
        "onsetAge",
        "onsetString",
        "recordedDate",
        "abatementDateTime",
        "birthDate",
        "gender",
        "deceasedBoolean",
        "deceasedDateTime",
        "status",
        "intent",
        "medicationCodeableConcept",
        "effectiveDateTime",
        "effectivePeriod",
        "authoredOn",
        "valueCodeableConcept",
        "valueQuantity",
        "valueString",
        "valueBoolean",
        "component",
        "procedureCode",
        "modality",
        "series",
        "started",
        "performedDateTime",
        "performedPeriod",
        "issued",
        "reasonCode",
        "bodySite",
        "note",
        "evidence",
        "stage",
    ]
    codings = st.fixed_dictionaries(
        {},
        optional={
            "system": json_values | st.sampled_from([fb.SNOMED, fb.ICD10CM, fb.LOINC]),
            "code": json_values | st.sampled_from(["254837009", "C50.911", 279039007]),
        },
    )
    concept = st.fixed_dictionaries(
        {}, optional={"coding": st.lists(codings | json_values, max_size=3), "text": json_values}
    )
    value = json_values | concept | st.lists(concept, max_size=2) | st.just(fb.reference())
    return st.fixed_dictionaries(
        {"resourceType": st.sampled_from([*fb.KEY_BY_RESOURCE_TYPE, "Patient"])},
        optional=dict.fromkeys(read_fields, value),
    )


@FUZZ
@given(resources=st.lists(resource_strategy(), max_size=6), key=st.sampled_from(fb.PREFETCH_KEYS[1:]))
def test_random_resources_in_a_bundle(client: TestClient, resources: list[JSON], key: str) -> None:
    request = warning_request()
    request["prefetch"][key] = fb.searchset(resources)
    post_checked(client, SERVICE_PATH, request)


@FUZZ
@given(resource=resource_strategy())
def test_random_patient_resource(client: TestClient, resource: JSON) -> None:
    request = warning_request()
    request["prefetch"]["patient"] = resource
    post_checked(client, SERVICE_PATH, request)


@FUZZ
@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "fullUrl": json_values,
                "resource": json_values | resource_strategy(),
                "search": json_values,
                "request": json_values,
            },
        )
        | json_values,
        max_size=5,
    ),
    bundle_fields=st.fixed_dictionaries(
        {}, optional={"type": json_values, "total": json_values, "link": json_values, "id": json_values}
    ),
)
def test_malformed_bundles(client: TestClient, entries: list[JSON], bundle_fields: dict[str, JSON]) -> None:
    request = warning_request()
    request["prefetch"]["conditions"] = {"resourceType": "Bundle", **bundle_fields, "entry": entries}
    post_checked(client, SERVICE_PATH, request)


def draft_strategy() -> st.SearchStrategy[JSON]:
    """Draft orders as an order session holds them, every field of any JSON type or of a plausible shape."""
    codes = st.sampled_from([fb.XRAY_LUMBAR_CPT, fb.MRI_LUMBAR_CPT, fb.MRI_WHOLE_SPINE_WO_LOINC, fb.BONE_SCAN_CPT,
                             fb.CALCIUM_LAB_LOINC, {}])
    value = json_values | codes.map(lambda c: {"coding": [c]}) | st.just(fb.reference()) | st.just([])
    return st.fixed_dictionaries(
        {"resourceType": st.sampled_from(["ServiceRequest", "MedicationRequest"]) | json_values},
        optional={"id": st.sampled_from(["a", "b"]) | json_values,
                  "status": st.just("draft") | json_values, "intent": st.just("order") | json_values,
                  "priority": st.sampled_from(["routine", "stat"]) | json_values, "code": value,
                  "subject": value, "patient": value, "reasonCode": st.lists(value, max_size=2) | json_values,
                  "extension": json_values},
    )


@FUZZ
@given(
    path=st.sampled_from(ORDER_PATHS),
    entries=st.lists(st.fixed_dictionaries({}, optional={"resource": draft_strategy() | json_values}) | json_values,
                     max_size=4),
    selections=st.lists(st.sampled_from(["ServiceRequest/a", "ServiceRequest/b"]) | json_values, max_size=3)
    | json_values,
    bundle=st.sampled_from(["Bundle", "Patient"]) | json_values,
)
def test_random_draft_orders_and_selections(client: TestClient, path: str, entries: list[JSON], selections: JSON,
                                            bundle: JSON) -> None:
    request = warning_request()
    request["hook"] = "order-select" if path.endswith("order-select") else "order-sign"
    request["context"]["draftOrders"] = {"resourceType": bundle, "entry": entries}
    request["context"]["selections"] = selections
    post_checked(client, path, request)


feedback_items = st.fixed_dictionaries(
    {},
    optional={
        "card": json_values | st.text(max_size=300),
        "outcome": json_values | st.sampled_from(["accepted", "overridden"]),
        "acceptedSuggestions": json_values
        | st.lists(st.fixed_dictionaries({}, optional={"id": json_values}), max_size=3),
        "overrideReason": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "reason": json_values
                | st.fixed_dictionaries(
                    {}, optional={"system": json_values, "code": json_values, "display": json_values}
                ),
                "userComment": json_values,
            },
        ),
        "outcomeTimestamp": json_values | st.datetimes().map(lambda d: d.isoformat() + "Z"),
        "extension": json_values,
    },
)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {}, optional={"feedback": st.lists(feedback_items, max_size=4) | json_values, "extension": json_values}
    )
)
def test_random_feedback(client: TestClient, body: JSON) -> None:
    post_checked(client, FEEDBACK_PATH, body)


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59-00:01",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "2026-02-30T10:00:00Z",
        "2026-11-20T24:00:00Z",
        "2026-11-20T10:00:60Z",
        "2026-11-20T10:00:00+24:00",
        "2026-11-20T10:00:00+23:59",
        "2026-11-20T10:00:00.123456789Z",
        "2026-11-20t10:00:00z",
        "2026-11-20 10:00:00Z",
        "+2026-11-20T10:00:00Z",
    ],
)
def test_feedback_timestamps_at_the_edges(client: TestClient, timestamp: str) -> None:
    body = {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": timestamp}]}
    response = post_checked(client, FEEDBACK_PATH, body)
    if response.status_code == 400:
        assert response.json()["issue"][0]["expression"] == ["feedback[0].outcomeTimestamp"]


rfc3339_with_offsets = st.builds(
    lambda moment, minutes: (
        moment.isoformat()
        + ("Z" if minutes == 0 else f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
    ),
    # Years 1 and 9999 with an offset are the known overflow above; here the offsets themselves are fuzzed.
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)


@FUZZ
@given(timestamp=rfc3339_with_offsets)
def test_feedback_timestamps_with_any_offset(client: TestClient, timestamp: str) -> None:
    post_checked(
        client, FEEDBACK_PATH, {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": timestamp}]}
    )


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10**9))
def test_truncated_requests(client: TestClient, cut: int) -> None:
    for path, body in ((SERVICE_PATH, warning_request()), (FEEDBACK_PATH, valid_feedback())):
        data = json.dumps(body).encode()
        response = post(client, path, data[: cut % len(data)])
        assert_good_answer(response, path)
        assert response.status_code == 400


# --- deep nesting -------------------------------------------------------------------------------------------


def nested_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def hook_with(raw_member: str, where: str) -> bytes:
    """A valid hook request with `raw_member` spliced in as the value of a member at `where`."""
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])
    marker = "__DEEP__"
    if where == "context":
        request["context"]["extra"] = marker
    elif where == "prefetch key":
        request["prefetch"]["somethingElse"] = marker
    elif where == "bundle":
        request["prefetch"]["conditions"]["meta"] = marker
    elif where == "resource":
        request["prefetch"]["conditions"]["entry"][0]["resource"]["extension"] = marker
    return json.dumps(request).replace(f'"{marker}"', raw_member).encode()


DEEP_CASES = [
    pytest.param(SERVICE_PATH, nested_arrays(10_000).encode(), id="hook-body-arrays-10000"),
    pytest.param(SERVICE_PATH, nested_objects(10_000).encode(), id="hook-body-objects-10000"),
    pytest.param(SERVICE_PATH, nested_objects(500).encode(), id="hook-body-objects-500"),
    pytest.param(SERVICE_PATH, hook_with(nested_arrays(10_000), "context"), id="context-arrays-10000"),
    pytest.param(
        SERVICE_PATH,
        hook_with(nested_objects(10_000), "prefetch key"),
        id="prefetch-objects-10000",
    ),
    pytest.param(SERVICE_PATH, hook_with(nested_arrays(10_000), "bundle"), id="bundle-arrays-10000"),
    pytest.param(SERVICE_PATH, hook_with(nested_objects(2_000), "resource"), id="resource-objects-2000"),
    pytest.param(SERVICE_PATH, hook_with(nested_objects(300), "resource"), id="resource-objects-300"),
    pytest.param(SERVICE_PATH, hook_with(nested_objects(600), "resource"), id="resource-objects-600"),
    pytest.param(SERVICE_PATH, hook_with(nested_arrays(600), "resource"), id="resource-arrays-600"),
    pytest.param(FEEDBACK_PATH, nested_arrays(10_000).encode(), id="feedback-body-arrays-10000"),
    pytest.param(FEEDBACK_PATH, nested_objects(10_000).encode(), id="feedback-body-objects-10000"),
    pytest.param(
        FEEDBACK_PATH,
        json.dumps(valid_feedback()).replace('{"x": 1}', nested_objects(1_000)).encode(),
        id="feedback-extension-objects-1000",
    ),
    pytest.param(
        FEEDBACK_PATH,
        json.dumps(valid_feedback()).replace('{"x": 1}', nested_arrays(10_000)).encode(),
        id="feedback-extension-arrays-10000",
    ),
]


@pytest.mark.parametrize(("path", "body"), DEEP_CASES)
def test_deeply_nested_json(client: TestClient, path: str, body: bytes) -> None:
    post_checked(client, path, body)


def test_deeply_nested_fhir_server_answer(httpserver: HTTPServer) -> None:
    condition = {**fb.back_pain(), "extension": [{"url": "urn:x", "valueString": "x", "x": "__DEEP__"}]}
    answer = json.dumps(fb.searchset([fb.breast_cancer(), condition])).replace('"__DEEP__"', nested_objects(600))
    httpserver.expect_request("/fhir/Condition").respond_with_data(answer, content_type="application/fhir+json")
    request = fb.hook_request(fb.patient())
    del request["prefetch"]["conditions"]
    request["fhirServer"] = httpserver.url_for("/fhir")
    app = create_app(Settings(database_url="memory://"))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = post(test_client, SERVICE_PATH, request)
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Condition"]
    assert_good_answer(response, SERVICE_PATH)


# --- duplicates, dangling references, other patients, size --------------------------------------------------


def cards_of(response: Any) -> list[str]:
    return [card["indicator"] for card in response.json()["cards"]]


def test_duplicated_resources(client: TestClient) -> None:
    cancer, pain = fb.breast_cancer(), fb.back_pain()
    request = fb.hook_request(fb.patient(), conditions=[cancer, pain] * 200, observations=[pain, cancer])
    request["prefetch"]["procedures"] = request["prefetch"]["conditions"]  # the same Bundle under two keys
    assert cards_of(post_checked(client, SERVICE_PATH, request)) == ["warning"]


def test_same_id_different_content(client: TestClient) -> None:
    """Two versions of one resource id (a stale and a fresh copy): answered, once."""
    pain = fb.back_pain()
    stale = {**pain, "clinicalStatus": fb.concept(fb.coding(fb.CONDITION_CLINICAL, "resolved"))}
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), stale, pain])
    assert len(cards_of(post_checked(client, SERVICE_PATH, request))) <= 1


DANGLING = {
    "reasonReference": [{"reference": "Condition/not-here"}],
    "evidence": [{"detail": [{"reference": "Observation/not-here"}]}],
    "hasMember": [{"reference": "Observation/missing"}],
    "derivedFrom": [{"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}],
    "basedOn": [{"reference": "ServiceRequest/gone"}],
    "partOf": [{"reference": "Procedure/gone"}],
    "encounter": {"reference": "Encounter/never-sent"},
    "asserter": {"reference": "#contained-not-there"},
    "recorder": {"reference": "Practitioner/"},
}


def test_references_to_resources_that_are_not_there(client: TestClient) -> None:
    resources = all_resources()
    for listed in resources.values():
        for resource in listed:
            resource.update(copy.deepcopy(DANGLING))
    request = fb.hook_request(fb.patient(), **resources)
    post_checked(client, SERVICE_PATH, request)


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": "Patient/not-here"},
        {"reference": "#p1"},
        {"reference": "urn:uuid:1"},
        {"reference": ""},
        {"reference": "Patient/"},
        {"identifier": {"system": "urn:mrn", "value": "12345"}},
        {"display": "someone"},
        {"reference": f"http://127.0.0.1:1/fhir/Patient/{fb.PATIENT_ID}"},
        {"reference": f"Patient/{fb.PATIENT_ID}/_history/2"},
        {},
        "Patient/x",
        None,
    ],
)
def test_odd_subjects(client: TestClient, subject: JSON) -> None:
    request = fb.hook_request(
        fb.patient(), conditions=[{**fb.breast_cancer(), "subject": subject}, {**fb.back_pain(), "subject": subject}]
    )
    post_checked(client, SERVICE_PATH, request)


def test_prefetch_for_another_patient_fires_nothing(client: TestClient) -> None:
    other = fb.OTHER_PATIENT_ID
    request = fb.hook_request(
        fb.patient(patient_id=other),
        patient_id=fb.PATIENT_ID,
        conditions=[fb.breast_cancer(patient_id=other), fb.back_pain(patient_id=other)],
        observations=[fb.symptom_observation(patient_id=other)],
    )
    response = post(client, SERVICE_PATH, request)
    assert_good_answer(response, SERVICE_PATH)
    if response.status_code == 200:
        assert cards_of(response) == []


def test_mixed_patients_use_only_the_right_one(client: TestClient) -> None:
    other = fb.OTHER_PATIENT_ID
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(patient_id=other), fb.back_pain()])
    assert cards_of(post_checked(client, SERVICE_PATH, request)) == []


def test_many_irrelevant_resources(client: TestClient) -> None:
    observations = [fb.heart_rate(60 + n % 40, effective_days_ago=n % 300) for n in range(20_000)]
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()], observations=observations)
    assert cards_of(post_checked(client, SERVICE_PATH, request)) == ["warning"]


def test_huge_strings(client: TestClient) -> None:
    pain = {**fb.back_pain(), "note": [{"text": "x" * 2_000_000}]}
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), pain])
    request["context"]["userId"] = "Practitioner/" + "y" * 100_000
    assert cards_of(post_checked(client, SERVICE_PATH, request)) == ["warning"]


def test_many_undeclared_prefetch_keys(client: TestClient) -> None:
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])
    request["prefetch"].update({f"extra{n}": None for n in range(20_000)})
    assert cards_of(post_checked(client, SERVICE_PATH, request)) == ["warning"]


def test_many_feedback_items(client: TestClient) -> None:
    """Up to MSCC_ALERT_FEEDBACK_MAX_ITEMS (100) items are taken; more are a 413 naming `feedback`."""
    item = valid_feedback()["feedback"][0]
    at_limit = {"feedback": [{**item, "card": f"card-{n}"} for n in range(100)]}
    assert post_checked(client, FEEDBACK_PATH, at_limit).status_code == 200
    over = post(client, FEEDBACK_PATH, json.dumps({"feedback": [*at_limit["feedback"], item]}).encode())
    assert over.status_code == 413
    assert_operation_outcome(over.json())
    assert over.json()["issue"][0]["expression"] == ["feedback"]


def test_body_over_the_limit_is_a_413() -> None:
    app = create_app(Settings(database_url="memory://", max_body_bytes=10_000, feedback_max_body_bytes=10_000))
    with TestClient(app, raise_server_exceptions=False) as small:
        for path in POST_PATHS:
            response = post(small, path, b'{"feedback": [' + b" " * 20_000 + b"]}")
            assert response.status_code == 413
            assert_operation_outcome(response.json())


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ],
)
def test_wrong_content_type(client: TestClient, content_type: str) -> None:
    for path in POST_PATHS:
        response = post(client, path, json.dumps(warning_request()).encode(), content_type=content_type)
        assert response.status_code == 415
        assert_operation_outcome(response.json())


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "GET"])
def test_wrong_methods(client: TestClient, method: str) -> None:
    for path in POST_PATHS:
        response = client.request(method, path, content=b"{}", headers={"Content-Type": "application/json"})
        assert response.status_code == 405
        assert_operation_outcome(response.json())
    response = client.request("POST" if method == "GET" else method, "/cds-services")
    assert response.status_code == 405
    assert_operation_outcome(response.json())


@FUZZ
@given(
    segment=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).filter(
        lambda s: not set(s) & set("/?#%\\")
    )
)
def test_unknown_service_ids(client: TestClient, segment: str) -> None:
    for suffix in ("", "/feedback"):
        response = client.post(
            f"/cds-services/{segment}x{suffix}", content=b"{}", headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (404, 405), response.text
        assert_operation_outcome(response.json())


# --- a running service under a flood of bad requests ----------------------------------------------------------


def flood_requests(rng: random.Random) -> Iterator[tuple[str, str, bytes, dict[str, str]]]:
    """Malformed requests of many kinds: (method, path, body, headers), forever."""
    good = json.dumps(warning_request()).encode()
    feedback = json.dumps(valid_feedback()).encode()
    as_json = {"Content-Type": "application/json"}
    kinds: list[Callable[[], tuple[str, str, bytes, dict[str, str]]]] = [
        lambda: ("POST", SERVICE_PATH, rng.randbytes(rng.randrange(1, 3000)), as_json),
        lambda: ("POST", FEEDBACK_PATH, rng.randbytes(rng.randrange(1, 3000)), as_json),
        lambda: ("POST", SERVICE_PATH, good[: rng.randrange(len(good))], as_json),
        lambda: ("POST", FEEDBACK_PATH, feedback[: rng.randrange(len(feedback))], as_json),
        lambda: (
            "POST",
            SERVICE_PATH,
            json.dumps(
                mutated(warning_request(), rng.choice(HOOK_FIELDS), rng.choice(list(SAMPLES.values())))
            ).encode(),
            as_json,
        ),
        lambda: ("POST", SERVICE_PATH, nested_arrays(rng.randrange(1, 5000)).encode(), as_json),
        lambda: ("POST", FEEDBACK_PATH, nested_objects(rng.randrange(1, 5000)).encode(), as_json),
        lambda: ("POST", SERVICE_PATH, good, {"Content-Type": rng.choice(["text/plain", "application/xml", "x/y"])}),
        lambda: ("POST", SERVICE_PATH, good, {}),
        lambda: ("POST", f"/cds-services/{rng.randbytes(8).hex()}", good, as_json),
        lambda: ("PUT", SERVICE_PATH, good, as_json),
        lambda: ("GET", FEEDBACK_PATH, b"", {}),
        lambda: ("POST", SERVICE_PATH, b"null", as_json),
        lambda: (
            "POST",
            SERVICE_PATH,
            b'{"hook": "patient-view", "hookInstance": "x", "context": {"patientId": '
            + json.dumps(rng.choice(["", "a/b", "x" * 100, "$$$"])).encode()
            + b"}}",
            as_json,
        ),
        lambda: ("POST", SERVICE_PATH, good, {**as_json, "Authorization": "Bearer " + rng.randbytes(30).hex()}),
    ]
    while True:
        yield rng.choice(kinds)()


def test_live_service_survives_a_flood_of_bad_requests(tmp_path: Any) -> None:
    service: LiveService = start_live_service(tmp_path, {"MSCC_ALERT_FHIR_CONNECT_TIMEOUT": "0.5"})
    statuses: dict[int, int] = {}
    sent = 0
    try:
        deadline = time.monotonic() + 90
        for method, path, body, headers in flood_requests(random.Random(20261121)):
            if sent >= 3000 or time.monotonic() > deadline:
                break
            response = service.session.request(method, service.url(path), data=body, headers=headers, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, f"{method} {path} {body[:200]!r}: {response.text[:300]}"
            sent += 1
        # Still serving, and serving correctly.
        discovery = requests.get(service.url("/cds-services"), timeout=30)
        assert discovery.status_code == 200
        assert [s["id"] for s in discovery.json()["services"]] == [cls.id for cls in SERVICES]
        response = requests.post(service.url(SERVICE_PATH), json=warning_request(), timeout=30)
        assert response.status_code == 200
        assert cards_of(response) == ["warning"]
        assert service.process.poll() is None
    finally:
        stop_live_service(service)
    assert sent >= 1000, f"only {sent} requests in the time allowed"
    assert set(statuses) <= {200, 400, 404, 405, 412, 415}, statuses
    assert "Traceback" not in service.logs()
