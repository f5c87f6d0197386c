"""The order-select and order-sign services over HTTP: in process and against `mscc-alert serve` on loopback, with
prefetch and with a FHIR server to fetch from, their 400s, feedback on an order card, and `mscc-alert evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from pytest_httpserver import HTTPServer

from cds_hooks.services.orders import OrderSelectService, OrderSignService
from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response
from tests.test_fhir_server_fallback import CRITICAL_ID, TOKEN, WARNING_ID, FhirTestServer, charts

SELECT = f"/cds-services/{OrderSelectService.id}"
SIGN = f"/cds-services/{OrderSignService.id}"
ROOT = Path(__file__).resolve().parents[1]

Post = Callable[[str, Any], Any]


@pytest.fixture(params=["in-process", "live"])
def post(request: pytest.FixtureRequest) -> Post:
    if request.param == "in-process":
        client = request.getfixturevalue("service_client")
        return lambda path, body: client.post(path, json=body)
    live = request.getfixturevalue("live_service")
    return lambda path, body: live.session.post(live.url(path), json=body, timeout=60)


def _critical(patient_id: str = fb.PATIENT_ID) -> dict[str, Any]:
    return {"conditions": [fb.breast_cancer(patient_id=patient_id), fb.back_pain(patient_id=patient_id),
                           fb.finding(fb.DIFFICULTY_WALKING, patient_id=patient_id)]}


def _warning() -> dict[str, Any]:
    return {"conditions": [fb.breast_cancer(), fb.back_pain()]}


def _sandbox_draft(patient_id: str = fb.PATIENT_ID) -> dict[str, Any]:
    """The shape the CDS Hooks sandbox's imaging view sends: CPT, intent plan, a SNOMED CT reason."""
    return fb.draft_order(fb.MRI_LUMBAR_CPT, order_id="example-request-id", intent="plan", patient_id=patient_id,
                          reason=fb.snomed("279039007", "Low back pain (finding)"))


def _cards(response: Any, patient_id: str = fb.PATIENT_ID) -> list[dict[str, Any]]:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:800]}"
    body = response.json()
    assert_valid_cds_response(body, patient_id=patient_id)
    cards: list[dict[str, Any]] = body["cards"]
    return cards


def _only_update(card: dict[str, Any]) -> dict[str, Any]:
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    assert action["type"] == "update"
    resource: dict[str, Any] = action["resource"]
    ServiceRequest.model_validate(resource)
    return resource


def test_discovery_lists_the_three_services(service_client: Any) -> None:
    services = {s["id"]: s for s in service_client.get("/cds-services").json()["services"]}
    assert {s["hook"] for s in services.values()} == {"patient-view", "order-select", "order-sign"}
    patient_view = next(s for s in services.values() if s["hook"] == "patient-view")
    for service_id in (OrderSelectService.id, OrderSignService.id):
        assert services[service_id]["prefetch"] == patient_view["prefetch"]


def test_order_select_replaces_the_sandbox_lumbar_mri(post: Post) -> None:
    request = fb.order_hook_request("order-select", fb.patient(), [_sandbox_draft()], **_critical())
    (card,) = _cards(post(SELECT, request))
    assert card["indicator"] == "critical"
    resource = _only_update(card)
    assert (resource["id"], resource["intent"], resource["priority"]) == ("example-request-id", "plan", "stat")
    assert resource["code"]["coding"][0] == {"system": "http://loinc.org", "code": "42698-1",
                                             "display": "MR Cervical and thoracic and lumbar spine"}


def test_order_select_judges_only_the_selection(post: Post) -> None:
    xray, lab = fb.draft_order(fb.XRAY_LUMBAR_CPT), fb.draft_order(fb.CALCIUM_LAB_LOINC)
    request = fb.order_hook_request("order-select", fb.patient(), [xray, lab],
                                    selections=[f"ServiceRequest/{lab['id']}"], **_warning())
    assert _cards(post(SELECT, request)) == []


@pytest.mark.parametrize(("drafts", "expected"), [
    (lambda: [fb.draft_order(fb.XRAY_LUMBAR_CPT)], ["warning"]),
    (lambda: [fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="urgent")], []),
    (lambda: [fb.draft_medication(fb.FULVESTRANT)], []),
], ids=["lumbar X-ray", "urgent whole-spine MRI", "a medication"])
def test_order_sign_judges_every_draft(post: Post, drafts: Callable[[], list[dict[str, Any]]],
                                       expected: list[str]) -> None:
    orders = drafts()
    request = fb.order_hook_request("order-sign", fb.patient(), orders, **_warning())
    cards = _cards(post(SIGN, request))
    assert [c["indicator"] for c in cards] == expected
    if cards:
        assert _only_update(cards[0])["id"] == orders[0]["id"]


@pytest.mark.parametrize(("path", "hook"), [(SELECT, "order-select"), (SIGN, "order-sign")])
@pytest.mark.parametrize(("patient_id", "expected"), [(WARNING_ID, "warning"), (CRITICAL_ID, "critical")])
def test_with_a_fhir_server_to_fetch_from(httpserver: HTTPServer, service_client: Any, path: str, hook: str,
                                          patient_id: str, expected: str) -> None:
    server = FhirTestServer(httpserver, charts(), token=TOKEN)
    request = fb.order_hook_request(hook, None, [_sandbox_draft(patient_id)], patient_id=patient_id)
    request.pop("prefetch")
    request["context"]["patientId"] = patient_id
    request["fhirServer"] = server.base_url
    request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "patient/*.read", "subject": "mscc-alert"}
    (card,) = _cards(service_client.post(path, json=request), patient_id)
    assert card["indicator"] == expected
    assert _only_update(card)["id"] == "example-request-id"
    assert {s.authorization for s in server.seen} == {f"Bearer {TOKEN}"}


def _bad(request: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    request["context"][where] = value
    return request


BAD: dict[str, tuple[str, Callable[[], dict[str, Any]], list[str]]] = {
    "draftOrders not a Bundle": (SIGN, lambda: _bad(
        fb.order_hook_request("order-sign", fb.patient(), [_sandbox_draft()]), "draftOrders", fb.patient()),
        ["context.draftOrders"]),
    "a draft of another patient": (SIGN, lambda: fb.order_hook_request(
        "order-sign", fb.patient(), [fb.draft_order(fb.XRAY_LUMBAR_CPT),
                                     fb.draft_order(fb.MRI_LUMBAR_CPT, patient_id=fb.OTHER_PATIENT_ID)]),
        ["context.draftOrders.entry[1].resource.subject"]),
    "a selection that names no draft": (SELECT, lambda: fb.order_hook_request(
        "order-select", fb.patient(), [_sandbox_draft()], selections=["ServiceRequest/example-request-id",
                                                                       "ServiceRequest/nowhere"]),
        ["context.selections[1]"]),
    "order-select without selections": (SELECT, lambda: {
        **(r := fb.order_hook_request("order-select", fb.patient(), [_sandbox_draft()])),
        "context": {k: v for k, v in r["context"].items() if k != "selections"}}, ["context"]),
    "order-sign without draftOrders": (SIGN, lambda: {
        **(r := fb.order_hook_request("order-sign", fb.patient(), [_sandbox_draft()])),
        "context": {k: v for k, v in r["context"].items() if k != "draftOrders"}}, ["context"]),
    "more draft orders than the limit": (SIGN, lambda: fb.order_hook_request(
        "order-sign", fb.patient(), [fb.draft_order(fb.XRAY_LUMBAR_CPT, order_id=f"d{i}") for i in range(201)]),
        ["context.draftOrders.entry"]),
    "the other order hook": (SIGN, lambda: fb.order_hook_request("order-select", fb.patient(), [_sandbox_draft()]),
                             ["hook"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_order_context_is_a_400_naming_the_field(post: Post, case: str) -> None:
    path, build, expression = BAD[case]
    response = post(path, build())
    assert response.status_code == 400, response.text[:500]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["expression"] == expression, issue


def test_feedback_is_accepted_on_an_order_card(service_client: Any) -> None:
    request = fb.order_hook_request("order-select", fb.patient(), [_sandbox_draft()], **_critical())
    (card,) = _cards(service_client.post(SELECT, json=request))
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "accepted",
                              "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                              "outcomeTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}]}
    response = service_client.post(f"{SELECT}/feedback", json=feedback)
    assert response.status_code == 200, response.text
    assert response.json()["issue"][0]["diagnostics"] == "Feedback received: 1 item(s), 1 new"
    # The card was issued by order-select, not by order-sign: feedback there is refused.
    response = service_client.post(f"{SIGN}/feedback", json=feedback)
    assert "1 refused" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.e2e
@pytest.mark.parametrize(("hook", "drafts", "expected"), [
    ("order-select", lambda: [_sandbox_draft()], "critical"),
    ("order-sign", lambda: [fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="stat")], None),
])
def test_cli_evaluate_picks_the_service_by_hook(tmp_path: Path, hook: str,
                                                drafts: Callable[[], list[dict[str, Any]]],
                                                expected: str | None) -> None:
    path = tmp_path / f"{hook}.json"
    path.write_text(json.dumps(fb.order_hook_request(hook, fb.patient(), drafts(), **_critical())))
    result = subprocess.run([sys.executable, "-m", "cds_hooks", "evaluate", str(path), "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    cards = json.loads(result.stdout)["cards"]
    assert [c["indicator"] for c in cards] == ([expected] if expected else [])


# --- the real client: what the CDS Hooks sandbox's imaging view sent (tests/data, captured) --------------------
OBSERVED = ROOT / "tests/data/cds-hooks-examples/observed-client-requests"
CAPTURED_ON = datetime(2026, 12, 1, 12, tzinfo=UTC)  # the capture's dates are fixed: evaluate as of that day


@pytest.mark.parametrize(("name", "expected"), [
    ("cds-hooks-sandbox_order-select_request.json", ["warning"]),  # lumbar MRI 72148 for low back pain
    ("cds-hooks-sandbox_order-select_empty-draft_request.json", []),  # page load: an empty draft
])
def test_the_sandbox_imaging_view_requests(name: str, expected: list[str]) -> None:
    from cds_hooks.protocol.fhir_client import FetchLimits
    from cds_hooks.settings import Settings
    from fhir_mapping.terminology import load_terminology

    service = OrderSelectService(load_terminology(), Settings(database_url="memory://").policy(), FetchLimits())
    raw = (OBSERVED / name).read_bytes()
    cards = service.evaluate(service.decode(raw), CAPTURED_ON).cards
    assert_valid_cds_response({"cards": cards}, patient_id="mscc-sandbox-1")
    assert [c["indicator"] for c in cards] == expected
    if cards:
        resource = _only_update(cards[0])
        assert resource["id"] == "example-request-id"
        assert resource["reasonCode"] == json.loads(raw)["context"]["draftOrders"]["entry"][0]["resource"]["reasonCode"]
        assert resource["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "appropriate"
