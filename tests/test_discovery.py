"""GET /cds-services: one patient-view service whose prefetch templates stay inside the 2.0 query subset.

docs/cds-hooks-conformance.md §1.2 (discovery fields), §1.1 (no null or empty values), §1.5 (tokens and the
query subset: reads, type searches, reference params, token params by equality), §5.2 (no `{{today()}}`, which is
3.0-ballot only; Observations filtered by code, never every Observation). `assert_valid_discovery` holds
the generic 2.0 rules and is also run on the spec's own discovery examples (test_spec_examples.py).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from requests.utils import requote_uri

from tests.conftest import SERVICE_ID, LiveService
from tests.scenarios.fhir_builders import (
    DICOM_DCM,
    JSON,
    LOINC,
    PAIN_PRIMARY_LOCATION,
    PREFETCH_KEYS,
    SYMPTOM,
    WHOLE_SPINE_ORDER_CODES,
)

FIELDS_2_0 = {"hook", "title", "description", "id", "prefetch", "usageRequirements", "extension"}
USER_TOKENS_2_0 = {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
TOKEN = re.compile(r"\{\{(.*?)\}\}")
CONTEXT_TOKEN = re.compile(r"context\.[A-Za-z][A-Za-z0-9]*")  # first-level context fields only
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
PATIENT_TOKEN = "{{context.patientId}}"
TYPE_OF_KEY = {
    "patient": "Patient",
    "conditions": "Condition",
    "medicationStatements": "MedicationStatement",
    "medicationRequests": "MedicationRequest",
    "observations": "Observation",
    "serviceRequests": "ServiceRequest",
    "diagnosticReports": "DiagnosticReport",
    "imagingStudies": "ImagingStudy",
    "procedures": "Procedure",
    "encounters": "Encounter",
}
FILTER_OF_TYPE = {
    "Observation": "code",
    "ServiceRequest": "code",
    "DiagnosticReport": "code",
    "Procedure": "code",
    "ImagingStudy": "modality",
    "Encounter": "reason-code",
}
M1_METASTASIS = (LOINC, "21907-1")  # Synthea's only metastasis signal (tests/data/README.md)
MAX_REQUEST_LINE = 8000  # Tomcat's and nginx's default limits are 8 KB


def assert_no_empty_values(value: Any, path: str = "$") -> None:
    """CDS Hooks 2.0: JSON elements SHALL NOT be null or empty (`null`, "", [], {})."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, item in children:
        where = f"{path}.{name}" if isinstance(value, dict) else f"{path}[{name}]"
        assert item is not None and item != "" and item != [] and item != {}, f"empty value at {where}"
        assert_no_empty_values(item, where)


def assert_valid_discovery(body: Any) -> None:
    """The CDS Hooks 2.0 discovery response rules (docs/cds-hooks-conformance.md §1.2, §1.5)."""
    assert isinstance(body, dict) and isinstance(body.get("services"), list), "discovery is {'services': [...]}"
    for service in body["services"]:
        assert_no_empty_values(service, f"$.services[{service.get('id')}]")
        assert set(service) <= FIELDS_2_0, f"not 2.0 discovery fields: {set(service) - FIELDS_2_0}"
        for field in ("hook", "description", "id"):
            assert isinstance(service.get(field), str), f"{field} is required"
        for field in ("title", "usageRequirements"):
            assert isinstance(service.get(field, ""), str), field
        assert isinstance(service.get("extension", {}), dict), "extension must be an object"
        prefetch = service.get("prefetch", {})
        assert isinstance(prefetch, dict)
        for key, template in prefetch.items():
            assert isinstance(template, str), key
            for token in TOKEN.findall(template):
                assert CONTEXT_TOKEN.fullmatch(token) or token in USER_TOKENS_2_0, f"{key}: token {{{{{token}}}}}"


@pytest.fixture(scope="module")
def discovery(live_service: LiveService) -> JSON:
    response = live_service.session.get(live_service.url("/cds-services"), timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    body: JSON = response.json()
    return body


@pytest.fixture(scope="module")
def service(discovery: JSON) -> JSON:
    (entry,) = [s for s in discovery["services"] if s["id"] == SERVICE_ID]
    return entry


def search_params(template: str) -> tuple[str, list[tuple[str, str]]]:
    """(resource type, [(param, value)]) of a type-level search template."""
    parts = urlsplit(template)
    assert RESOURCE_TYPE.fullmatch(parts.path), template[:80]
    return parts.path, parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)


def filter_codes(template: str) -> set[str]:
    """The codes of a template's token filter, whether written `system|code` or as a bare code."""
    _, params = search_params(template)
    codes: set[str] = set()
    for name, value in params:
        if name in ("code", "modality", "reason-code"):
            codes.update(token.rpartition("|")[2] for token in value.split(","))
    return codes


def test_discovery_follows_the_2_0_rules(discovery: JSON) -> None:
    assert_valid_discovery(discovery)


def test_three_services_patient_view_and_the_two_order_hooks(discovery: JSON) -> None:
    """patient-view, order-select and order-sign, one service each, reading the same evidence the same way."""
    hooks = {s["hook"]: s for s in discovery["services"]}
    assert len(discovery["services"]) == 3
    assert set(hooks) == {"patient-view", "order-select", "order-sign"}
    assert hooks["order-select"]["id"] == "breast-cancer-spine-imaging-order-select"
    assert hooks["order-sign"]["id"] == "breast-cancer-spine-imaging-order-sign"
    for hook in ("order-select", "order-sign"):
        assert hooks[hook]["prefetch"] == hooks["patient-view"]["prefetch"]
        for field in ("title", "description", "usageRequirements"):
            assert len(hooks[hook][field]) > 10 and hooks[hook][field] != hooks["patient-view"][field], field


def test_one_patient_view_service(service: JSON) -> None:
    assert service["id"] == SERVICE_ID
    assert service["hook"] == "patient-view"
    for field in ("title", "description", "usageRequirements"):
        assert isinstance(service[field], str) and len(service[field].strip()) > 10, field
    assert "version" not in service and "hookVersion" not in service  # 3.0-ballot fields


def test_in_process_and_live_discovery_agree(service_client: Any, discovery: JSON) -> None:
    assert service_client.get("/cds-services").json() == discovery


def test_prefetch_declares_the_ten_keys(service: JSON) -> None:
    assert list(service["prefetch"]) == list(PREFETCH_KEYS)


@pytest.mark.parametrize("key", PREFETCH_KEYS)
def test_template_is_in_the_2_0_query_subset(service: JSON, key: str) -> None:
    template = service["prefetch"][key]
    assert "today(" not in template
    assert TOKEN.findall(template) == ["context.patientId"], "only {{context.patientId}}, once"
    if key == "patient":
        assert template == f"Patient/{PATIENT_TOKEN}"
        return
    resource_type, params = search_params(template)
    assert resource_type == TYPE_OF_KEY[key]
    names = [name for name, _ in params]
    assert names[0] == "patient" and params[0][1] == PATIENT_TOKEN
    assert len(names) == len(set(names))
    for name, value in params[1:]:
        assert ":" not in name, f"{name}: no modifiers"  # token params by equality
        assert name == FILTER_OF_TYPE.get(resource_type), f"{resource_type} has an unexpected {name}="
        for token in value.split(","):
            # `system|code`, or a bare code (any system; the service filters by system itself)
            system, bar, code = token.rpartition("|")
            assert code and "|" not in code, f"{name}={token!r}"
            assert not bar or urlsplit(system).scheme in ("http", "https"), f"{name}={token!r}"


@pytest.mark.parametrize("resource_type", sorted(FILTER_OF_TYPE))
def test_observations_and_imaging_are_filtered(service: JSON, resource_type: str) -> None:
    """Never `Observation?patient=...` alone: an EHR would send every vital sign and lab
    (docs/cds-hooks-conformance.md §5.2)."""
    key = next(k for k, t in TYPE_OF_KEY.items() if t == resource_type)
    _, params = search_params(service["prefetch"][key])
    assert FILTER_OF_TYPE[resource_type] in [name for name, _ in params]
    assert filter_codes(service["prefetch"][key])


def test_observation_filter_holds_the_codes_the_rules_read(service: JSON) -> None:
    codes = filter_codes(service["prefetch"]["observations"])
    for coding in (SYMPTOM, PAIN_PRIMARY_LOCATION):
        assert coding["code"] in codes
    assert M1_METASTASIS[1] in codes


@pytest.mark.parametrize("key", ["serviceRequests", "diagnosticReports", "procedures"])
def test_imaging_filters_hold_the_whole_spine_mri_codes(service: JSON, key: str) -> None:
    assert filter_codes(service["prefetch"][key]) >= {code for _, code in WHOLE_SPINE_ORDER_CODES}


def test_imaging_studies_filter_includes_mr(service: JSON) -> None:
    template = service["prefetch"]["imagingStudies"]
    assert f"modality={DICOM_DCM}|MR," in template or template.endswith(f"modality={DICOM_DCM}|MR")


@pytest.mark.parametrize("key", PREFETCH_KEYS)
def test_filled_template_fits_a_default_request_line(service: JSON, key: str) -> None:
    filled = service["prefetch"][key].replace(PATIENT_TOKEN, "x" * 64)
    request_line = f"GET {requote_uri('https://ehr.example.org/fhir/r4/' + filled)} HTTP/1.1"
    assert len(request_line.encode()) < MAX_REQUEST_LINE


# EHRs commonly refuse prefetch URLs beyond 2,048 characters (the usual URL limit of browsers and proxies).
PATIENT_ID_64 = "0f8fad5b-d9cb-469f-a165-70867728950e-" + "a" * 27  # a long but realistic id: 64 characters


@pytest.mark.parametrize("key", PREFETCH_KEYS)
def test_template_fits_2048_characters_filled_and_percent_encoded(service: JSON, key: str) -> None:
    assert len(PATIENT_ID_64) == 64
    filled = service["prefetch"][key].replace(PATIENT_TOKEN, PATIENT_ID_64)
    # the strictest encoding a client may apply: everything but unreserved characters and the URL's own / ? = &
    assert len(quote(filled, safe="/?=&")) <= 2048, (key, len(quote(filled, safe="/?=&")))
