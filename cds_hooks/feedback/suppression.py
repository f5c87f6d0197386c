"""The lookups behind "shown once, unless it gets worse": the rule itself is `cards/suppression.py`.

On each hook call that produced a card: pseudonymise the patient, read the earlier actions on their cards from
the feedback store, ask the rule, drop the cards it suppresses and count them. If the store cannot be read the
card is shown: a database fault must never hide a clinical alert.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cards.suppression import CardFacts, Windows, verdict
from cds_hooks.feedback.acknowledgements import Acknowledgements, SuppressedCard
from cds_hooks.security.pseudonym import Pseudonyms

log = logging.getLogger("mscc_alert.suppression")


@dataclass(frozen=True)
class Shown:
    cards: list[dict[str, Any]]
    suppressed: int


class Suppression:
    def __init__(self, store: Acknowledgements, pseudonyms: Pseudonyms, windows: Windows, lookup_rows: int) -> None:
        self._store = store
        self.pseudonyms = pseudonyms
        self._windows = windows
        self._lookup_rows = lookup_rows
        # No action older than the longest window can still cover a card.
        self._horizon = timedelta(days=max(windows.override_days, windows.accepted_critical_days,
                                           windows.accepted_warning_days))

    def apply(self, service_id: str, cards: list[dict[str, Any]], facts: CardFacts | None, patient_key: str,
              now: datetime, rules_version: str | None, issuer: str | None, tenant: str | None) -> Shown:
        if not cards or facts is None:
            return Shown(cards, 0)
        try:
            priors = self._store.prior_actions(service_id, patient_key, now - self._horizon, self._lookup_rows)
        except Exception:
            log.warning("suppression lookup failed: card shown", exc_info=False)
            return Shown(cards, 0)
        if verdict(facts, priors, self._windows, now).show:
            return Shown(cards, 0)
        try:
            self._store.record_suppressed(
                service_id, [SuppressedCard(facts.kind, c["indicator"], rules_version) for c in cards], issuer, tenant)
        except Exception:
            log.warning("suppressed card(s) not counted: the store refused the write")
        return Shown([], len(cards))
