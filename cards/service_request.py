"""The suggested order: a FHIR R4 ServiceRequest for MRI of the whole spine.

Built as plain JSON: every part is either fixed content or an id that was already validated (the request's
patientId, references to validated resources, a userId that matches a FHIR relative reference). Validating it
with fhir.resources on every request cost ~0.3 ms, a tenth of the 1,000-resource budget
(docs/performance-budget.md); the tests validate every ServiceRequest the scenarios produce with fhir.resources
R4B instead, and check that validation changes nothing in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cards.content import MRI_WHOLE_SPINE_CODING, MRI_WHOLE_SPINE_TEXT, PRIORITY

# R4 ServiceRequest.reasonReference may point at these types only.
_REASON_TYPES = ("Condition", "Observation", "DiagnosticReport", "DocumentReference")
# CDS Hooks userId for patient-view is Practitioner/, PractitionerRole/, Patient/ or RelatedPerson/ + id; only
# the first two may request an order. The id part is the FHIR id datatype.
_REQUESTER = re.compile(r"(?:Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}")


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
    if user_id and _REQUESTER.fullmatch(user_id):
        resource["requester"] = {"reference": user_id}
    return resource


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
