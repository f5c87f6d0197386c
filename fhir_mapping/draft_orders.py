"""The draft orders of an `order-select` / `order-sign` call: checked, and the spine-imaging ones recognised.

CDS Hooks 2.0 (https://cds-hooks.hl7.org/hooks/order-select/, .../order-sign/): `context.draftOrders` is a Bundle
of the orders being written (ServiceRequest, MedicationRequest, ...; status `draft`), and order-select's
`context.selections` names, by relative reference, the orders just selected, each one in that Bundle.

What is checked, each failure a `DraftOrdersError` carrying the FHIR-path-like place it was found: the value is
a Bundle; every entry holds a resource; no resource names another patient; a ServiceRequest is valid FHIR R4
(`fhir.resources.R4B`); no id is in the Bundle twice. A draft with no id cannot be selected, updated or deleted
(suggestions name drafts by id), but is still judged on order-sign. Other resource types are
kept (they may be selected) but never judged. A ServiceRequest is spine imaging when one of its codings is in
the `spine-imaging` value set (docs/clinical-rules.md §2.10), the same vocabulary patient-view reads.

Draft orders are not part of the patient's record: fhir_mapping/extract.py ignores draft ServiceRequests, and
nothing here feeds the decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from fhir_mapping.terminology import Terminology

__all__ = [
    "DraftOrder",
    "DraftOrders",
    "DraftOrdersError",
    "SpineImagingOrder",
    "check_selections",
    "classify",
    "coverage_regions",
    "read_draft_orders",
]

DRAFT_ORDERS: Final = "context.draftOrders"
SELECTIONS: Final = "context.selections"
SPINE_REGIONS: Final = frozenset({"cervical", "thoracic", "lumbar", "sacral"})
# The value set's coverage attribute -> the spine regions a study of that coverage images. "spine-unspecified"
# (an "MR Spine" code) names no level, so it covers none for sure; whole-body and limited-area studies are not
# studies of the spine's levels at all.
_COVERAGE_REGIONS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "whole-spine": SPINE_REGIONS,
    "cervicothoracic": frozenset({"cervical", "thoracic"}),
    "thoracolumbar": frozenset({"thoracic", "lumbar"}),
    "lumbosacral": frozenset({"lumbar", "sacral"}),
    "cervical": frozenset({"cervical"}),
    "thoracic": frozenset({"thoracic"}),
    "lumbar": frozenset({"lumbar"}),
    "sacral": frozenset({"sacral"}),
})
_ERRORS_SHOWN = 3  # validation errors named in one message
# R4 RequestPriority, a required binding that fhir.resources does not enforce; the order rules read it.
PRIORITIES: Final = ("routine", "urgent", "asap", "stat")


class DraftOrdersError(ValueError):
    """`draftOrders` or `selections` is not what CDS Hooks 2.0 says it is; `expression` says where."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression


@dataclass(frozen=True, slots=True)
class SpineImagingOrder:
    """A drafted ServiceRequest for imaging in the spine-imaging value set."""

    id: str | None  # None: the draft has no id, so a suggestion cannot name it
    reference: str | None  # ServiceRequest/<id>
    kind: str  # mri | ct | ct-myelography | xray | bone-scan | pet | whole-body-mri | whole-body-ct
    coverage: str  # the value set's coverage attribute (whole-spine, lumbar, ...)
    regions: frozenset[str]  # the spine regions it images (all four for whole-spine)
    priority: str | None  # R4 RequestPriority as drafted; None when absent
    display: str  # the matched concept's display
    # The draft JSON as sent, less its empty values: the CDS Hooks sandbox sends `"reasonCode": []`, which a
    # suggestion that hands the draft back must not repeat (CDS Hooks: no empty arrays or objects).
    resource: Mapping[str, Any] = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class DraftOrder:
    reference: str | None  # <type>/<id>; None for a resource without an id
    resource_type: str
    spine_imaging: SpineImagingOrder | None


@dataclass(frozen=True, slots=True)
class DraftOrders:
    orders: tuple[DraftOrder, ...]  # in Bundle order

    @property
    def spine_imaging(self) -> tuple[SpineImagingOrder, ...]:
        return tuple(o.spine_imaging for o in self.orders if o.spine_imaging is not None)

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(o.reference for o in self.orders if o.reference is not None)


def read_draft_orders(value: Any, patient_id: str, terminology: Terminology, *, max_orders: int) -> DraftOrders:
    """Check `context.draftOrders` (already JSON-decoded) for `patient_id` and classify every draft.

    More than `max_orders` entries is refused before any is validated: validating costs about a third of a
    millisecond per ServiceRequest, so the count bounds the CPU one call can ask for."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        raise DraftOrdersError("draftOrders must be a FHIR Bundle of the draft orders", DRAFT_ORDERS)
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        raise DraftOrdersError("Bundle.entry must be an array", f"{DRAFT_ORDERS}.entry")
    if len(entries) > max_orders:
        raise DraftOrdersError(f"draftOrders holds {len(entries)} entries; this service takes at most {max_orders}",
                               f"{DRAFT_ORDERS}.entry")
    orders: list[DraftOrder] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{DRAFT_ORDERS}.entry[{index}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise DraftOrdersError("the entry has no resource", f"{where}.resource")
        where += ".resource"
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or not resource_type:
            raise DraftOrdersError("the resource has no resourceType", f"{where}.resourceType")
        _check_patient(resource, patient_id, where)
        resource_id = resource.get("id")
        if resource_type == "ServiceRequest":
            _validate_service_request(resource, where)
            if "priority" in resource and resource["priority"] not in PRIORITIES:
                raise DraftOrdersError(f"priority must be one of {', '.join(PRIORITIES)}", f"{where}.priority")
        reference = f"{resource_type}/{resource_id}" if isinstance(resource_id, str) and resource_id else None
        if reference is not None:
            if reference in seen:
                raise DraftOrdersError(f"{resource_type} id {resource_id!r} is in the Bundle twice", f"{where}.id")
            seen.add(reference)
        spine = classify(resource, terminology) if resource_type == "ServiceRequest" else None
        orders.append(DraftOrder(reference, resource_type, spine))
    return DraftOrders(tuple(orders))


def check_selections(value: Any, drafts: DraftOrders) -> tuple[str, ...]:
    """order-select's `context.selections`: relative references, each naming a draft in the Bundle."""
    if not isinstance(value, list) or not value:
        raise DraftOrdersError("selections must be a non-empty array of relative references", SELECTIONS)
    known = set(drafts.references)
    for index, selection in enumerate(value):
        if not isinstance(selection, str) or selection not in known:
            raise DraftOrdersError("the selection names no order in draftOrders", f"{SELECTIONS}[{index}]")
    return tuple(dict.fromkeys(value))


def classify(resource: Mapping[str, Any], terminology: Terminology) -> SpineImagingOrder | None:
    """A validated draft ServiceRequest -> what spine imaging it orders, or None if it orders none."""
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    for coding in codings if isinstance(codings, list) else ():
        if not isinstance(coding, dict):
            continue
        concept = terminology.in_value_set("spine-imaging", coding.get("system"), coding.get("code"))
        if concept is None:
            continue
        coverage = str(concept.attributes.get("coverage", "spine-unspecified"))
        resource_id = resource.get("id") if isinstance(resource.get("id"), str) and resource.get("id") else None
        return SpineImagingOrder(
            id=resource_id,
            reference=f"ServiceRequest/{resource_id}" if resource_id else None,
            kind=str(concept.attributes.get("kind", "other")),
            coverage=coverage,
            regions=coverage_regions(coverage),
            priority=resource.get("priority"),
            display=concept.display,
            resource=_pruned(resource),
        )
    return None


def coverage_regions(coverage: str) -> frozenset[str]:
    """The spine regions a study of the value set's `coverage` images (none for sure when it names no level)."""
    return _COVERAGE_REGIONS.get(coverage, frozenset())


def _pruned(value: Any) -> Any:
    """The JSON without null, "", [] or {} anywhere (dropped bottom-up)."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (_pruned(item) for item in value) if v not in (None, "", [], {})]
    return value


def _check_patient(resource: Mapping[str, Any], patient_id: str, where: str) -> None:
    """A draft for another patient (subject, or `patient` on the request types that use it) is refused: the
    hook is about one patient, and a suggestion must never change another's order."""
    for key in ("subject", "patient"):
        target = resource.get(key)
        if not isinstance(target, dict) or "reference" not in target:
            continue
        reference = target["reference"]
        if not isinstance(reference, str) or not _names_patient(reference, patient_id):
            raise DraftOrdersError("the draft order is not for context.patientId", f"{where}.{key}")


def _names_patient(reference: str, patient_id: str) -> bool:
    """Patient/<id>, or an absolute URL ending in it (optionally with a /_history/<version> tail)."""
    path = reference.split("/_history/", 1)[0].rstrip("/")
    return path == f"Patient/{patient_id}" or path.endswith(f"/Patient/{patient_id}")


def _validate_service_request(resource: Mapping[str, Any], where: str) -> None:
    try:
        ServiceRequest.model_validate(resource)
    except ValidationError as error:
        # Where and what only: pydantic's message may quote the input, which stays out of the answer.
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'resource'}: {e['msg']}"
                    for e in error.errors()[:_ERRORS_SHOWN]]
        more = len(error.errors()) - len(problems)
        detail = "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
        raise DraftOrdersError(f"not a valid FHIR R4 ServiceRequest: {detail}", where) from None
    except (TypeError, ValueError) as error:
        raise DraftOrdersError(f"not a valid FHIR R4 ServiceRequest: {type(error).__name__}", where) from None
