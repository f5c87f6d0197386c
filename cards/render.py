"""A decision -> CDS Hooks 2.0 cards a clinician can act on in seconds.

Spec rules kept here (cds-hooks.md §1.1, §1.6): summary < 140 characters; detail is GitHub-flavoured
Markdown (we emit no raw HTML, and escape text that came from the record); a uuid on every card and
suggestion; selectionBehavior whenever there are suggestions; every override reason has a display; no
null or empty value anywhere.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cards.content import (
    CRITICAL_ACTIONS,
    END_OF_LIFE_NOTE,
    GUIDELINES,
    MRI_WHOLE_SPINE_TEXT,
    OVERRIDE_REASON_SYSTEM,
    OVERRIDE_REASONS,
    SOURCE_URL,
    SUGGESTIVE_ACTION,
    WARNING_ACTIONS,
)
from cards.decision import Decision
from cards.service_request import mri_whole_spine_request
from cards.version import CARD_EXTENSION_KEY, rules_version, source_label
from fhir_mapping.dates import DateSpan
from fhir_mapping.findings import Evidence

MAX_SUMMARY = 139
# Characters that could start Markdown or HTML markup inside record text.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~])")


@dataclass(frozen=True, slots=True)
class CardContext:
    patient_id: str
    user_id: str | None
    now: datetime


def render_cards(decision: Decision, context: CardContext) -> list[dict[str, Any]]:
    if decision.indicator is None:
        return []
    if decision.kind == "unreadable-records":
        return [_unreadable_card(decision)]
    return [_clinical_card(decision, context)]


def _text(value: str) -> str:
    """Record text inside Markdown: escaped, on one line, bounded."""
    flat = " ".join(value.split())[:160]
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def _day(span: DateSpan) -> str:
    """As written when partial ("2019", "2024-05"); the calendar day otherwise."""
    return span.text if len(span.text) < 10 else span.earliest.date().isoformat()


def _ago(span: DateSpan, now: datetime) -> str:
    """Days while they decide "new" (the window is weeks); months and years for the long history."""
    days = (now - span.latest).days
    if days < 0:
        return "in the future"
    if days == 0:
        return "today"
    if days < 90:
        return f"{days} day{'s' if days != 1 else ''} ago"
    if days < 730:
        return f"{days // 30} months ago"
    return f"{days // 365} years ago"


def _when(evidence: Evidence, now: datetime) -> str:
    if evidence.date is None:
        return "date not documented"
    when = f"{_day(evidence.date)} ({_ago(evidence.date, now)})"
    if evidence.date_kind == "recorded":
        return f"recorded {when}; onset not documented"
    return f"{evidence.date_kind} {when}"


def _cite(evidence: Evidence, now: datetime) -> str:
    """One piece of evidence: what, when, status, and the resource to find it by."""
    parts = [_text(evidence.display), _text(_when(evidence, now))]
    if evidence.status:
        parts.append(_text(evidence.status))
    if evidence.reference:
        parts.append(_text(evidence.reference))
    return " · ".join(parts)


def _bullets(lines: Iterable[str]) -> str:
    """A Markdown list; a line starting with two spaces becomes an item of the list above it."""
    return "\n".join(f"  - {line[2:]}" if line.startswith("  ") else f"- {line}" for line in lines)


def _summary(decision: Decision) -> str:
    metastatic = bool(decision.metastases)
    if decision.kind == "mscc":
        if decision.imaging_ordered:
            text = "Suspected MSCC – oncological emergency: ensure the ordered whole-spine MRI is done within 24 h"
        else:
            text = "Suspected spinal cord compression (MSCC) in breast cancer: MRI whole spine within 24 h – emergency"
    elif decision.kind == "spinal-metastases":
        lead = "Known bone metastases + new spinal pain" if metastatic else (
            "Breast cancer history + new spinal pain")
        text = f"{lead}: suspected spinal metastases – MRI whole spine within 1 week"
    elif decision.weak_history == "in-situ":
        text = "New spinal pain, history of breast carcinoma in situ only: review; imaging if other red flags"
    elif decision.downgraded_for_end_of_life:
        text = "Suspected spinal metastases/MSCC in a patient in palliative care: discuss goals of care"
    else:
        text = "New spinal pain on a breast-cancer drug, no coded breast cancer: check the history"
    return text[:MAX_SUMMARY]


def _history_lines(decision: Decision, now: datetime) -> list[str]:
    lines = [_cite(c.evidence, now) for c in decision.history]
    if decision.history_drugs and not decision.history:
        drugs = ", ".join(sorted({d.ingredient for d in decision.history_drugs}))
        if decision.weak_history == "tier-b-drug":
            lines.append(f"No breast-cancer diagnosis is coded; the patient has {drugs}, which is also used "
                         "without cancer (risk reduction, fertility, osteoporosis). Check the history.")
        else:
            lines.append(f"Breast-cancer history **inferred** from medication ({drugs}): no diagnosis is coded.")
        lines += [_cite(d.evidence, now) for d in decision.history_drugs]
        lines += [_cite(s.evidence, now) for s in decision.history_support]
    return lines


def _detail(decision: Decision, now: datetime) -> str:
    sections: list[str] = []
    why = _history_lines(decision, now)
    if decision.episode is not None:
        onset = decision.episode.onset
        why.append(f"New spinal pain ({decision.episode.why_new}), onset {_day(onset)} ({_ago(onset, now)}):")
        why += [f"  {_cite(p.evidence, now)}" for p in decision.episode.findings]
    elif decision.current_pain:
        why += [_cite(p.evidence, now) for p in decision.current_pain]
    why += [f"Neurological feature ({n.feature.replace('-', ' ')}): {_cite(n.evidence, now)}" for n in decision.neuro]
    why += [f"Known metastatic disease: {_cite(m.evidence, now)}" for m in decision.metastases]
    why += [f"Supporting finding: {_cite(m.evidence, now)}" for m in decision.modifiers
            if m.kind in ("vertebral-fracture", "constitutional")]
    if decision.pain_before_cancer:
        why.append("The pain was first recorded before the cancer diagnosis; it is flagged because it is new now.")
    sections.append("**Why this alert**\n" + _bullets(why))

    if decision.kind == "mscc":
        actions = list(CRITICAL_ACTIONS)
        if decision.imaging_ordered:
            actions.insert(1, "An MRI is already ordered (" + "; ".join(_cite(i.evidence, now)
                           for i in decision.imaging_ordered) + "): make sure it is done within 24 hours.")
    elif decision.kind == "spinal-metastases":
        actions = list(WARNING_ACTIONS)
        if decision.suggestive:
            actions.insert(1, SUGGESTIVE_ACTION + " Features: " + _text("; ".join(decision.suggestive)) + ".")
    else:
        actions = ["Confirm whether the patient has had invasive breast cancer. If so, new spinal pain needs "
                   "MRI of the whole spine within 1 week (NICE NG234); sooner with neurological signs."]
    if decision.imaging_partial:
        actions.append("Imaging so far does not cover the whole spine (" + "; ".join(
            _cite(i.evidence, now) for i in decision.imaging_partial) + "): image the rest of the spine.")
    sections.append("**What to do**\n" + _bullets(actions))

    notes: list[str] = []
    for m in decision.modifiers:
        if m.kind == "hypercalcaemia":
            notes.append(f"Hypercalcaemia is recorded ({_cite(m.evidence, now)}): a separate emergency in cancer; "
                         "check corrected calcium today (NICE CKS).")
        elif m.kind == "treatment-differential":
            notes.append(f"Differential: {_cite(m.evidence, now)} (treatment-related; does not explain away "
                         "new spinal pain).")
    if decision.differentials:
        drugs = ", ".join(sorted({d.ingredient for d in decision.differentials}))
        notes.append(f"Differential: {drugs} can cause musculoskeletal or back pain. That is a reason to "
                     "keep it in mind, not to skip the work-up for metastases.")
    if decision.imaging_context:
        notes.append("Other imaging since the pain began (does not replace MRI for cord compression): "
                     + "; ".join(_cite(i.evidence, now) for i in decision.imaging_context))
    if decision.end_of_life:
        notes.append(END_OF_LIFE_NOTE)
    if decision.skipped:
        notes.append(_skipped_line(decision))
    if notes:
        sections.append("**Also consider**\n" + _bullets(notes))

    sections.append("**Guideline basis**\n" + _bullets(f"[{label}]({url})" for label, url in GUIDELINES))
    return "\n\n".join(sections)


def _skipped_line(decision: Decision) -> str:
    names = ", ".join(
        _text(f"{s.resource_type}/{s.resource_id}" if s.resource_id else s.resource_type)
        for s in decision.skipped[:5]
    )
    more = f" and {len(decision.skipped) - 5} more" if len(decision.skipped) > 5 else ""
    return f"{len(decision.skipped)} record(s) could not be read and were left out: {names}{more}."


def _reason_references(decision: Decision) -> list[str]:
    evidence = [c.evidence for c in decision.history] + [n.evidence for n in decision.neuro]
    if decision.episode:
        evidence += [p.evidence for p in decision.episode.findings]
    evidence += [m.evidence for m in decision.metastases]
    return [e.reference for e in evidence if e.reference]


def _clinical_card(decision: Decision, context: CardContext) -> dict[str, Any]:
    assert decision.indicator is not None  # render_cards checked it
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(decision),
        "detail": _detail(decision, context.now),
        "indicator": decision.indicator,
        "source": {"label": source_label(), "url": SOURCE_URL},
    }
    if decision.kind in ("mscc", "spinal-metastases") and not decision.imaging_ordered:
        urgency = "within 24 hours (stat)" if decision.indicator == "critical" else "within 1 week (urgent)"
        request = mri_whole_spine_request(
            patient_id=context.patient_id, indicator=decision.indicator, now=context.now,
            reasons=_reason_references(decision), user_id=context.user_id, why=_summary(decision),
        )
        card["suggestions"] = [{
            "label": f"Order {MRI_WHOLE_SPINE_TEXT} {urgency}",
            "uuid": str(uuid.uuid4()),
            "isRecommended": True,
            "actions": [{
                "type": "create",
                "description": f"Create a draft order: {MRI_WHOLE_SPINE_TEXT}, priority {request['priority']}",
                "resource": request,
            }],
        }]
        card["selectionBehavior"] = "at-most-one"
    card["overrideReasons"] = [
        {"system": OVERRIDE_REASON_SYSTEM, "code": code, "display": display} for code, display in OVERRIDE_REASONS
    ]
    card["links"] = [{"label": label, "url": url, "type": "absolute"} for label, url in GUIDELINES[:2]]
    card["extension"] = {CARD_EXTENSION_KEY: rules_version()}
    return card


def _unreadable_card(decision: Decision) -> dict[str, Any]:
    detail = (
        "**Why this note**\n- " + _skipped_line(decision) + "\n- They looked like evidence this check reads "
        "(breast cancer, spinal pain, neurological signs, medication or spinal imaging), so the check for "
        "spinal metastases / MSCC may be incomplete. Review them in the chart."
    )
    return {
        "uuid": str(uuid.uuid4()),
        "summary": f"{len(decision.skipped)} relevant record(s) could not be read: spinal metastasis check incomplete"[
            :MAX_SUMMARY],
        "detail": detail,
        "indicator": "info",
        "source": {"label": source_label(), "url": SOURCE_URL},
        "extension": {CARD_EXTENSION_KEY: rules_version()},
    }
