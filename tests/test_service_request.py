"""The suggested MRI order is built as plain JSON (no per-request validation): it must be valid R4 as it stands
for every shape the inputs can take, and a userId becomes the requester only when it is a Practitioner(Role)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cards.service_request import mri_whole_spine_request

NOW = datetime(2026, 11, 21, 7, 30, 15, 123456, tzinfo=UTC)


def _order(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "patient_id": "p-1", "indicator": "warning", "now": NOW, "reasons": [], "user_id": None,
        "why": "Suspected spinal metastases",
    }
    arguments.update(overrides)
    return mri_whole_spine_request(**arguments)  # type: ignore[arg-type]


def _valid_as_is(resource: dict[str, object]) -> None:
    assert ServiceRequest.model_validate(resource).model_dump(mode="json", exclude_none=True) == resource


@pytest.mark.parametrize("indicator, priority, days", [("warning", "urgent", 7), ("critical", "stat", 1)])
def test_order_is_valid_r4_with_its_deadline(indicator: str, priority: str, days: int) -> None:
    order = _order(indicator=indicator, reasons=["Condition/c1", "Observation/o1", "Condition/c1",
                                                   "MedicationStatement/m1"])
    _valid_as_is(order)
    assert order["priority"] == priority
    end = datetime.fromisoformat(order["occurrencePeriod"]["end"])  # type: ignore[index]
    assert end - datetime.fromisoformat(order["occurrencePeriod"]["start"]) == timedelta(days=days)  # type: ignore[index]
    # Duplicates are dropped and a MedicationStatement cannot be an R4 reasonReference.
    assert order["reasonReference"] == [{"reference": "Condition/c1"}, {"reference": "Observation/o1"}]


def test_instants_are_utc_whatever_zone_now_is_in() -> None:
    order = _order(now=NOW.astimezone(timezone(timedelta(hours=-5))))
    _valid_as_is(order)
    assert order["occurrencePeriod"] == {"start": "2026-11-21T07:30:15Z", "end": "2026-11-28T07:30:15Z"}


@pytest.mark.parametrize("user_id, requester", [
    ("Practitioner/abc-1", {"reference": "Practitioner/abc-1"}),
    ("PractitionerRole/r.2", {"reference": "PractitionerRole/r.2"}),
    ("Patient/p-1", None),
    ("Practitioner/abc\n", None),
    ("Practitioner/a b", None),
    ("Practitioner/", None),
    ("https://ehr.example/Practitioner/1", None),
])
def test_requester_only_from_a_practitioner_reference(user_id: str, requester: object) -> None:
    order = _order(user_id=user_id)
    _valid_as_is(order)
    assert order.get("requester") == requester
