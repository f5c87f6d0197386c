"""What a CDS service is: its id, its hook, its context model, its prefetch templates, and how a request
becomes cards.

Every service reads the same FHIR evidence (the prefetch templates of cds_hooks.protocol.prefetch) and runs the
one decision (cards.evaluate → cards.decision); a service says only what its hook adds: the context it takes,
what it checks in that context, and which cards the decision gives at its moment. The steps that read the
prefetch and fetch what it lacks are shared here, so the HTTP route, the CLI and the tests run every hook alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

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
from cds_hooks.protocol.requests import HookContext, HookRequest, RequestDecoder
from fhir_mapping.terminology import Terminology

Card = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one call's context may hold (the body's size is bounded before it is decoded; this bounds the work)."""

    max_draft_orders: int = 200  # order-select / order-sign: context.draftOrders entries


@dataclass(frozen=True, slots=True)
class Outcome:
    """The cards to answer with, the evaluation they came from, and where its data came from."""

    cards: list[Card]
    evaluation: Evaluation
    gathered: Gathered


class CdsService(ABC):
    """One CDS service on one hook. Subclasses set the class attributes and `cards`."""

    id: ClassVar[str]
    hook: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    usage_requirements: ClassVar[str]
    context_model: ClassVar[type[HookContext]]
    # Whether a card already shown for the same evidence is held back (cds_hooks.feedback.suppression).
    suppress_repeats: ClassVar[bool] = False

    def __init__(self, terminology: Terminology, policy: Policy, limits: FetchLimits,
                 servers: FhirServerPolicy | None = None, request_limits: RequestLimits | None = None) -> None:
        """`servers`: the FHIR servers each client may name (default: open mode, loopback only)."""
        self.terminology = terminology
        self.policy = policy
        self.limits = limits
        self.request_limits = request_limits or RequestLimits()
        self.servers = servers or FhirServerPolicy({}, None)
        self.templates = build_templates(terminology)
        self._decoder = RequestDecoder(self.hook, self.context_model)

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "id": self.id,
            "prefetch": dict(self.templates),
            "usageRequirements": self.usage_requirements,
        }

    def decode(self, body: bytes | bytearray | memoryview) -> HookRequest[Any, Any]:
        """The request, decoded (BadRequest naming the field otherwise); its context is checked by `check`, in
        the first step of the evaluation (off the event loop: it may validate resources)."""
        return self._decoder.decode(body)

    def check(self, request: HookRequest[Any, Any]) -> Any:
        """What the hook's context must hold beyond its model's types, read once: raise BadRequest naming the
        field, or return what `cards` needs of it. patient-view needs nothing more: its model says it all."""
        return None

    @abstractmethod
    def cards(self, request: HookRequest[Any, Any], evaluation: Evaluation, checked: Any) -> list[Card]:
        """The cards this service answers with, given the one decision for the patient and `check`'s result."""

    def evaluate(self, request: HookRequest[Any, Any], now: datetime | None = None,
                 issuer: str | None = None) -> Outcome:
        """Everything in the calling thread, fetches included (the CLI, tests)."""
        checked = self.check(request)
        gathered = gather(request, self.templates, self.limits, self.terminology, self.servers, issuer)
        gathered.checked = checked
        return self.decide(request, gathered, now)

    # --- the steps, for the HTTP route: it runs fetches in their own pool (cds_hooks.protocol.fetch_pool) ------
    def evaluate_prefetched(self, request: HookRequest[Any, Any]) -> Outcome | Gathered:
        """The outcome if the prefetch holds everything, else what was read so far (`to_fetch` says the rest)."""
        checked = self.check(request)
        gathered = read_prefetch(request, self.templates, self.terminology)
        gathered.checked = checked
        return gathered if gathered.to_fetch else self.decide(request, gathered)

    def plan_fetch(self, request: HookRequest[Any, Any], gathered: Gathered, issuer: str | None) -> FetchPlan:
        return plan_fetch(request, self.templates, gathered, self.servers, issuer)

    def fetch_and_decide(self, request: HookRequest[Any, Any], gathered: Gathered, plan: FetchPlan,
                         budget: FetchBudget, executor: Executor) -> Outcome:
        fetch_missing(request, self.templates, gathered, plan, self.limits, budget, self.terminology, executor)
        return self.decide(request, gathered)

    def not_fetched(self, request: HookRequest[Any, Any], gathered: Gathered, log_detail: str) -> PreconditionFailed:
        return not_fetched(request, self.templates, gathered.to_fetch, log_detail)

    def decide(self, request: HookRequest[Any, Any], gathered: Gathered, now: datetime | None = None) -> Outcome:
        evaluation = evaluate_documents(
            gathered.documents,
            patient_id=request.context.patientId,
            user_id=request.context.userId,
            now=now or datetime.now(UTC),
            policy=self.policy,
            terminology=self.terminology,
        )
        return Outcome(self.cards(request, evaluation, gathered.checked), evaluation, gathered)
