"""Order-time advice: a drafted spine-imaging order judged against the patient-view decision.

The picture (breast-cancer history, new spinal pain, neurological features, imaging already done) is the
`Decision` that `cards.decision.decide` made for the patient: nothing here re-derives it. Only a `warning` or
`critical` decision ever gives an order card, and its tier is the card's indicator (docs/clinical-rules.md §1.6):

- inadequate: a plain X-ray of the spine; an MRI or CT that, with the other drafts of the same modality in the
  Bundle, covers less than the cervical, thoracic and lumbar spine (CPT has no whole-spine MRI code: the three
  regions drafted together are one); a bone scan, PET or whole-body study with no whole-spine MRI or CT drafted
  beside it. The suggestion turns the first inadequate judged draft into the whole-spine MRI patient-view
  suggests (an `update` of the same id) and deletes the other inadequate judged drafts. When a whole-spine MRI
  is already drafted (or, for a critical decision, already ordered in the record), they are only deleted:
  replacing one would order the MRI twice.
- adequate but too slow: critical needs `stat` or `asap`, warning `urgent`, `asap` or `stat` (a draft with no
  priority yet is left alone). The suggestion updates the priority and nothing else.

Every resource an `update` carries is a whole R4 ServiceRequest with a `reasonCode` (the draft's, else the coded
spinal pain) and the Argonaut PAMA rating `appropriate`: a client following the Argonaut CDS Hooks for PAMA
guidance (the CDS Hooks sandbox's imaging view) applies an update only with both.
- otherwise, or when no judged draft is spine imaging, no card.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Collection, Mapping
from typing import Any, Final

from cards.content import (
    CRITICAL_ACTIONS,
    LINKS,
    MRI_WHOLE_SPINE_TEXT,
    ORDER_LEAD,
    ORDER_MRI,
    ORDER_PRIORITY_ENOUGH,
    ORDER_TIMING,
    ORDER_WHY,
    ORDER_WINDOW,
    OVERRIDE_REASONS,
    PAMA_RATING_EXTENSION,
    PRIORITY,
    SOURCE_URL,
)
from cards.decision import Decision
from cards.render import MAX_SUMMARY, CardContext, card_extension, evidence_line, reason_references
from cards.service_request import mri_whole_spine_request
from cards.version import source_label
from fhir_mapping.draft_orders import DraftOrders, SpineImagingOrder, coverage_regions

# MRI and CT are judged by the regions they cover; CT myelography is a CT of the spine.
_SECTIONAL: Final = {"mri": "mri", "ct": "ct", "ct-myelography": "ct"}
# NICE NG234's whole spine; the sacrum is imaged with the lumbar spine, and CPT's three regional codes have none.
_WHOLE_SPINE: Final = frozenset({"cervical", "thoracic", "lumbar"})
# The draft's fields a replacement keeps: who and why it is ordered, and the draft's own identity and state.
_KEPT: Final = ("id", "status", "intent", "subject", "encounter", "requester", "reasonCode", "reasonReference")
_KIND_WORDS: Final = {
    "xray": "X-ray", "mri": "MRI", "ct": "CT", "ct-myelography": "CT myelogram", "bone-scan": "a bone scan",
    "pet": "PET", "whole-body-mri": "whole-body MRI", "whole-body-ct": "whole-body CT",
}
_COVERAGE_WORDS: Final = {
    "spine-unspecified": "the spine (levels not given)", "whole-spine": "the whole spine",
    "cervicothoracic": "the cervical and thoracic spine", "thoracolumbar": "the thoracic and lumbar spine",
    "lumbosacral": "the lumbosacral spine",
}
_DETAIL_LIMIT: Final = 600


def order_cards(decision: Decision, drafts: DraftOrders, judged: Collection[str] | None,
                context: CardContext) -> list[dict[str, Any]]:
    """The cards for the drafts named in `judged` (order-select: the selections), or for every draft (None:
    order-sign, drafts without an id included)."""
    tier = decision.indicator
    if tier not in ("warning", "critical") or decision.kind not in ("mscc", "spinal-metastases"):
        return []
    spine = drafts.spine_imaging
    to_judge = list(spine) if judged is None else [d for d in spine if d.reference in judged]
    if not to_judge:
        return []
    whole = _whole_spine_modalities(spine)
    inadequate = [d for d in to_judge if _inadequate(d, whole)]
    # Only a draft with an id can have its priority changed.
    slow = [d for d in to_judge if _SECTIONAL.get(d.kind) in whole and not _fast_enough(d, tier) and d.id]
    if inadequate:
        mri = "drafted" if "mri" in whole else "ordered" if _mri_ordered(decision) else None
        return [_inadequate_card(decision, tier, inadequate, slow, mri, context)]
    if slow:
        return [_priority_card(decision, tier, slow, context)]
    return []


# --- the judgement -----------------------------------------------------------------------------------------
def _whole_spine_modalities(spine: tuple[SpineImagingOrder, ...]) -> set[str]:
    """"mri" / "ct" when that modality's drafts together image the whole spine."""
    covered: dict[str, set[str]] = {}
    for draft in spine:
        modality = _SECTIONAL.get(draft.kind)
        if modality is not None:
            covered.setdefault(modality, set()).update(draft.regions)
    return {modality for modality, regions in covered.items() if regions >= _WHOLE_SPINE}


def _mri_ordered(decision: Decision) -> bool:
    """A whole-spine MRI already ordered in the record (a critical decision keeps its card until the MRI is done,
    docs/clinical-rules.md §1.5): a further scan is then removed, never turned into a second MRI."""
    regions: set[str] = set()
    for study in decision.imaging_ordered:
        regions |= coverage_regions(study.coverage)
    return regions >= _WHOLE_SPINE


def _inadequate(draft: SpineImagingOrder, whole: set[str]) -> bool:
    if draft.kind == "xray":
        return True
    modality = _SECTIONAL.get(draft.kind)
    if modality is not None:
        return modality not in whole
    return not whole  # bone scan, PET, whole-body imaging: fine only beside a whole-spine MRI or CT


def _fast_enough(draft: SpineImagingOrder, tier: str) -> bool:
    # No priority yet is not "too slow" (cards/content.py ORDER_PRIORITY_ENOUGH says why).
    return draft.priority is None or draft.priority in ORDER_PRIORITY_ENOUGH[tier]


# --- words ---------------------------------------------------------------------------------------------------
def _name(draft: SpineImagingOrder) -> str:
    """"X-ray of the lumbosacral spine", "MRI of the lumbar spine", "a bone scan"."""
    kind = _KIND_WORDS.get(draft.kind, "imaging")
    if draft.kind not in ("xray", "mri", "ct", "ct-myelography"):
        return kind
    where = _COVERAGE_WORDS.get(draft.coverage, f"the {draft.coverage} spine")
    return f"{kind} of {where}"


def _reason(draft: SpineImagingOrder) -> str:
    if draft.kind == "xray":
        return "xray"
    return "partial" if draft.kind in _SECTIONAL else "context"


def _detail(decision: Decision, sentence: str, context: CardContext) -> str:
    # The one who orders may not have seen the chart's card (it is shown once): suspected MSCC is an emergency.
    action = f"\n\n{CRITICAL_ACTIONS[0]}" if decision.kind == "mscc" else ""
    why = evidence_line(decision, context.calendar, _DETAIL_LIMIT - len(sentence) - len(action))
    return f"{sentence}\n\n**Why:** {why}{action}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- cards ---------------------------------------------------------------------------------------------------
def _card(decision: Decision, tier: str, summary: str, detail: str, suggestion: dict[str, Any]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary[:MAX_SUMMARY],
        "detail": detail,
        "indicator": tier,
        "source": {"label": source_label(), "url": SOURCE_URL},
    }
    if suggestion["actions"]:  # none when the drafts to remove have no id to name them by
        card["suggestions"], card["selectionBehavior"] = [suggestion], "at-most-one"
    card["overrideReasons"] = [{"system": s, "code": c, "display": d} for s, c, d in OVERRIDE_REASONS]
    card["links"] = [{"label": label, "url": url, "type": "absolute"} for label, url in LINKS]
    card["extension"] = card_extension(decision)
    return card


def _suggestion(label: str, actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"label": label, "uuid": str(uuid.uuid4()), "isRecommended": True, "actions": actions}


def _inadequate_card(decision: Decision, tier: str, inadequate: list[SpineImagingOrder],
                     slow: list[SpineImagingOrder], mri: str | None, context: CardContext) -> dict[str, Any]:
    """`mri`: "drafted" / "ordered" when a whole-spine MRI is already in the session / in the record."""
    # The draft to turn into the MRI: the first that has an id (an update names the draft by it).
    first = next((d for d in inadequate if d.id), inadequate[0])
    timing = ORDER_TIMING[tier]
    if mri is not None:
        # A whole-spine MRI is already drafted or ordered: what falls short is removed, never turned into a
        # second MRI; a drafted MRI's own priority is put right in the same suggestion.
        summary = f"{ORDER_LEAD[tier]}: {_name(first)} not needed – MRI of the whole spine is {mri}"
        sentence = ORDER_WHY["duplicate"].format(what=_name(first), timing=timing, state=mri)
        actions = [_delete_action(d) for d in inadequate if d.reference]
        actions += [_priority_action(d, decision, tier) for d in slow]
        label = f"Remove the {_name(first)} order" if len(inadequate) == 1 else (
            f"Remove the {len(inadequate)} orders the whole-spine MRI makes unnecessary")
    else:
        reason = _reason(first)
        what = f"{_name(first)} {'alone ' if reason == 'context' else ''}is not enough"
        summary = f"{ORDER_LEAD[tier]}: {what} – {ORDER_MRI[tier]}"
        sentence = ORDER_WHY[reason].format(timing=timing, what=_capital(_name(first)))
        replacement = _replacement(first, decision, tier, summary[:MAX_SUMMARY], context)
        if first.id:
            actions = [{"type": "update", "resource": replacement, "description": (
                f"Change the draft order to {MRI_WHOLE_SPINE_TEXT}, priority {replacement['priority']}")}]
        else:  # no draft can be named: the MRI is added beside them
            actions = [{"type": "create", "resource": replacement, "description": (
                f"Add a draft order: {MRI_WHOLE_SPINE_TEXT}, priority {replacement['priority']}")}]
        actions += [_delete_action(d) for d in inadequate if d is not first and d.reference]
        label = f"Order {MRI_WHOLE_SPINE_TEXT} {timing} instead"
    return _card(decision, tier, summary, _detail(decision, sentence, context), _suggestion(label, actions))


def _priority_card(decision: Decision, tier: str, slow: list[SpineImagingOrder],
                   context: CardContext) -> dict[str, Any]:
    drafted, timing = slow[0].priority, ORDER_TIMING[tier]
    what = f"{_KIND_WORDS[_SECTIONAL[slow[0].kind]]} of the whole spine"
    summary = f"{ORDER_LEAD[tier]}: {what} is drafted as {drafted} – make it {PRIORITY[tier]} ({ORDER_WINDOW[tier]})"
    sentence = ORDER_WHY["priority"].format(what=what, priority=drafted, timing=timing)
    label = f"Make the {what} order {PRIORITY[tier]} ({ORDER_WINDOW[tier]})"
    actions = [_priority_action(d, decision, tier) for d in slow]
    return _card(decision, tier, summary, _detail(decision, sentence, context), _suggestion(label, actions))


# --- the actions and the resources they carry ---------------------------------------------------------------
def _delete_action(draft: SpineImagingOrder) -> dict[str, Any]:
    # CDS Hooks 2.0: a delete names its resource by relative reference in resourceId (not in resource).
    return {"type": "delete", "description": f"Remove the draft order: {_name(draft)}",
            "resourceId": str(draft.reference)}


def _priority_action(draft: SpineImagingOrder, decision: Decision, tier: str) -> dict[str, Any]:
    resource = copy.deepcopy(dict(draft.resource))
    resource["priority"] = PRIORITY[tier]
    return {"type": "update", "description": f"Set the priority of the draft order to {PRIORITY[tier]}",
            "resource": _for_clients(resource, decision)}


def _for_clients(resource: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The PAMA rating, and a reasonCode when the draft has none: what a PAMA client needs to apply an update."""
    others = [e for e in resource.get("extension", []) if e.get("url") != PAMA_RATING_EXTENSION["url"]]
    resource["extension"] = [*others, copy.deepcopy(PAMA_RATING_EXTENSION)]
    if not resource.get("reasonCode"):
        reasons = _reason_codes(decision)
        if reasons:
            resource["reasonCode"] = reasons
    return resource


def _reason_codes(decision: Decision) -> list[dict[str, Any]]:
    """The coded spinal pain (else the neurological feature) the card rests on, as CodeableConcepts."""
    pain = list(decision.episode.findings) if decision.episode else list(decision.current_pain)
    for findings in (pain, list(decision.neuro)):
        for finding in findings:
            evidence = finding.evidence
            if evidence.code and "|" in evidence.code:
                system, code = evidence.code.split("|", 1)
                return [{"coding": [{"system": system, "code": code, "display": evidence.display}],
                         "text": evidence.display}]
    return []


def _replacement(draft: SpineImagingOrder, decision: Decision, tier: str, why: str,
                 context: CardContext) -> dict[str, Any]:
    """The whole-spine MRI patient-view would suggest, in place of the draft: same id, state, patient, encounter,
    requester and reasons; the code, priority and time frame of the suggestion."""
    resource = mri_whole_spine_request(
        patient_id=context.patient_id, indicator=tier, now=context.now, reasons=reason_references(decision),
        user_id=context.user_id, why=why,
    )
    kept: Mapping[str, Any] = draft.resource
    for key in _KEPT:
        if key in kept:
            resource[key] = copy.deepcopy(kept[key])
    head = {"resourceType": "ServiceRequest", **({"id": resource["id"]} if "id" in resource else {})}
    return _for_clients(head | {k: v for k, v in resource.items() if k not in head}, decision)
