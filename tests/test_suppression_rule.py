"""The pure rule of "shown once, unless it gets worse" (cards/suppression.py), case by case."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import orjson
import pytest

from cards.decision import Decision
from cards.evaluate import evaluate_documents
from cards.policy import Policy
from cards.suppression import CardFacts, PriorAction, Windows, card_facts, evidence_date, verdict
from fhir_mapping.terminology import load_terminology
from tests.scenarios import fhir_builders as fb

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EVIDENCE = NOW - timedelta(days=10)
WINDOWS = Windows()


def prior(outcome: str = "overridden", kind: str = "spinal-metastases", indicator: str = "warning", *,
          days_ago: float = 1, evidence_at: datetime | None = EVIDENCE) -> PriorAction:
    at = NOW - timedelta(days=days_ago)
    return PriorAction(kind, indicator, evidence_at, outcome, issued_at=at - timedelta(minutes=5),  # type: ignore[arg-type]
                       outcome_at=at, received_at=at + timedelta(seconds=1))


WARNING = CardFacts("spinal-metastases", "warning", EVIDENCE)
CRITICAL = CardFacts("mscc", "critical", EVIDENCE)


def test_no_prior_action_shows() -> None:
    assert verdict(WARNING, [], WINDOWS, NOW).show


@pytest.mark.parametrize(("outcome", "indicator", "days_ago", "show"), [
    ("overridden", "warning", 13.9, False),  # 14 days after an override
    ("overridden", "warning", 14.1, True),
    ("overridden", "critical", 13.9, False),
    ("accepted", "warning", 6.9, False),  # the urgent MRI's week
    ("accepted", "warning", 7.1, True),
    ("accepted", "critical", 0.9, False),  # the stat MRI's 24 hours
    ("accepted", "critical", 1.1, True),
])
def test_windows(outcome: str, indicator: str, days_ago: float, show: bool) -> None:
    kind = "mscc" if indicator == "critical" else "spinal-metastases"
    card = CardFacts(kind, indicator, EVIDENCE)
    result = verdict(card, [prior(outcome, kind, indicator, days_ago=days_ago)], WINDOWS, NOW)
    assert result.show is show
    if not show:
        expected = {"overridden": 14, "accepted": 1 if indicator == "critical" else 7}[outcome]
        assert result.until == NOW - timedelta(days=days_ago) + timedelta(days=expected)


def test_windows_are_configurable() -> None:
    assert verdict(WARNING, [prior(days_ago=3)], Windows(override_days=2), NOW).show
    assert not verdict(WARNING, [prior("accepted", days_ago=3)], Windows(accepted_warning_days=4), NOW).show


def test_escalation_to_critical_shows_at_once() -> None:
    result = verdict(CRITICAL, [prior("overridden", days_ago=0.01)], WINDOWS, NOW)
    assert (result.show, result.why) == (True, "escalated")


def test_a_lesser_card_is_covered_by_a_greater_one() -> None:
    assert not verdict(WARNING, [prior("overridden", "mscc", "critical")], WINDOWS, NOW).show
    weak = CardFacts("weak-history", "info", EVIDENCE)
    assert not verdict(weak, [prior()], WINDOWS, NOW).show
    assert verdict(WARNING, [prior("overridden", "weak-history", "info")], WINDOWS, NOW).show


def test_a_card_downgraded_for_palliative_care_that_returns_at_full_tier_shows() -> None:
    downgraded = prior("overridden", "mscc", "info")
    assert verdict(CRITICAL, [downgraded], WINDOWS, NOW).why == "escalated"
    assert not verdict(CardFacts("mscc", "info", EVIDENCE), [downgraded], WINDOWS, NOW).show


def test_the_unreadable_records_note_is_its_own_card() -> None:
    note = CardFacts("unreadable-records", "info", None)
    assert verdict(note, [prior()], WINDOWS, NOW).show
    assert not verdict(note, [prior("overridden", "unreadable-records", "info", evidence_at=None)], WINDOWS, NOW).show
    assert verdict(WARNING, [prior("overridden", "unreadable-records", "info")], WINDOWS, NOW).show


def test_new_evidence_dated_after_the_feedback_shows() -> None:
    action = prior(days_ago=2)
    later = CardFacts("spinal-metastases", "warning", NOW - timedelta(days=1))
    assert verdict(later, [action], WINDOWS, NOW).why == "new-evidence"


def test_evidence_recorded_in_the_second_of_the_feedback_is_after_it() -> None:
    at = NOW - timedelta(hours=12, microseconds=-300_000)  # the feedback came 0.3 s into its second
    action = PriorAction("spinal-metastases", "warning", EVIDENCE, "overridden", issued_at=at - timedelta(minutes=1),
                         outcome_at=at, received_at=at)
    whole_second = at.replace(microsecond=0)
    assert verdict(CardFacts("spinal-metastases", "warning", whole_second), [action], WINDOWS, NOW).why == (
        "new-evidence")
    second_before = CardFacts("spinal-metastases", "warning", whole_second - timedelta(seconds=1))
    assert not verdict(second_before, [action], WINDOWS, NOW).show


def test_evidence_newer_than_the_card_but_dated_before_the_feedback_does_not() -> None:
    # Entered after the card, back-dated before the feedback: not "dated after the feedback".
    action = prior(days_ago=2)
    backdated = CardFacts("spinal-metastases", "warning", NOW - timedelta(days=3))
    assert not verdict(backdated, [action], WINDOWS, NOW).show


def test_evidence_the_acted_on_card_already_had_is_not_new() -> None:
    # A date-only finding counts to the end of its day, which may lie after the feedback: still not new.
    end_of_today = NOW.replace(hour=23, minute=59, second=59)
    action = prior(days_ago=0.1, evidence_at=end_of_today)
    assert not verdict(CardFacts("spinal-metastases", "warning", end_of_today), [action], WINDOWS, NOW).show


def test_a_card_without_dated_evidence_is_never_new() -> None:
    assert not verdict(CardFacts("spinal-metastases", "warning", None), [prior()], WINDOWS, NOW).show


def test_a_future_outcome_timestamp_cannot_stretch_the_window() -> None:
    at = NOW - timedelta(days=13)
    forged = PriorAction("spinal-metastases", "warning", EVIDENCE, "overridden", issued_at=at,
                         outcome_at=NOW + timedelta(days=365), received_at=at)
    assert forged.acted_at == at
    assert verdict(WARNING, [forged], WINDOWS, NOW + timedelta(days=1.5)).show


def test_an_outcome_timestamp_before_the_card_was_issued_counts_from_the_issue() -> None:
    issued = NOW - timedelta(days=1)
    early = PriorAction("spinal-metastases", "warning", EVIDENCE, "overridden", issued_at=issued,
                        outcome_at=NOW - timedelta(days=30), received_at=issued)
    assert early.acted_at == issued
    assert not verdict(WARNING, [early], WINDOWS, NOW).show


def test_any_covering_action_suppresses_and_the_latest_window_is_reported() -> None:
    result = verdict(WARNING, [prior("accepted", days_ago=6), prior("overridden", days_ago=1)], WINDOWS, NOW)
    assert (result.show, result.until) == (False, NOW - timedelta(days=1) + timedelta(days=14))


def _decision(*conditions: dict[str, object]) -> Decision:
    request = fb.hook_request(fb.patient(), conditions=list(conditions))
    documents = [orjson.dumps(v) for v in request["prefetch"].values() if v is not None]
    return evaluate_documents(documents, patient_id=fb.PATIENT_ID, user_id=None, now=fb.now(), policy=Policy(),
                              terminology=load_terminology()).decision


def test_evidence_date_is_the_latest_date_the_card_rests_on() -> None:
    pain = fb.back_pain(onset_days_ago=10, recorded_days_ago=9)
    decision = _decision(fb.breast_cancer(), pain)
    facts = card_facts(decision)
    assert facts is not None and (facts.kind, facts.indicator) == ("spinal-metastases", "warning")
    # The pain's onset is its date (10 days ago), later than the cancer's three years.
    assert facts.evidence_at is not None
    assert abs(facts.evidence_at - fb.days_ago(10)) < timedelta(seconds=2)

    walking = fb.finding(fb.DIFFICULTY_WALKING, onset_days_ago=2)
    with_neuro = _decision(fb.breast_cancer(), pain, walking)
    latest = evidence_date(with_neuro)
    assert latest is not None and abs(latest - fb.days_ago(2)) < timedelta(seconds=2)

    # A date without a time counts as the end of its day.
    day = fb.iso_date(6)
    dated = fb.back_pain(onset_days_ago=None, recorded_days_ago=None, onsetDateTime=day)
    day_only = _decision(fb.breast_cancer(), dated)
    assert card_facts(day_only) is not None
    assert evidence_date(day_only) == datetime.combine(date.fromisoformat(day), time.max, tzinfo=UTC)


def test_no_card_no_facts() -> None:
    assert card_facts(_decision(fb.back_pain())) is None
