"""The CDS Hooks 2.x specification's own JSON examples (tests/data/cds-hooks-examples/spec-2.x) against the
real `mscc-alert serve`.

Requests and hook contexts are sent: none carries our prefetch keys, so each must decode and then get the
status the spec gives for its content (412 when data is unobtainable, 400 when a required field is missing
or the hook is not ours). Every fhirServer in them is on the public internet and is rewritten to a closed
loopback port first, so the service can never call out. Discovery and response examples are the yardstick
for our own discovery and responses: the same validators pass on the spec's examples and on ours.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import SERVICE_ID, TEST_DATA, LiveService, free_port
from tests.scenarios.fhir_builders import (
    CORD_COMPRESSION,
    JSON,
    PREFETCH_KEYS,
    back_pain,
    breast_cancer,
    finding,
    hook_request,
    patient,
)
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response
from tests.test_discovery import assert_valid_discovery
from tests.test_hook_errors import assert_operation_outcome

SPEC = TEST_DATA / "cds-hooks-examples/spec-2.x"
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
CLOSED_PORT = free_port()

# Members CDS Hooks 2.0 defines (docs/cds-hooks-conformance.md §1.6); `extension` is allowed everywhere.
RESPONSE_FIELDS = {"cards", "systemActions", "extension"}
CARD_FIELDS = {
    "uuid",
    "summary",
    "detail",
    "indicator",
    "source",
    "suggestions",
    "selectionBehavior",
    "overrideReasons",
    "links",
    "extension",
}
SOURCE_FIELDS = {"label", "url", "icon", "topic", "extension"}
SUGGESTION_FIELDS = {"label", "uuid", "isRecommended", "actions", "extension"}
ACTION_FIELDS = {"type", "description", "resource", "resourceId", "extension"}
LINK_FIELDS = {"label", "url", "type", "appContext", "autolaunchable", "extension"}
CODING_FIELDS = {"code", "system", "display"}


def load(name: str) -> JSON:
    body: JSON = json.loads((SPEC / name).read_text())
    return body


def kind(example: JSON) -> str:
    if "hook" in example:
        return "request"
    if "services" in example:
        return "discovery"
    if "cards" in example:
        return "response"
    return "fragment"


def names(wanted: str) -> list[str]:
    return sorted(p.name for p in SPEC.glob("*.json") if kind(load(p.name)) == wanted)


def post(live: LiveService, body: JSON) -> Any:
    return live.session.post(live.url(SERVICE_PATH), json=body, timeout=60)


def to_loopback(body: JSON) -> JSON:
    """Point any fhirServer at a closed loopback port: the service must never reach the internet from a test."""
    if "fhirServer" in body:
        body["fhirServer"] = f"http://127.0.0.1:{CLOSED_PORT}/fhir"
        assert urlsplit(body["fhirServer"]).hostname == "127.0.0.1"
    return body


def wrap_context(context: JSON, hook: str = "patient-view") -> JSON:
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}


def txt_context(name: str) -> JSON:
    """The hook pages print a bare `"context": {...}` member; as an object it is valid JSON."""
    context: JSON = json.loads("{" + (SPEC / name).read_text() + "}")["context"]
    return context


def test_every_example_is_classified() -> None:
    assert names("request") == ["spec-current-02-example.json", "spec-current-23-extensions.json"]
    assert names("discovery") == ["spec-current-01-discovery-example.json", "spec-current-24-extensions.json"]
    assert names("response") == [
        "spec-current-10-http-response.json",
        "spec-current-16-system-action.json",
        "spec-current-17-example.json",
        "spec-current-18-example.json",
    ]


# --- requests ---------------------------------------------------------------------------------------------------
def test_example_request_with_fhir_authorization_is_412_after_trying_the_server(live_service: LiveService) -> None:
    """spec-02: fhirServer + fhirAuthorization, prefetch only `patientToGreet` (not ours): every key is fetched,
    the (rewritten, closed) server refuses, so 412 (saying only that it could not be fetched), and the token
    never appears in the answer."""
    body = to_loopback(load("spec-current-02-example.json"))
    outcome = assert_operation_outcome(post(live_service, body), 412, "could not be fetched")
    assert outcome["issue"][0]["expression"] == [f"prefetch.{key}" for key in PREFETCH_KEYS]
    assert body["fhirAuthorization"]["access_token"] not in json.dumps(outcome)


def test_example_request_without_patient_id_is_400(live_service: LiveService) -> None:
    """spec-23 (extensions) has no context.patientId, which patient-view requires."""
    body = to_loopback(load("spec-current-23-extensions.json"))
    assert_operation_outcome(post(live_service, body), 400, "patientId")


def test_example_request_extensions_are_tolerated(live_service: LiveService) -> None:
    """spec-23 with a patientId: its top-level `extension` is accepted, so the answer is about data (412)."""
    body = to_loopback(load("spec-current-23-extensions.json"))
    body["context"]["patientId"] = "1288992"
    assert_operation_outcome(post(live_service, body), 412, "could not be fetched")


@pytest.mark.parametrize("name", ["hook-patient-view-01-examples.txt", "hook-patient-view-02-examples.txt"])
def test_patient_view_contexts_decode_and_are_412_without_data(live_service: LiveService, name: str) -> None:
    outcome = assert_operation_outcome(post(live_service, wrap_context(txt_context(name))), 412, "fhirServer")
    assert outcome["issue"][0]["expression"] == [f"prefetch.{key}" for key in PREFETCH_KEYS]


def test_prefetch_token_context_decodes(live_service: LiveService) -> None:
    context = load("spec-current-04-example-prefetch-token.json")["context"]
    assert_operation_outcome(post(live_service, wrap_context(context)), 412, "'patient'")


@pytest.mark.parametrize(
    ("name", "hook"),
    [
        ("hook-order-select-01-example-r4.json", "order-select"),
        ("hook-order-select-02-example-stu3.json", "order-select"),
        ("hook-order-sign-01-example-r4.json", "order-sign"),
        ("hook-order-sign-02-example-stu3.json", "order-sign"),
    ],
)
def test_other_hooks_are_400(live_service: LiveService, name: str, hook: str) -> None:
    body = wrap_context(load(name)["context"], hook)
    assert_operation_outcome(post(live_service, body), 400, hook, "hook")


def test_example_prefetch_data_is_used_by_key_and_the_rest_ignored(live_service: LiveService) -> None:
    """spec-08: `patient` is one of our keys; `hemoglobin-a1c` and `user` are not (and are named)."""
    body = wrap_context({"userId": "Practitioner/example", "patientId": "1288992"})
    body["prefetch"] = load("spec-current-08-example-prefetch-data.json")["prefetch"]
    outcome = assert_operation_outcome(post(live_service, body), 412, "hemoglobin-a1c", "user")
    assert outcome["issue"][0]["expression"] == [f"prefetch.{key}" for key in PREFETCH_KEYS if key != "patient"]


def test_example_fhir_authorization_is_accepted(live_service: LiveService) -> None:
    """spec-09's fhirAuthorization, with everything prefetched: accepted, and never needed."""
    body = hook_request(patient(), conditions=[breast_cancer(), back_pain()])
    body["fhirServer"] = f"http://127.0.0.1:{CLOSED_PORT}/fhir"
    body["fhirAuthorization"] = load("spec-current-09-passing-the-access-token-to-the-cds-service.json")[
        "fhirAuthorization"
    ]
    response = post(live_service, body)
    assert response.status_code == 200, response.text[:500]
    assert [card["indicator"] for card in response.json()["cards"]] == ["warning"]


# --- discovery --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", names("discovery"))
def test_discovery_validator_accepts_the_spec_examples(name: str) -> None:
    assert_valid_discovery(load(name))


@pytest.mark.parametrize(
    "name", ["spec-current-03-prefetch-template.json", "spec-current-07-example-prefetch-templates.json"]
)
def test_discovery_validator_accepts_the_spec_prefetch_templates(name: str) -> None:
    service = {"hook": "patient-view", "id": "example", "description": "example", **load(name)}
    assert_valid_discovery({"services": [service]})


@pytest.mark.parametrize(
    "broken",
    [
        {"title": None},
        {"title": ""},
        {"version": "3.0.0"},
        {"prefetch": {"recent": "Observation?patient={{context.patientId}}&date=gt{{today() - 90 days}}"}},
        {"prefetch": {"med": "Medication/{{context.medication.id}}"}},
        {"prefetch": {}},
        {"description": 42},
    ],
)
def test_discovery_validator_rejects_broken_discovery(broken: JSON) -> None:
    service = {**load("spec-current-01-discovery-example.json")["services"][0], **broken}
    with pytest.raises(AssertionError):
        assert_valid_discovery({"services": [service]})


def test_our_discovery_passes_the_same_validator(live_service: LiveService) -> None:
    assert_valid_discovery(live_service.session.get(live_service.url("/cds-services"), timeout=30).json())


# --- responses --------------------------------------------------------------------------------------------------
def assert_2_0_members(response: JSON) -> None:
    """Every member of a response, card, source, suggestion, action, link and coding is one 2.0 defines."""
    assert set(response) <= RESPONSE_FIELDS, set(response) - RESPONSE_FIELDS
    actions = list(response.get("systemActions", []))
    for card in response.get("cards", []):
        assert set(card) <= CARD_FIELDS, set(card) - CARD_FIELDS
        assert set(card["source"]) <= SOURCE_FIELDS
        assert set(card["source"].get("topic", {})) <= CODING_FIELDS
        for suggestion in card.get("suggestions", []):
            assert set(suggestion) <= SUGGESTION_FIELDS
            actions += suggestion.get("actions", [])
        for link in card.get("links", []):
            assert set(link) <= LINK_FIELDS
        for reason in card.get("overrideReasons", []):
            assert set(reason) <= CODING_FIELDS
    for action in actions:
        assert set(action) <= ACTION_FIELDS, set(action) - ACTION_FIELDS


@pytest.mark.parametrize("name", names("response"))
def test_member_check_accepts_the_spec_responses(name: str) -> None:
    assert_2_0_members(load(name))


@pytest.mark.parametrize(
    ("name", "wrap"),
    [
        ("spec-current-11-source.json", lambda f: {"cards": [{"summary": "s", "indicator": "info", **f}]}),
        ("spec-current-12-action.json", lambda f: {"systemActions": [f]}),
        ("spec-current-13-action.json", lambda f: {"systemActions": [f]}),
        ("spec-current-14-action.json", lambda f: {"systemActions": [f]}),
        (
            "spec-current-15-reasons-for-rejecting-a-card.json",
            lambda f: {"cards": [{"summary": "s", "indicator": "info", "source": {"label": "l"}, **f}]},
        ),
    ],
)
def test_member_check_accepts_the_spec_card_parts(name: str, wrap: Any) -> None:
    assert_2_0_members(wrap(load(name)))


def test_member_check_rejects_unknown_members() -> None:
    with pytest.raises(AssertionError):
        assert_2_0_members(
            {"cards": [{"summary": "s", "indicator": "hard-stop", "source": {"label": "l"}, "systemActions": []}]}
        )


def test_no_guidance_is_exactly_the_spec_answer(live_service: LiveService) -> None:
    response = post(live_service, hook_request(patient(), conditions=[breast_cancer()]))
    assert response.status_code == 200
    assert response.json() == load("spec-current-10-http-response.json")


@pytest.mark.parametrize(
    ("conditions", "indicator"),
    [
        ([breast_cancer(), back_pain()], "warning"),
        ([breast_cancer(), back_pain(), finding(CORD_COMPRESSION)], "critical"),
    ],
)
def test_our_cards_follow_the_card_rules(live_service: LiveService, conditions: list[JSON], indicator: str) -> None:
    body = hook_request(patient(), conditions=conditions)
    response = post(live_service, body)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].split(";")[0] == "application/json"
    answer = response.json()
    assert_valid_cds_response(answer, patient_id=body["context"]["patientId"])
    assert_2_0_members(answer)
    assert [card["indicator"] for card in answer["cards"]] == [indicator]
