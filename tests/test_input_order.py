"""A record makes the same card whatever order its resources come in: each EHR orders a prefetch Bundle its own
way, and a Bulk export's lines reach the sweep in its files' order (fhir_mapping.extract.build_record)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from cds_hooks.protocol.fhir_client import FetchLimits
from cds_hooks.services.patient_view import PatientViewService
from cds_hooks.settings import Settings
from fhir_mapping.terminology import load_terminology
from tests.scenarios import bulk_export as bulk
from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import SCENARIOS

SERVICE = PatientViewService(load_terminology(), Settings().policy(), FetchLimits())


def _reordered(request: Any, seed: int) -> Any:
    """The request with every prefetch Bundle's entries, and the prefetch keys, in another order."""
    request = orjson.loads(orjson.dumps(request))
    rng = random.Random(seed)
    prefetch = request.get("prefetch")
    if isinstance(prefetch, dict):
        keys = list(prefetch)
        rng.shuffle(keys)
        request["prefetch"] = {key: prefetch[key] for key in keys}
        for bundle in prefetch.values():
            if isinstance(bundle, dict) and isinstance(bundle.get("entry"), list):
                rng.shuffle(bundle["entry"])
    return request


def _cards(request: Any) -> list[Any]:
    cards = SERVICE.evaluate(SERVICE.decode(orjson.dumps(request))).evaluation.cards
    found = orjson.loads(orjson.dumps(cards))
    for card in found:
        card.pop("uuid", None)
        for suggestion in card.get("suggestions", []):
            suggestion.pop("uuid", None)
            for action in suggestion.get("actions", []):
                if isinstance(action.get("resource"), dict):
                    action["resource"].pop("occurrencePeriod", None)  # from the clock
    return found


@pytest.mark.parametrize("request_body", [param.values[0] for param in SCENARIOS],
                         ids=[param.id for param in SCENARIOS])
def test_a_reordered_record_gets_the_same_cards(request_body: Any) -> None:
    expected = _cards(request_body)
    for seed in (1, 2, 3):
        assert _cards(_reordered(request_body, seed)) == expected


def test_reordering_reaches_records_with_several_resources() -> None:
    # The property is only tested where there is an order to change.
    sizes = [sum(len(b.get("entry", [])) for b in (p.values[0].get("prefetch") or {}).values() if isinstance(b, dict))
             for p in SCENARIOS]
    assert sum(size >= 2 for size in sizes) > len(SCENARIOS) * 0.9


def _synthea_with_mscc(path: Any) -> list[Any]:
    """A whole Synthea record with a breast cancer, spinal pain in two places and two neurological features
    added: for most, a critical card with many findings to list, among hundreds of resources."""
    added = [fb.breast_cancer(patient_id="p1"), fb.back_pain(patient_id="p1"),
             fb.back_pain(*fb.THORACIC_PAIN, onset_days_ago=5, patient_id="p1"),
             fb.finding(fb.MUSCLE_WEAKNESS, patient_id="p1"), fb.finding(fb.DIFFICULTY_WALKING, patient_id="p1")]
    return list(bulk.synthea_patient(path, "p1")) + bulk.renamed(added, {fb.PATIENT_ID: "p1"})


def test_most_synthea_records_with_those_findings_get_a_critical_card() -> None:
    # Some are refused for their own reasons (a record that says the pain is not new, say): the test below
    # compares cards only where most are cards.
    paths = bulk.synthea_bundles()
    critical = sum([c["indicator"] for c in _cards(bulk.hook_request_for("p1", _synthea_with_mscc(path)))]
                   == ["critical"] for path in paths)
    assert critical >= len(paths) * 2 / 3


@pytest.mark.parametrize("path", bulk.synthea_bundles(), ids=lambda path: path.stem[:24])
def test_a_reordered_synthea_record_gets_the_same_cards(path: Any) -> None:
    resources = _synthea_with_mscc(path)
    expected = _cards(bulk.hook_request_for("p1", resources))
    for seed in (1, 2):
        shuffled = list(resources)
        random.Random(seed).shuffle(shuffled)
        assert _cards(bulk.hook_request_for("p1", shuffled)) == expected
