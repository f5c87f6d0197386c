"""Shown once, unless it gets worse: whether a card a clinician has already acted on is shown again.

Pure: the caller looks up what was done with earlier cards for the same patient (`PriorAction`) and asks
`verdict`. The rule:

- An action is feedback on an earlier card for this patient: its suggestion accepted, or the card overridden
  (with or without a reason). Each earlier card counts by its latest action (as the feedback report counts).
- That action covers the new card for a while: after an override, `override_days` (default 14); after an
  acceptance, the time frame of the order it accepted (NICE NG234: the MRI within 24 hours for the critical
  card, within 1 week for the warning), so a card comes back if the order seems not to have been done.
- It covers only the same card or a lesser one: a higher tier always shows at once (a warning followed by a
  neurological feature gives the critical card). Tiers: weak history (info) < spinal metastases (warning)
  < MSCC (critical); the "records could not be read" note is a card of its own kind, covered only by itself;
  a card downgraded to info (palliative care) that comes back at its full tier is a higher tier.
- New evidence shows the card again: the card's *evidence date* is the latest date (onset, else recorded;
  a date without a time counts as the end of its day) among the findings it rests on (the breast-cancer
  history and the drugs or support it was inferred from, the pain episode, the neurological features, known
  metastases, supporting fractures or constitutional findings). The card is new when its evidence date is
  later than both the evidence date of the card acted on (so it is a finding that card did not have) and
  the moment of the action (so it is dated after the feedback; at the whole seconds FHIR dateTimes carry,
  so the second of the feedback counts as after it).
- The moment of an action is its `outcomeTimestamp`, but never later than when we received it (a clock
  ahead, or a forged future time, cannot stretch the window) nor earlier than the card was issued.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cards.decision import Decision
from fhir_mapping.findings import Evidence

Outcome = Literal["accepted", "overridden"]

# The clinical ladder: a card of a higher rank is an escalation of a lower one.
_RANK = {"weak-history": 1, "spinal-metastases": 2, "mscc": 3}
_TIER = {"info": 1, "warning": 2, "critical": 3}


@dataclass(frozen=True, slots=True)
class Windows:
    """How long an action covers the same card (configurable: MSCC_ALERT_SUPPRESS_*)."""

    override_days: float = 14.0
    accepted_critical_days: float = 1.0  # the stat MRI's time frame: within 24 hours (NICE NG234 1.5.2)
    accepted_warning_days: float = 7.0  # the urgent MRI's time frame: within 1 week (NICE QS56 statement 2)

    def length(self, outcome: Outcome, indicator: str) -> timedelta:
        if outcome == "accepted" and indicator == "critical":
            return timedelta(days=self.accepted_critical_days)
        if outcome == "accepted" and indicator == "warning":
            return timedelta(days=self.accepted_warning_days)
        return timedelta(days=self.override_days)  # an override, or an accepted card without an order


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What identifies a card across calls: its kind and tier, and the date of the newest evidence it rests on."""

    kind: str
    indicator: str
    evidence_at: datetime | None


@dataclass(frozen=True, slots=True)
class PriorAction:
    """The latest action on one earlier card for the same patient."""

    kind: str
    indicator: str
    evidence_at: datetime | None  # that card's evidence date, stored when it was issued
    outcome: Outcome
    issued_at: datetime
    outcome_at: datetime  # the client's outcomeTimestamp
    received_at: datetime

    @property
    def acted_at(self) -> datetime:
        return max(self.issued_at, min(self.outcome_at, self.received_at))


@dataclass(frozen=True, slots=True)
class Verdict:
    show: bool
    why: Literal["no-prior-action", "suppressed", "escalated", "new-evidence", "window-passed"]
    until: datetime | None = None  # when suppressed: when the covering window ends


def card_facts(decision: Decision) -> CardFacts | None:
    """The facts of the card `decision` renders (None when it renders none)."""
    if decision.indicator is None or decision.kind is None:
        return None
    return CardFacts(decision.kind, decision.indicator, evidence_date(decision))


def evidence_date(decision: Decision) -> datetime | None:
    """The latest date among the findings the card rests on (see the module docstring)."""
    evidence: list[Evidence] = [c.evidence for c in decision.history]
    evidence += [d.evidence for d in decision.history_drugs]
    evidence += [s.evidence for s in decision.history_support]
    pain = decision.episode.findings if decision.episode is not None else decision.current_pain
    evidence += [p.evidence for p in pain]
    evidence += [n.evidence for n in decision.neuro]
    evidence += [m.evidence for m in decision.metastases]
    evidence += [m.evidence for m in decision.modifiers if m.kind in ("vertebral-fracture", "constitutional")]
    dates = [e.date.latest for e in evidence if e.date is not None]
    return max(dates) if dates else None


def _covers(prior: PriorAction, card: CardFacts) -> bool:
    # A card downgraded to info for a patient in palliative care keeps its kind: the tier counts too.
    if _TIER.get(card.indicator, 0) > _TIER.get(prior.indicator, 0):
        return False
    if prior.kind == card.kind:
        return True
    return prior.kind in _RANK and card.kind in _RANK and _RANK[prior.kind] > _RANK[card.kind]


def _newer(card: CardFacts, prior: PriorAction) -> bool:
    if card.evidence_at is None:
        return False
    known = prior.evidence_at
    # FHIR dateTimes carry whole seconds: a finding recorded in the second of the feedback counts as after it.
    return (known is None or card.evidence_at > known) and card.evidence_at >= prior.acted_at.replace(microsecond=0)


def verdict(card: CardFacts, priors: Iterable[PriorAction], windows: Windows, now: datetime) -> Verdict:
    """Show the card, or suppress it because a clinician already acted on it (rules in the module docstring)."""
    why: Literal["no-prior-action", "escalated", "new-evidence", "window-passed"] = "no-prior-action"
    covering_until: datetime | None = None
    for prior in priors:
        until = prior.acted_at + windows.length(prior.outcome, prior.indicator)
        if until <= now:
            why = "window-passed" if why == "no-prior-action" else why
            continue
        if not _covers(prior, card):
            why = "escalated"
            continue
        if _newer(card, prior):
            why = "new-evidence" if why != "escalated" else why
            continue
        covering_until = until if covering_until is None else max(covering_until, until)
    if covering_until is not None:
        return Verdict(False, "suppressed", covering_until)
    return Verdict(True, why)
