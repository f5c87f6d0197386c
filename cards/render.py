"""A decision -> CDS Hooks 2.0 cards a clinician takes in at a glance.

Spec rules kept here (docs/cds-hooks-conformance.md §1.1, §1.6): summary < 140 characters; detail is GitHub-flavoured
Markdown (we emit no raw HTML, and escape text that came from the record); a uuid on every card and
suggestion; selectionBehavior whenever there are suggestions; every override reason has a display; no
null or empty value anywhere.

The detail is short (at most MAX_DETAIL characters, Markdown included): why (history, the new pain, the
neurological features, each with its date and how long ago), what to do, and one line of differentials. It
names no resource ids: the evidence stays machine-readable in the suggested order's reasonReference and in the
card's `extension` (EVIDENCE_EXTENSION_KEY). Guideline sources are the card's `links`, never repeated in the
text. Interruptive alerts that are long are dismissed unread (van der Sijs et al., JAMIA 2006).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final

from cards.content import (
    CONTEXT_IMAGING_ACTION,
    CRITICAL_ACTIONS,
    DIFFERENTIAL_LINE,
    END_OF_LIFE_ACTION,
    HYPERCALCAEMIA_ACTION,
    LINKS,
    MRI_ORDERED_ACTION,
    MRI_WHOLE_SPINE_TEXT,
    OVERRIDE_REASONS,
    PARTIAL_IMAGING_ACTION,
    SOURCE_URL,
    SUGGESTIVE_ACTION,
    WARNING_ACTIONS,
    WEAK_HISTORY_ACTION,
    XRAY_ACTION,
)
from cards.decision import Decision
from cards.service_request import mri_whole_spine_request
from cards.version import CARD_EXTENSION_KEY, rules_version, source_label
from fhir_mapping.dates import Calendar, DateSpan
from fhir_mapping.findings import Evidence, ImagingFinding, NeuroFinding, PainFinding

# Read at import (~20 ms: hashing the package's own files), not while the first clinician waits for a card.
rules_version()

MAX_SUMMARY = 139
# Detail length limits, Markdown included: a critical card fits the sandbox's card column without scrolling.
MAX_DETAIL: Final = {"critical": 900, "warning": 700, "info": 700}
# The card's machine-readable evidence: the relative references of every record the card names.
EVIDENCE_EXTENSION_KEY: Final = "org.mscc-alert.evidence"
UNREADABLE_EXTENSION_KEY: Final = "org.mscc-alert.unreadable"

# Characters that could start Markdown or HTML markup inside record text.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~])")
_WORD_SLASH = re.compile(r"(?<=[A-Za-z])\s*/\s*(?=[A-Za-z0-9])")
_RECORD_TEXT = 48  # characters of one record's wording on a card
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Coding-system wording a clinician would not say ("Retention of urine, unspecified").
_DISPLAY_NOISE = re.compile(
    r",?\s+(?:initial encounter(?: for fracture)?|unspecified site|unspecified|not elsewhere classified|NEC|NOS)\b"
    r"|\s*\((?:finding|disorder|situation|procedure|generalized|generalised)\)",
    re.IGNORECASE,
)
_DISPLAY_LEAD = re.compile(r"^(?:unspecified|other)\s+", re.IGNORECASE)
_PHRASES: Final = {
    "difficulty in walking": "difficulty walking",
    "retention of urine": "urinary retention",
    "acute retention of urine": "acute urinary retention",
    "malignant neoplasm of breast": "breast cancer",
}
_REGION_WORDS: Final = {"lumbar": "low back", "thoracic": "thoracic", "cervical": "neck", "sacral": "sacral"}
_REGION_PAIN: Final = {"lumbar": "low back pain", "thoracic": "thoracic back pain", "cervical": "neck pain",
                       "sacral": "sacral pain", "unspecified": "spinal pain"}


@dataclass(frozen=True, slots=True)
class CardContext:
    patient_id: str
    user_id: str | None
    now: datetime
    zone: tzinfo | None = None  # the zone the card's reader counts days in; None: each record's own offset

    @property
    def calendar(self) -> Calendar:
        return Calendar(self.now, self.zone)


def render_cards(decision: Decision, context: CardContext) -> list[dict[str, Any]]:
    if decision.indicator is None:
        return []
    if decision.kind == "unreadable-records":
        return [_unreadable_card(decision)]
    return [_clinical_card(decision, context)]


# --- words -------------------------------------------------------------------------------------------------
def _escape(value: str) -> str:
    """Record text inside Markdown: markup escaped, and a slash between words spaced ("Thoracic / lumbar"), so
    that record text never reads like a resource reference (Type/id) on the card."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _WORD_SLASH.sub(" / ", value))


def _clip(value: str, limit: int = _RECORD_TEXT) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip(" ,;:") + "…"


def _words(evidence: Evidence) -> str:
    """What the record says, as a clinician would say it: coded displays without coding-system noise, text
    from the record quoted as written. Escaped for Markdown and bounded."""
    if evidence.code is None:
        return "“" + _escape(_clip(evidence.display)) + "”"
    text = _DISPLAY_LEAD.sub("", _DISPLAY_NOISE.sub("", evidence.display)).strip(" ,")
    text = _PHRASES.get(text.lower(), text)
    if len(text) > 1 and not text[1].isupper():  # keep acronyms (MRI, CT) as they are
        text = text[0].lower() + text[1:]
    return _escape(_clip(text))


def _date(span: DateSpan, cal: Calendar) -> str:
    """12 Nov (this year), 12 Nov 2025 (within a year), Nov 2023 (older); partial dates as recorded."""
    if re.fullmatch(r"\d{4}", span.text):
        return span.text
    if re.fullmatch(r"\d{4}-\d{2}", span.text):
        return f"{_MONTHS[int(span.text[5:7]) - 1]} {span.text[:4]}"
    day, today = span.first_day(cal.zone), span.today(cal.now, cal.zone)
    if (today - day).days >= 365:
        return f"{_MONTHS[day.month - 1]} {day.year}"
    return f"{day.day} {_MONTHS[day.month - 1]}" + ("" if day.year == today.year else f" {day.year}")


def _elapsed(span: DateSpan, cal: Calendar) -> int:
    """Calendar days from the span's last day to today, both in the reader's calendar (negative: in the future)."""
    return (span.today(cal.now, cal.zone) - span.last_day(cal.zone)).days


def _duration(days: int) -> str:
    if days < 90:
        return f"{days} day{'s' if days != 1 else ''}"
    if days < 730:
        return f"{days // 30} months"
    return f"{days // 365} years"


def _dated(span: DateSpan, cal: Calendar, near: tuple[str, str], far: str, future: str) -> str:
    """`near` for today and yesterday; otherwise `far` or `future` with the date and how long ago filled in."""
    days = _elapsed(span, cal)
    if days < 0:
        return future.format(date=_date(span, cal))
    if days <= 1:
        return near[days]
    return far.format(date=_date(span, cal), duration=_duration(days))


def _on(span: DateSpan, cal: Calendar) -> str:
    """A point in time: "today", "yesterday", "12 Nov (9 days ago)"."""
    return _dated(span, cal, ("today", "yesterday"), "{date} ({duration} ago)", "{date} (in the future)")


def _since(span: DateSpan, cal: Calendar) -> str:
    """An onset: "since today", "since yesterday", "since 12 Nov (9 days)"."""
    return _dated(span, cal, ("since today", "since yesterday"), "since {date} ({duration})",
                  "dated {date} (in the future)")


def _when(evidence: Evidence, cal: Calendar) -> str:
    """How the record dates the finding, in words: onset, recorded only, a visit, an order, a result."""
    span = evidence.date
    if span is None:
        return "date not documented"
    if evidence.resource_type == "Encounter":
        return f"at a visit {_on(span, cal)}"
    if evidence.date_kind == "onset":
        return _since(span, cal)
    if evidence.date_kind == "recorded":
        return f"recorded {_on(span, cal)}, onset not documented"
    verb = {"authored": "ordered", "performed": "done", "started": "done"}.get(evidence.date_kind or "", "noted")
    return f"{verb} {_on(span, cal)}"


def _finding(evidence: Evidence, cal: Calendar, words: str | None = None) -> str:
    return f"{words or _words(evidence)} {_when(evidence, cal)}"


def _history_date(evidence: Evidence, cal: Calendar) -> str:
    """ (Nov 2023, 3 years ago)": the date and how long ago, for a history rather than an onset."""
    if evidence.date is None:
        return " (date not documented)"
    return _dated(evidence.date, cal, (" (today)", " (yesterday)"), " ({date}, {duration} ago)",
                  " ({date}, in the future)")


# --- the parts of the detail ----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Part:
    text: str
    drop: int  # 0: always shown; higher numbers are left out first when the detail is too long
    short: str | None = None  # the same advice without its particulars, used before anything of level 1 goes


def _history(decision: Decision, cal: Calendar) -> list[_Part]:
    if decision.history:
        dated = [c for c in decision.history if c.evidence.date is not None]
        first = min(dated, key=lambda c: c.evidence.date.earliest) if dated else decision.history[0]  # type: ignore[union-attr]
        words = {"primary": "breast cancer", "history": "breast cancer (history)",
                 "in-situ": "breast carcinoma in situ only"}.get(first.category) or _words(first.evidence)
        return [_Part(words + _history_date(first.evidence, cal), 0)]
    if not decision.history_drugs:
        return []
    names = sorted({d.ingredient for d in decision.history_drugs})
    drugs = ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
    latest = max((d.evidence for d in decision.history_drugs if d.evidence.date), key=lambda e: e.date.latest,  # type: ignore[union-attr]
                 default=None)
    when = _history_date(latest, cal) if latest is not None else ""
    if decision.weak_history == "tier-b-drug":
        parts = [_Part(f"no breast cancer coded; on {_escape(drugs)}{when}, also used without cancer", 0)]
    else:
        parts = [_Part(f"breast cancer **inferred** from {_escape(drugs)}{when}: no diagnosis coded", 0)]
    parts += [_Part(_words(s.evidence) + _history_date(s.evidence, cal), 2) for s in decision.history_support[:2]]
    return parts


def _metastases(decision: Decision, cal: Calendar) -> list[_Part]:
    if not decision.metastases:
        return []
    first = decision.metastases[0]
    spine = any(m.spine for m in decision.metastases)
    coded = [m for m in decision.metastases if m.evidence.code is not None]
    if spine:
        words = "known spinal metastases"
    elif any("bone" in m.evidence.display.lower() for m in coded):
        words = "known bone metastases"
    else:
        words = "known metastatic disease"
    return [_Part(words + _history_date(first.evidence, cal), 1)]


def _pain_words(pain: PainFinding) -> str:
    if pain.evidence.display.startswith("pain located at"):  # a pain-location Observation: say the region
        return _REGION_PAIN.get(pain.region, "spinal pain")
    return _words(pain.evidence)


def _pain(decision: Decision, cal: Calendar) -> tuple[list[_Part], set[str | None]]:
    """The new pain with its onset (and why it counts as new when it is not plainly new onset)."""
    episode = decision.episode
    findings = list(episode.findings) if episode else decision.current_pain
    dated = [p for p in findings if p.evidence.date is not None]
    if not findings:
        return [], set()
    first = min(dated, key=lambda p: p.evidence.date.earliest) if dated else findings[0]  # type: ignore[union-attr]
    words = _pain_words(first)
    others = sorted({p.region for p in findings if p.region not in ("unspecified", first.region)})
    if others:
        words += f" (also {' and '.join(_REGION_WORDS[r] for r in others)})"
    text = short = _finding(first.evidence, cal, words)
    if episode is not None and episode.why_new != "new onset":
        text += f": {_escape(episode.why_new)}"
    if decision.pain_before_cancer:
        text += " (first recorded before the cancer diagnosis)"
    return [_Part(text, 0, short if short != text else None)], {p.evidence.reference for p in findings}


def _neuro(decision: Decision, cal: Calendar, pain_shown: set[str | None]) -> list[_Part]:
    """One item per neurological feature (the earliest record of it), cord compression and cauda equina
    first; the first always shown."""
    by_feature: dict[str, NeuroFinding] = {}
    for n in sorted(decision.neuro, key=lambda n: (not n.alone, n.evidence.date is None,
                                                   n.evidence.date.earliest if n.evidence.date else cal.now)):
        by_feature.setdefault(n.feature, n)
    parts: list[_Part] = []
    for n in by_feature.values():
        # A radiculopathy code is both the pain and the neurological feature: name it once.
        if n.evidence.reference is not None and n.evidence.reference in pain_shown and n.feature == "radicular":
            continue
        parts.append(_Part(_finding(n.evidence, cal), 0 if not parts else 1))
    return parts


def _supporting(decision: Decision, cal: Calendar) -> list[_Part]:
    return [_Part(_finding(m.evidence, cal), 3) for m in decision.modifiers
            if m.kind in ("vertebral-fracture", "constitutional")][:3]


def _imaging_words(studies: list[ImagingFinding], cal: Calendar) -> str:
    return "; ".join(_finding(i.evidence, cal) for i in studies[:2])


def _actions(decision: Decision, cal: Calendar) -> list[_Part]:
    if decision.kind == "mscc":
        # Downgraded to info for end-of-life care, the last line may go first.
        actions = [_Part(line, 0) for line in CRITICAL_ACTIONS]
        if decision.downgraded_for_end_of_life:
            actions[-1].drop = 1
        if decision.imaging_ordered:
            ordered = min(decision.imaging_ordered,
                          key=lambda i: i.evidence.date.earliest if i.evidence.date else cal.now)
            actions[1] = _Part(MRI_ORDERED_ACTION.format(when=_when(ordered.evidence, cal)), 0,
                               MRI_ORDERED_ACTION.format(when="already"))
    elif decision.kind == "spinal-metastases":
        actions = [_Part(line, 0) for line in WARNING_ACTIONS]
        if decision.suggestive:
            features = _escape(_clip("; ".join(decision.suggestive), 44))
            actions.insert(1, _Part(SUGGESTIVE_ACTION.format(features=f" ({features})"), 0,
                                    SUGGESTIVE_ACTION.format(features="")))
        actions.append(_Part(XRAY_ACTION, 2))
    else:
        actions = [_Part(WEAK_HISTORY_ACTION, 0)]
    if decision.imaging_partial:  # part of the MRI line: it changes what to image
        study = decision.imaging_partial[0].evidence
        what = f"{_words(study)} {_on(study.date, cal)}" if study.date else _words(study)
        mri = actions[1 if decision.kind == "mscc" else 0]
        partial = PARTIAL_IMAGING_ACTION.format(what=what[0].upper() + what[1:])
        unnamed = PARTIAL_IMAGING_ACTION.format(what="Imaging so far")
        mri.text, mri.short = f"{mri.text} {partial}", f"{mri.text} {unnamed}"
    for m in decision.modifiers:
        if m.kind == "hypercalcaemia":
            when = f" {_on(m.evidence.date, cal)}" if m.evidence.date else ""
            actions.append(_Part(HYPERCALCAEMIA_ACTION.format(when=when), 0, HYPERCALCAEMIA_ACTION.format(when="")))
            break
    if decision.end_of_life:
        actions.append(_Part(END_OF_LIFE_ACTION, 0))
    if decision.imaging_context:
        what = _imaging_words(decision.imaging_context, cal)
        actions.append(_Part(CONTEXT_IMAGING_ACTION.format(what=what[0].upper() + what[1:]), 2))
    return actions


def _differentials(decision: Decision, cal: Calendar) -> list[_Part]:
    items = [f"{_escape(d)} can cause back pain" for d in sorted({d.ingredient for d in decision.differentials})]
    items += [_finding(m.evidence, cal) for m in decision.modifiers if m.kind == "treatment-differential"][:2]
    if not items:
        return []
    return [_Part(DIFFERENTIAL_LINE.format(items="; ".join(items)), 1)]


def _skipped(decision: Decision) -> str:
    kinds = sorted({s.resource_type for s in decision.skipped})
    count = len(decision.skipped)
    return f"{count} unreadable record{'s' if count != 1 else ''} ({', '.join(kinds)})"


def _assemble(why: list[_Part], actions: list[_Part], tail: list[_Part], dropped: int, note: str | None,
              limit: int) -> str:
    sections = ["**What to do**\n" + "\n".join(f"- {p.text}" for p in actions)]
    sections += [p.text for p in tail]
    if note:
        sections.append(f"_{note}: check them in the chart._")
    rest = "\n\n" + "\n\n".join(sections)
    why_text = " · ".join(p.text for p in why)
    if dropped:
        why_text += f" · {dropped} more in the record"
    why_text = "**Why:** " + why_text[0].upper() + why_text[1:]
    if len(why_text) + len(rest) > limit:  # the last resort: a why line cut short, never an action
        room = max(limit - len(rest) - 1, 0)
        why_text = why_text[:room].rsplit(" ", 1)[0] + "…"
    return why_text + rest


def _detail(decision: Decision, cal: Calendar) -> str:
    pain, pain_shown = _pain(decision, cal)
    why = _history(decision, cal) + _metastases(decision, cal) + pain + _neuro(decision, cal, pain_shown)
    why += _supporting(decision, cal)
    actions = _actions(decision, cal)
    tail = _differentials(decision, cal)
    note = _skipped(decision) if decision.skipped else None
    # The room follows the advice the card carries: MSCC's actions keep the critical card's room when the card is
    # downgraded to info for end-of-life care (its summary still names MSCC).
    limit = MAX_DETAIL["critical" if decision.kind == "mscc" else decision.indicator or "info"]
    dropped = 0
    # Too long: leave out the least important parts first (a finding left out is counted on the why line), then
    # say advice without its particulars, then leave out findings after the first two. Actions of level 0 are
    # always shown.
    for level in (3, 2, 0, 1):
        for parts in (actions, tail, why):
            if level == 0:
                for part in parts:
                    if part.short and _too_long(why, actions, tail, dropped, note, limit):
                        part.text, part.short = part.short, None
                continue
            while _too_long(why, actions, tail, dropped, note, limit) and any(p.drop == level for p in parts):
                del parts[max(i for i, p in enumerate(parts) if p.drop == level)]
                dropped += parts is why
    # Findings after the first two go first; then the second, before the first is cut mid-word.
    for keep in (2, 1):
        while _too_long(why, actions, tail, dropped, note, limit) and len(why) > keep:
            del why[-1]
            dropped += 1
    return _assemble(why, actions, tail, dropped, note, limit)


def _too_long(why: list[_Part], actions: list[_Part], tail: list[_Part], dropped: int, note: str | None,
              limit: int) -> bool:
    return len(_assemble(why, actions, tail, dropped, note, limit=10**6)) > limit


# --- cards ---------------------------------------------------------------------------------------------------
def _summary(decision: Decision) -> str:
    metastatic = bool(decision.metastases)
    if decision.downgraded_for_end_of_life:
        text = "Suspected spinal metastases/MSCC in a patient in palliative care: discuss goals of care"
    elif decision.kind == "mscc":
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
    else:
        text = "New spinal pain on a breast-cancer drug, no coded breast cancer: check the history"
    return text[:MAX_SUMMARY]


def _evidence_of(decision: Decision) -> list[Evidence]:
    evidence = [c.evidence for c in decision.history] + [d.evidence for d in decision.history_drugs]
    evidence += [s.evidence for s in decision.history_support] + [m.evidence for m in decision.metastases]
    evidence += [p.evidence for p in (decision.episode.findings if decision.episode else decision.current_pain)]
    evidence += [n.evidence for n in decision.neuro] + [m.evidence for m in decision.modifiers]
    evidence += [i.evidence for i in decision.imaging_ordered + decision.imaging_partial + decision.imaging_context]
    evidence += [d.evidence for d in decision.differentials] + [e.evidence for e in decision.end_of_life]
    return evidence


def reason_references(decision: Decision) -> list[str]:
    """The references a suggested order's reasonReference may carry (history, neurological features, pain)."""
    evidence = [c.evidence for c in decision.history] + [n.evidence for n in decision.neuro]
    if decision.episode:
        evidence += [p.evidence for p in decision.episode.findings]
    evidence += [m.evidence for m in decision.metastases]
    return [e.reference for e in evidence if e.reference]


def card_extension(decision: Decision) -> dict[str, Any]:
    """The card extension (rules version, evidence and unreadable records) every clinical card carries."""
    extension: dict[str, Any] = {CARD_EXTENSION_KEY: rules_version()}
    references = list(dict.fromkeys(e.reference for e in _evidence_of(decision) if e.reference))
    if references:
        extension[EVIDENCE_EXTENSION_KEY] = references
    unreadable = [f"{s.resource_type}/{s.resource_id}" if s.resource_id else s.resource_type for s in decision.skipped]
    if unreadable:
        extension[UNREADABLE_EXTENSION_KEY] = unreadable
    return extension


def _clinical_card(decision: Decision, context: CardContext) -> dict[str, Any]:
    assert decision.indicator is not None  # render_cards checked it
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(decision),
        "detail": _detail(decision, context.calendar),
        "indicator": decision.indicator,
        "source": {"label": source_label(), "url": SOURCE_URL},
    }
    if decision.kind in ("mscc", "spinal-metastases") and not decision.imaging_ordered:
        urgency = "within 24 hours (stat)" if decision.indicator == "critical" else "within 1 week (urgent)"
        request = mri_whole_spine_request(
            patient_id=context.patient_id, indicator=decision.indicator, now=context.now,
            reasons=reason_references(decision), user_id=context.user_id, why=_summary(decision),
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
        {"system": system, "code": code, "display": display} for system, code, display in OVERRIDE_REASONS
    ]
    card["links"] = [{"label": label, "url": url, "type": "absolute"} for label, url in LINKS]
    card["extension"] = card_extension(decision)
    return card


def _unreadable_card(decision: Decision) -> dict[str, Any]:
    detail = (
        f"**Why:** {_skipped(decision)}. They look like evidence this check reads (breast cancer, spinal pain, "
        "neurological signs, medication or spinal imaging), so the check for spinal metastases / MSCC may be "
        "incomplete.\n\n**What to do**\n- Review those records in the chart."
    )
    return {
        "uuid": str(uuid.uuid4()),
        "summary": f"{len(decision.skipped)} relevant record(s) could not be read: spinal metastasis check incomplete"[
            :MAX_SUMMARY],
        "detail": detail,
        "indicator": "info",
        "source": {"label": source_label(), "url": SOURCE_URL},
        "extension": card_extension(decision),
    }


# --- for other cards that rest on the same decision (cards/order_advice.py) ------------------------------------
def evidence_line(decision: Decision, cal: Calendar, limit: int) -> str:
    """The findings of the card's why line (history, metastases, the new pain, neurological features), worded and
    dated as on the patient-view card, joined by " · " and at most `limit` characters."""
    pain, pain_shown = _pain(decision, cal)
    parts = _history(decision, cal) + _metastases(decision, cal) + pain + _neuro(decision, cal, pain_shown)
    while len(parts) > 1 and len(" · ".join(p.text for p in parts)) > limit:
        del parts[max(range(len(parts)), key=lambda i: (parts[i].drop, i))]
    text = " · ".join(p.text for p in parts)
    if len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return text[:1].upper() + text[1:]
