"""One patient's relevant lines -> the hook's pipeline -> one worklist row (or none).

The row carries the cards exactly as the hook renders them, plus what the people who work a worklist need to
find the patient and act: MRN and name from the Patient resource, key dates, the suggested action.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

import orjson

from cards.evaluate import Evaluation, evaluate_documents
from cards.policy import Policy
from fhir_mapping.dates import DateSpan
from fhir_mapping.terminology import Terminology

# HL7 v2 table 0203 "MR" (medical record number): https://terminology.hl7.org/CodeSystem-v2-0203.html
_MRN_TYPE = "MR"

ACTIONS = {
    "mscc": "Contact acute oncology / MSCC coordinator now; MRI whole spine within 24 h",
    "spinal-metastases": "MRI whole spine within 1 week",
    "weak-history": "Confirm breast-cancer history; if confirmed, MRI whole spine within 1 week",
    "unreadable-records": "Review the unreadable records in the chart",
}


def evaluate_patient(patient_id: str, lines: list[bytes], *, now: datetime, policy: Policy,
                     terminology: Terminology) -> dict[str, Any] | None:
    """The worklist row for this patient, or None when the hook would return no card.

    Lines are sorted first, so the answer never depends on the order the export (or an engine) gave them."""
    lines = sorted(lines)
    evaluation = evaluate_documents(lines, patient_id=patient_id, user_id=None, now=now, policy=policy,
                                    terminology=terminology)
    return worklist_row(patient_id, evaluation, lines)


def worklist_row(patient_id: str, evaluation: Evaluation, resources: list[bytes]) -> dict[str, Any] | None:
    """The row for an evaluation already made (`resources`: the raw resources it read, for MRN and name), or
    None when it gave no card. The delta sweep (cds_hooks/sweep/delta.py) evaluates fetched records this way."""
    decision = evaluation.decision
    if not evaluation.cards or decision.indicator is None or decision.kind is None:
        return None
    row: dict[str, Any] = {
        "patientId": patient_id,
        "indicator": decision.indicator,
        "kind": decision.kind,
        "summary": evaluation.cards[0]["summary"],
    }
    row.update(who(patient_id, resources))
    dates: dict[str, str] = {}
    if decision.history and (history := _earliest(c.evidence.date for c in decision.history)):
        dates["history"] = _day(history, evaluation.zone)
    pain = decision.episode.onset if decision.episode else _latest(p.evidence.date for p in decision.current_pain)
    if pain is not None:
        dates["painOnset"] = _day(pain, evaluation.zone)
        row["painLatest"] = pain.latest.isoformat()
    if decision.neuro and (neuro := _earliest(n.evidence.date for n in decision.neuro)):
        dates["neurological"] = _day(neuro, evaluation.zone)
    if dates:
        row["keyDates"] = dates
    action = ACTIONS[decision.kind]
    if decision.kind == "mscc" and decision.imaging_ordered:
        action = "Contact acute oncology / MSCC coordinator now; ensure the ordered MRI is done within 24 h"
    elif decision.kind == "spinal-metastases" and decision.suggestive:
        action += "; acute oncology advice within 24 h"
    row["action"] = action
    row["cards"] = evaluation.cards
    return row


def _day(span: DateSpan, zone: tzinfo | None) -> str:
    return span.text if len(span.text) < 10 else span.first_day(zone).isoformat()


def _earliest(spans: Any) -> DateSpan | None:
    known = [s for s in spans if s is not None]
    return min(known, key=lambda s: s.earliest) if known else None


def _latest(spans: Any) -> DateSpan | None:
    known = [s for s in spans if s is not None]
    return max(known, key=lambda s: s.latest) if known else None


def who(patient_id: str, lines: list[bytes]) -> dict[str, str]:
    """MRN and name from this patient's Patient resource, where it has them (read leniently: a Patient the
    rules could not read still names the patient for the worklist)."""
    for line in lines:
        if b'"Patient"' not in line:
            continue
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        if resource.get("id") != patient_id:
            continue
        found: dict[str, str] = {}
        if mrn := _mrn(resource.get("identifier")):
            found["mrn"] = mrn
        if name := _name(resource.get("name")):
            found["name"] = name
        return found
    return {}


def _mrn(identifiers: Any) -> str | None:
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
            continue
        codings = (identifier.get("type") or {}).get("coding") if isinstance(identifier.get("type"), dict) else None
        if any(isinstance(c, dict) and c.get("code") == _MRN_TYPE for c in codings or ()):
            return str(identifier["value"])
    return None


def _name(names: Any) -> str | None:
    candidates = [n for n in names if isinstance(n, dict)] if isinstance(names, list) else []
    if not candidates:
        return None
    name = next((n for n in candidates if n.get("use") == "official"), candidates[0])
    if isinstance(name.get("text"), str) and name["text"].strip():
        return " ".join(name["text"].split())
    given = [g for g in name.get("given") or () if isinstance(g, str)]
    family = name.get("family") if isinstance(name.get("family"), str) else None
    text = " ".join([*given, *([family] if family else [])])
    return text or None
