"""The order services: `order-select` (orders just selected) and `order-sign` (orders about to be signed).

Both judge the drafted spine-imaging orders of `context.draftOrders` (CDS Hooks 2.0 order-select and order-sign
hooks) against the one decision patient-view makes for the patient, from the same prefetch templates: a lumbar
X-ray, a lumbar-only MRI or a bone scan for a patient with the picture of suspected spinal metastases or MSCC
gets a card that replaces it by the whole-spine MRI (docs/clinical-rules.md §1.6; cards/order_advice.py).
order-select judges only `context.selections`; order-sign every draft.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from cards.evaluate import Evaluation
from cards.order_advice import order_cards
from cards.render import CardContext
from cds_hooks.protocol.errors import BadRequest
from cds_hooks.protocol.requests import HookContext, HookRequest
from cds_hooks.services.base import Card, CdsService
from fhir_mapping.draft_orders import DraftOrders, DraftOrdersError, check_selections, read_draft_orders


class OrderSignContext(HookContext, frozen=True, kw_only=True):
    """CDS Hooks 2.0 order-sign context: patientId, userId, encounterId, and the draft orders (a Bundle, checked
    by fhir_mapping.draft_orders rather than typed here, so that a bad one gets a message naming its entry)."""

    draftOrders: Any


class OrderSelectContext(OrderSignContext, frozen=True, kw_only=True):
    """CDS Hooks 2.0 order-select context: order-sign's, plus `selections` (relative references into draftOrders)."""

    selections: Any


_USAGE = (
    "Send FHIR R4 data: the prefetch keys below (the same as the patient-view service's), or a fhirServer (with "
    "fhirAuthorization when the server needs a token) from which missing keys are fetched, and the draft orders "
    "in context.draftOrders (ServiceRequests coded in CPT, LOINC or SNOMED CT; other orders are ignored). Adults "
    "only."
)
_WHAT = (
    "Judges a drafted spine-imaging order for a patient with a history of breast cancer and NEW back (spinal) pain "
    "(the picture for which the patient-view service gives its warning or critical card). A plain X-ray, an MRI "
    "or CT of less than the whole spine, or a bone scan or PET alone gets a card of that tier whose suggestion "
    "replaces the draft by an MRI of the whole spine, stat (suspected MSCC, within 24 h) or urgent (suspected "
    "spinal metastases, within 1 week), following NICE NG234 and the ACR Appropriateness Criteria; a whole-spine "
    "MRI drafted with too low a priority gets a suggestion that raises it."
)


@dataclass(frozen=True, slots=True)
class _Checked:
    drafts: DraftOrders
    judged: Collection[str] | None  # order-select: the selections; order-sign: None, every draft


class _OrderService(CdsService):
    """What the two order hooks share: the draft orders, checked, and the cards for the ones judged."""

    def check(self, request: HookRequest[Any, Any]) -> _Checked:
        drafts = self._drafts(request)
        return _Checked(drafts, self._judged(request, drafts))

    def cards(self, request: HookRequest[Any, Any], evaluation: Evaluation, checked: _Checked) -> list[Card]:
        context = CardContext(request.context.patientId, request.context.userId, evaluation.now,
                              evaluation.zone)
        return order_cards(evaluation.decision, checked.drafts, checked.judged, context)

    def _drafts(self, request: HookRequest[Any, Any]) -> DraftOrders:
        try:
            return read_draft_orders(request.context.draftOrders, request.context.patientId, self.terminology,
                                     max_orders=self.request_limits.max_draft_orders)
        except DraftOrdersError as error:
            raise BadRequest(error.message, expression=[error.expression]) from None

    def _judged(self, request: HookRequest[Any, Any], drafts: DraftOrders) -> Collection[str] | None:
        return None  # order-sign: every draft


class OrderSelectService(_OrderService):
    id: ClassVar[str] = "breast-cancer-spine-imaging-order-select"
    hook: ClassVar[str] = "order-select"
    title: ClassVar[str] = "Spine imaging order for breast cancer + new back pain: whole-spine MRI (order-select)"
    description: ClassVar[str] = _WHAT + " Judges the orders just selected (context.selections)."
    usage_requirements: ClassVar[str] = _USAGE + " context.selections names the orders to judge."
    context_model = OrderSelectContext

    def _judged(self, request: HookRequest[Any, Any], drafts: DraftOrders) -> Collection[str] | None:
        try:
            return check_selections(request.context.selections, drafts)
        except DraftOrdersError as error:
            raise BadRequest(error.message, expression=[error.expression]) from None


class OrderSignService(_OrderService):
    id: ClassVar[str] = "breast-cancer-spine-imaging-order-sign"
    hook: ClassVar[str] = "order-sign"
    title: ClassVar[str] = "Spine imaging order for breast cancer + new back pain: whole-spine MRI (order-sign)"
    description: ClassVar[str] = _WHAT + " Judges every draft order about to be signed."
    usage_requirements: ClassVar[str] = _USAGE
    context_model = OrderSignContext
