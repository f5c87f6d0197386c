"""The one service: `breast-cancer-back-pain` on the `patient-view` hook."""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cards.evaluate import Evaluation, evaluate_documents
from cards.policy import Policy
from cds_hooks.protocol.errors import PreconditionFailed
from cds_hooks.protocol.fhir_client import FetchBudget, FetchLimits
from cds_hooks.protocol.fhir_servers import FhirServerPolicy
from cds_hooks.protocol.prefetch import (
    FetchPlan,
    Gathered,
    build_templates,
    fetch_missing,
    gather,
    not_fetched,
    plan_fetch,
    read_prefetch,
)
from cds_hooks.protocol.requests import HookRequest
from fhir_mapping.terminology import Terminology

SERVICE_ID = "breast-cancer-back-pain"
HOOK = "patient-view"

_log = logging.getLogger("mscc_alert.service")

DESCRIPTION = (
    "Fires when a patient with a history of breast cancer has NEW back (spinal) pain. Returns a `warning` "
    "card for suspected spinal metastases (MRI of the whole spine within 1 week) or a `critical` card for "
    "suspected metastatic spinal cord compression (spinal pain with limb weakness, numbness, gait disturbance, "
    "bladder or bowel dysfunction, or a coded cord compression / cauda equina: MRI whole spine within 24 h), "
    "following NICE NG234, QS56 and CG75. Cards cite their evidence and suggest a whole-spine MRI order."
)
USAGE_REQUIREMENTS = (
    "Send FHIR R4 data: the prefetch keys below, or a fhirServer (with fhirAuthorization when the server "
    "needs a token) from which missing keys are fetched. Adults only. Conditions coded in SNOMED CT or "
    "ICD-10-CM, medications in RxNorm, observations and imaging in LOINC or SNOMED CT."
)


@dataclass(frozen=True, slots=True)
class Outcome:
    evaluation: Evaluation
    gathered: Gathered


class PatientViewService:
    id = SERVICE_ID
    hook = HOOK

    def __init__(self, terminology: Terminology, policy: Policy, limits: FetchLimits,
                 servers: FhirServerPolicy | None = None) -> None:
        """`servers`: the FHIR servers each client may name (default: open mode, loopback only)."""
        self.terminology = terminology
        self.policy = policy
        self.limits = limits
        self.servers = servers or FhirServerPolicy({}, None)
        self.templates = build_templates(terminology)

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "title": "Breast cancer + new back pain: spinal metastases / MSCC alert",
            "description": DESCRIPTION,
            "id": self.id,
            "prefetch": dict(self.templates),
            "usageRequirements": USAGE_REQUIREMENTS,
        }

    def evaluate(self, request: HookRequest[Any], now: datetime | None = None, issuer: str | None = None) -> Outcome:
        """Everything in the calling thread, fetches included (the CLI, tests)."""
        gathered = gather(request, self.templates, self.limits, self.terminology, self.servers, issuer)
        return self.decide(request, gathered, now)

    # --- the steps, for the HTTP route: it runs fetches in their own pool (cds_hooks.protocol.fetch_pool) ----------
    def evaluate_prefetched(self, request: HookRequest[Any]) -> Outcome | Gathered:
        """The outcome if the prefetch holds everything, else what was read so far (`to_fetch` says the rest)."""
        gathered = read_prefetch(request, self.templates, self.terminology)
        return gathered if gathered.to_fetch else self.decide(request, gathered)

    def plan_fetch(self, request: HookRequest[Any], gathered: Gathered, issuer: str | None) -> FetchPlan:
        return plan_fetch(request, self.templates, gathered, self.servers, issuer)

    def fetch_and_decide(self, request: HookRequest[Any], gathered: Gathered, plan: FetchPlan, budget: FetchBudget,
                         executor: Executor) -> Outcome:
        fetch_missing(request, self.templates, gathered, plan, self.limits, budget, self.terminology, executor)
        return self.decide(request, gathered)

    def not_fetched(self, request: HookRequest[Any], gathered: Gathered, log_detail: str) -> PreconditionFailed:
        return not_fetched(request, self.templates, gathered.to_fetch, log_detail)

    def decide(self, request: HookRequest[Any], gathered: Gathered, now: datetime | None = None) -> Outcome:
        evaluation = evaluate_documents(
            gathered.documents,
            patient_id=request.context.patientId,
            user_id=request.context.userId,
            now=now or datetime.now(UTC),
            policy=self.policy,
            terminology=self.terminology,
        )
        return Outcome(evaluation, gathered)
