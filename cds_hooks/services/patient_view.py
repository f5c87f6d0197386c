"""`breast-cancer-back-pain` on the `patient-view` hook: the chart is opened."""

from __future__ import annotations

from typing import Any

from cards.evaluate import Evaluation
from cds_hooks.protocol.requests import HookContext, HookRequest
from cds_hooks.services.base import Card, CdsService

SERVICE_ID = "breast-cancer-back-pain"
HOOK = "patient-view"


class PatientViewContext(HookContext, frozen=True):
    """CDS Hooks 2.0 patient-view context: patientId, userId, encounterId (HookContext has them all)."""


class PatientViewService(CdsService):
    id = SERVICE_ID
    hook = HOOK
    title = "Breast cancer + new back pain: spinal metastases / MSCC alert"
    description = (
        "Fires when a patient with a history of breast cancer has NEW back (spinal) pain. Returns a `warning` "
        "card for suspected spinal metastases (MRI of the whole spine within 1 week) or a `critical` card for "
        "suspected metastatic spinal cord compression (spinal pain with limb weakness, numbness, gait "
        "disturbance, bladder or bowel dysfunction, or a coded cord compression / cauda equina: MRI whole spine "
        "within 24 h), following NICE NG234, QS56 and CG75. Cards cite their evidence and suggest a whole-spine "
        "MRI order."
    )
    usage_requirements = (
        "Send FHIR R4 data: the prefetch keys below, or a fhirServer (with fhirAuthorization when the server "
        "needs a token) from which missing keys are fetched. Adults only. Conditions coded in SNOMED CT or "
        "ICD-10-CM, medications in RxNorm, observations and imaging in LOINC or SNOMED CT."
    )
    context_model = PatientViewContext
    suppress_repeats = True  # a chart is opened many times a day: the same card once per episode

    def cards(self, request: HookRequest[Any, Any], evaluation: Evaluation, checked: Any) -> list[Card]:
        return evaluation.cards
