"""The hook request is decoded in one pass that splits prefetch Bundles into raw entries and captures the
Patient element by element; anything else falls back to a decode that keeps every value raw. Both readings
must give the same cards: the split is only a faster way to the same bytes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest

from cds_hooks.protocol import requests as hook_request
from cds_hooks.protocol.errors import BadRequest
from cds_hooks.protocol.fhir_client import FetchLimits
from cds_hooks.protocol.requests import RequestDecoder
from cds_hooks.services.patient_view import PatientViewContext, PatientViewService
from cds_hooks.settings import Settings
from fhir_mapping.intake import PrefetchBundle, PrefetchPatient, _patient_json
from fhir_mapping.terminology import load_terminology
from tests.scenarios import fhir_builders as fb

NOW = datetime.now(UTC)
SERVICE = PatientViewService(load_terminology(), Settings().policy(), FetchLimits())

RICH_PATIENT: dict[str, Any] = {
    **fb.patient(),
    "meta": {"versionId": "3", "lastUpdated": "2026-01-02T03:04:05Z"},
    "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"}],
    "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                  "valueDateTime": "1963-08-11T14:35:45-05:00"}]},
    "name": [{"family": "Example", "given": ["Ann \"Nan\" Ö"]}],
    "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-1"}],
    "active": True,
}


DECODER = RequestDecoder("patient-view", PatientViewContext)


def _split(body: bytes) -> hook_request.HookRequest[Any, Any]:
    return DECODER.decode(body)


def _raw(body: bytes) -> hook_request.HookRequest[Any, Any]:
    request = DECODER.decode_raw(body)
    hook_request._check(request, "patient-view")
    return request


def _outcome(body: bytes, decode: Callable[[bytes], hook_request.HookRequest[Any, Any]]) -> Any:
    """Cards without their random uuids, and what was skipped; or the error a client would get."""
    try:
        evaluation = SERVICE.evaluate(decode(body), now=NOW).evaluation
    except Exception as exc:  # the same error either way (412 for a paged Bundle, ...)
        return type(exc).__name__, str(exc)
    cards = orjson.loads(orjson.dumps(evaluation.cards).replace(b'"uuid"', b'"_uuid"'))
    for card in cards:
        card.pop("_uuid")
        for suggestion in card.get("suggestions", []):
            suggestion.pop("_uuid")
    return cards, [(s.resource_type, s.reason) for s in evaluation.record.skipped], evaluation.resources_seen


CASES = {
    "warning": fb.hook_request(RICH_PATIENT, conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()]),
    "deceased": fb.hook_request(fb.patient(deceased="2026-01-01"),
                                conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()]),
    "invalid-patient": fb.hook_request({**fb.patient(), "birthDate": "not a date"},
                                       conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()]),
    "patient-unknown-key": fb.hook_request({**fb.patient(), "favouriteColour": "blue"},
                                           conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()]),
    "single-condition": {**fb.hook_request(fb.patient(), conditions=[fb.back_pain()])},
    "broken-entry": fb.hook_request(fb.patient(), conditions={
        "resourceType": "Bundle", "type": "searchset",
        "entry": [{"resource": {"resourceType": "Condition", "code": "not a concept"}},
                  {"resource": fb.breast_cancer(fb.BREAST_CANCER_SNOMED)}, {"resource": fb.back_pain()}]}),
    "outcome-in-bundle": fb.hook_request(fb.patient(), conditions={
        "resourceType": "Bundle", "type": "searchset",
        "entry": [{"resource": {"resourceType": "OperationOutcome", "issue": []}}]}),
    "paged": fb.hook_request(fb.patient(), conditions={
        "resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": "http://x/p2"}],
        "entry": [{"resource": fb.back_pain()}]}),
}
CASES["single-condition"]["prefetch"]["conditions"] = fb.breast_cancer(fb.BREAST_CANCER_SNOMED)


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_and_raw_readings_give_the_same_answer(case: str) -> None:
    body = orjson.dumps(CASES[case])
    assert _outcome(body, _split) == _outcome(body, _raw)


def test_bundles_and_patient_are_split_in_the_request_decode() -> None:
    prefetch = _split(orjson.dumps(CASES["warning"])).prefetch or {}
    assert isinstance(prefetch["patient"], PrefetchPatient)
    assert all(isinstance(prefetch[key], PrefetchBundle) for key in fb.PREFETCH_KEYS[1:])


@pytest.mark.parametrize("case", ["patient-unknown-key", "single-condition"])
def test_other_shapes_fall_back_to_raw_values(case: str) -> None:
    prefetch = _split(orjson.dumps(CASES[case])).prefetch or {}
    assert all(isinstance(value, msgspec.Raw) for value in prefetch.values())


def test_the_rebuilt_patient_is_the_patient_sent() -> None:
    body = orjson.dumps(fb.hook_request(RICH_PATIENT))
    patient = (_split(body).prefetch or {})["patient"]
    assert orjson.loads(_patient_json(patient)) == RICH_PATIENT


def test_malformed_requests_get_the_raw_decoders_message() -> None:
    body = orjson.dumps({**fb.hook_request(fb.patient()), "context": {"patientId": 7}})
    with pytest.raises(BadRequest) as raised:
        DECODER.decode(body)
    assert raised.value.message == "Invalid hook request: Expected `str`, got `int`"
    assert raised.value.expression == ["context.patientId"]
