"""What clinicians already did with earlier cards for a patient, read from the feedback store (SQL or memory).

The feedback route stores feedback by card uuid only; the issued-card record says whose card it was (a keyed
pseudonym, cds_hooks/security/pseudonym.py). Joining the two gives each earlier card's actions; `cards/suppression.py`
decides what they mean.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, and_, insert, select

from cards.suppression import PriorAction

__all__ = ["Acknowledgements", "SqlAcknowledgements", "SuppressedCard", "latest_per_card"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuppressedCard:
    kind: str
    indicator: str
    rules_version: str | None


class Acknowledgements(Protocol):
    def prior_actions(self, service_id: str, patient_key: str, since: datetime, limit: int) -> list[PriorAction]:
        """The latest action on each card issued for this patient, among actions received after `since`
        (at most `limit` actions read, newest first)."""

    def record_suppressed(
        self, service_id: str, cards: Sequence[SuppressedCard], issuer: str | None, tenant: str | None
    ) -> None: ...


def latest_per_card(rows: Iterable[tuple[str, PriorAction]]) -> list[PriorAction]:
    """One action per card: its latest by outcomeTimestamp, an override winning a tie (as the report counts)."""
    latest: dict[str, PriorAction] = {}
    for card_uuid, action in rows:
        current = latest.get(card_uuid)
        if current is None or (action.outcome_at, action.outcome == "overridden") > (
            current.outcome_at, current.outcome == "overridden"
        ):
            latest[card_uuid] = action
    return list(latest.values())


class SqlAcknowledgements:
    def __init__(self, engine: Engine) -> None:
        from cds_hooks.feedback.store import feedback, issued_cards, suppressed_cards

        self._engine = engine
        self._feedback = feedback
        self._issued = issued_cards
        self._suppressed = suppressed_cards

    def prior_actions(self, service_id: str, patient_key: str, since: datetime, limit: int) -> list[PriorAction]:
        issued, fb = self._issued, self._feedback
        statement = (
            select(fb.c.card_uuid, issued.c.kind, issued.c.indicator, issued.c.evidence_at, fb.c.outcome,
                   issued.c.issued_at, fb.c.outcome_timestamp, fb.c.received_at)
            .select_from(fb.join(issued, and_(issued.c.service_id == fb.c.service_id,
                                              issued.c.card_uuid == fb.c.card_uuid)))
            .where(issued.c.service_id == service_id, issued.c.patient_key == patient_key,
                   issued.c.kind.is_not(None), fb.c.received_at > since)
            .order_by(fb.c.received_at.desc())
            .limit(limit)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return latest_per_card((row[0], PriorAction(*row[1:])) for row in rows)

    def record_suppressed(
        self, service_id: str, cards: Sequence[SuppressedCard], issuer: str | None, tenant: str | None
    ) -> None:
        if not cards:
            return
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = [
            {"service_id": service_id, "kind": c.kind, "indicator": c.indicator, "rules_version": c.rules_version,
             "suppressed_at": now, "issuer": issuer, "tenant": tenant}
            for c in cards
        ]
        with self._engine.begin() as connection:
            connection.execute(insert(self._suppressed), rows)
