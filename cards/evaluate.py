"""The whole clinical pipeline without I/O: raw FHIR JSON documents -> findings -> decision -> cards.

Used by the HTTP service, by `mscc-alert evaluate`, and by tests and benchmarks alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from cards.decision import NO_HISTORY, NO_TRIGGER, Decision, decide, pain_score_horizon
from cards.policy import Policy
from cards.render import CardContext, render_cards
from fhir_mapping.extract import build_record
from fhir_mapping.findings import ClinicalRecord
from fhir_mapping.intake import EITHER, HISTORY, Buffer, Document, Intake, collect, document_roles, read_document
from fhir_mapping.terminology import Terminology


@dataclass(frozen=True, slots=True)
class Evaluation:
    cards: list[dict[str, Any]]
    decision: Decision
    record: ClinicalRecord
    resources_seen: int
    resources_used: int
    now: datetime  # the instant evaluated at: cards rendered later (the order services') date from it too
    zone: tzinfo | None = None  # the zone those cards count days in (Policy.display_zone)


def evaluate_documents(
    documents: Iterable[Document | Buffer],
    *,
    patient_id: str | None,
    user_id: str | None,
    now: datetime,
    policy: Policy,
    terminology: Terminology,
) -> Evaluation:
    read = [d if isinstance(d, Document) else read_document(d, terminology) for d in documents]
    roles = document_roles(read, terminology)
    if roles != EITHER:
        # No card can follow, whatever the rest says: a card needs a history and a trigger. Nothing is validated,
        # and unreadable records are not reported: they could not have changed the answer.
        intake = Intake(seen=sum(d.seen for d in read))
        record = ClinicalRecord()
        decision = Decision(None, why_not=NO_TRIGGER if roles & HISTORY else NO_HISTORY)
    else:
        # Old pain scores are dropped before validation: the decision would not read them (pain_score_horizon).
        intake = collect(read, patient_id, terminology, pain_scores_since=pain_score_horizon(policy, now))
        record = build_record(intake, terminology, now, include_unconfirmed=policy.count_unconfirmed)
        decision = decide(record, policy, now)
    subject = patient_id or _patient_id_of(intake.resources) or "unknown"
    zone = policy.display_zone
    cards = render_cards(decision, CardContext(patient_id=subject, user_id=user_id, now=now, zone=zone))
    return Evaluation(cards, decision, record, intake.seen, len(intake.resources), now, zone)


def _patient_id_of(resources: list[Any]) -> str | None:
    for resource in resources:
        if resource.get_resource_type() == "Patient" and resource.id:
            return str(resource.id)
    return None
