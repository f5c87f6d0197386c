"""The suggested order: a FHIR R4 ServiceRequest for MRI of the whole spine, validated with fhir.resources."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest

from cards.content import MRI_WHOLE_SPINE_CODING, MRI_WHOLE_SPINE_TEXT, PRIORITY

# R4 ServiceRequest.reasonReference may point at these types only.
_REASON_TYPES = ("Condition", "Observation", "DiagnosticReport", "DocumentReference")
_REQUESTER_TYPES = ("Practitioner/", "PractitionerRole/")


def mri_whole_spine_request(
    *, patient_id: str, indicator: str, now: datetime, reasons: Sequence[str], user_id: str | None,
    why: str,
) -> dict[str, Any]:
    deadline = now + (timedelta(hours=24) if indicator == "critical" else timedelta(days=7))
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "priority": PRIORITY[indicator],
        "code": {"coding": [dict(MRI_WHOLE_SPINE_CODING)], "text": MRI_WHOLE_SPINE_TEXT},
        "subject": {"reference": f"Patient/{patient_id}"},
        "occurrencePeriod": {"start": _instant(now), "end": _instant(deadline)},
        "note": [{"text": why}],
    }
    references = [r for r in dict.fromkeys(reasons) if r.startswith(_REASON_TYPES)]
    if references:
        resource["reasonReference"] = [{"reference": r} for r in references]
    if user_id and user_id.startswith(_REQUESTER_TYPES):
        resource["requester"] = {"reference": user_id}
    validated = ServiceRequest.model_validate(resource)
    dumped: dict[str, Any] = validated.model_dump(mode="json", exclude_none=True)
    return dumped


def _instant(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()
