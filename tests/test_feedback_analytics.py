"""The committee report's figures, on data whose every rate is worked out by hand below."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cds_hooks.feedback.acknowledgements import SuppressedCard
from cds_hooks.feedback.models import IssuedCard, MemoryFeedbackStore, parse_feedback
from cds_hooks.feedback.report import (
    NO_CODED_REASON,
    UNRECORDED,
    FeedbackFact,
    FeedbackReport,
    IssuedFact,
    SuppressedFact,
    build_report,
    render_report,
)
from cds_hooks.feedback.store import SqlFeedbackStore

S = "breast-cancer-back-pain"
HL7 = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
OURS = "urn:mscc-alert:override-reason"
DAY0 = datetime(2026, 10, 1, tzinfo=UTC)


def at(day: int, hour: int) -> datetime:
    return DAY0 + timedelta(days=day, hours=hour)


# card, tier, rules version, patient, clinician, issued (day, hour)
CARDS = [
    ("w1", "warning", "v1", "A", "U1", at(0, 10)),
    ("w2", "warning", "v1", "A", "U1", at(5, 10)),  # A's second warning 5 days after the first: a repeat
    ("w3", "warning", "v1", "A", "U2", at(40, 9)),  # 35 days after w2: not a repeat; opens A's second window
    ("w4", "warning", "v1", "B", "U1", at(0, 11)),
    ("c1", "critical", "v1", "A", "U1", at(6, 10)),  # A's first critical card: an escalation, not a repeat
    ("c2", "critical", "v2", "C", "U2", at(40, 10)),
    ("c3", "critical", "v2", "C", "U2", at(41, 10)),  # a repeat of c2
    ("n1", "warning", None, None, None, at(3, 8)),  # issued without a pseudonym secret
]
FEEDBACK = [
    ("w1", "overridden", HL7, "indication-order-exists"),
    ("w2", "accepted", None, None),
    ("w4", "overridden", OURS, "imaging-done-elsewhere"),  # a retired code, from before
    ("c1", "accepted", None, None),
    ("c2", "overridden", None, None),
]
SUPPRESSED = [("warning", "v1")] * 3 + [("critical", "v2")]


def analytics() -> FeedbackReport:
    issued = [IssuedFact(S, uuid, tier, when, version, patient, user)
              for uuid, tier, version, patient, user, when in CARDS]
    tier_of = {uuid: tier for uuid, tier, *_ in CARDS}
    facts = [FeedbackFact(S, uuid, tier_of[uuid], outcome, at(50, 0), system, code)
             for uuid, outcome, system, code in FEEDBACK]
    hidden = [SuppressedFact(tier, version, at(45, 0)) for tier, version in SUPPRESSED]
    counts = {"warning": 5, "critical": 3}
    return build_report(counts, facts, issued, hidden)


def test_by_tier() -> None:
    report = analytics()
    # warning: 5 issued, w2 accepted (1/5 = 20%), w1 and w4 overridden (2/5 = 40%);
    # critical: 3 issued, c1 accepted, c2 overridden (1/3 each).
    rows = [(r.kind, r.issued, r.accepted, r.overridden, r.acceptance_rate, r.override_rate) for r in report.by_kind]
    assert rows == [
        ("critical", 3, 1, 1, pytest.approx(1 / 3), pytest.approx(1 / 3)),
        ("warning", 5, 1, 2, 0.2, 0.4),
    ]
    assert dict(report.suppressed_by_kind) == {"warning": 3, "critical": 1}


def test_by_rules_version() -> None:
    rows = [(r.rules_version, r.kind, r.issued, r.accepted, r.overridden, r.acceptance_rate, r.override_rate,
             r.suppressed, r.suppressed_share) for r in analytics().by_version]
    assert rows == [
        # v1 critical: c1 accepted; nothing suppressed.
        ("v1", "critical", 1, 1, 0, 1.0, 0.0, 0, 0.0),
        # v1 warning: w1-w4; w2 accepted (1/4), w1 and w4 overridden (2/4); 3 suppressed of 3 + 4 = 7.
        ("v1", "warning", 4, 1, 2, 0.25, 0.5, 3, pytest.approx(3 / 7)),
        # v2 critical: c2, c3; c2 overridden (1/2); 1 suppressed of 1 + 2 = 3.
        ("v2", "critical", 2, 0, 1, 0.0, 0.5, 1, pytest.approx(1 / 3)),
        (UNRECORDED, "warning", 1, 0, 0, 0.0, 0.0, 0, 0.0),
    ]


def test_override_reasons_by_tier_with_their_meaning() -> None:
    rows = [(r.kind, r.reason, r.count, r.share, r.label) for r in analytics().reasons_by_kind]
    assert rows == [
        ("critical", NO_CODED_REASON, 1, 1.0, ""),
        ("warning", f"{HL7}|indication-order-exists", 1, 0.5, "Spinal MRI already ordered or booked"),
        ("warning", f"{OURS}|imaging-done-elsewhere", 1, 0.5,
         "Spinal MRI already done or booked elsewhere (retired code; now indication-order-exists)"),
    ]


def test_override_reasons_by_rules_version() -> None:
    rows = [(r.rules_version, r.kind, r.reason, r.count, r.share) for r in analytics().reasons_by_version]
    assert rows == [
        # v1 warning overrides: w1 and w4, one reason each; v2 critical: c2, without a coded reason.
        ("v1", "warning", f"{HL7}|indication-order-exists", 1, 0.5),
        ("v1", "warning", f"{OURS}|imaging-done-elsewhere", 1, 0.5),
        ("v2", "critical", NO_CODED_REASON, 1, 1.0),
    ]


def test_repeat_cards() -> None:
    rows = [(r.kind, r.patients, r.cards, r.windows, r.cards_per_patient_30d, r.repeats, r.repeat_share,
             r.without_pseudonym) for r in analytics().repeats]
    assert rows == [
        # A: c1 (1 window); C: c2, c3 one day apart (1 window, c3 a repeat). 3 cards / 2 windows; 1 of 3 repeats.
        ("critical", 2, 3, 2, 1.5, 1, pytest.approx(1 / 3), 0),
        # A: w1, w2 (window from day 0), w3 on day 40 (a second window); B: w4. 4 cards / 3 windows; w2 repeats.
        ("warning", 2, 4, 3, pytest.approx(4 / 3), 1, 0.25, 1),
    ]


def test_cards_per_clinician_per_day() -> None:
    rows = [(r.kind, r.clinician_days, r.cards, r.mean, r.median, r.maximum, r.without_pseudonym, r.per_day)
            for r in analytics().clinicians]
    assert rows == [
        # U1 day 0: w1, w4; U1 day 5: w2; U1 day 6: c1; U2 day 40: w3, c2; U2 day 41: c3 -> 7 cards on 5 days.
        ("all", 5, 7, 1.4, 1, 2, 1, (1, 1, 1, 2, 2)),
        ("critical", 3, 3, 1.0, 1, 1, 0, (1, 1, 1)),
        # U1 day 0: w1, w4; U1 day 5: w2; U2 day 40: w3.
        ("warning", 3, 4, pytest.approx(4 / 3), 1, 2, 1, (1, 1, 2)),
    ]


def test_a_clinician_day_is_the_sites_day() -> None:
    """An evening shift in New York runs past midnight UTC: one clinician-day there, two in UTC."""
    from zoneinfo import ZoneInfo

    evening = [IssuedFact(S, uuid, "warning", at(3, hour), "v1", "A", "U1") for uuid, hour in (("e1", 23), ("e2", 25))]
    [utc] = build_report({"warning": 2}, [], evening).clinicians[:1]
    [local] = build_report({"warning": 2}, [], evening, zone=ZoneInfo("America/New_York")).clinicians[:1]
    assert (utc.clinician_days, utc.per_day) == (2, (1, 1))
    assert (local.clinician_days, local.per_day) == (1, (2,))


def test_text_report_has_every_section() -> None:
    text = render_report(analytics())
    for title in ("Cards by kind", "Override reasons by kind", "Cards suppressed", "By rules version",
                  "Override reasons by rules version",
                  "Repeat cards", "Cards per clinician per day"):
        assert title in text
    (line,) = [line for line in text.splitlines() if line.startswith("v1") and "42.9%" in line]
    assert line.split() == ["v1", "warning", "4", "1", "2", "25.0%", "50.0%", "3", "42.9%"]
    (line,) = [line for line in text.splitlines() if line.startswith("warning") and "25.0%" in line]
    assert line.split() == ["warning", "2", "4", "1.33", "1", "25.0%", "1"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stores_pass_pseudonyms_versions_and_suppressions_to_the_report(kind: str, tmp_path: Path) -> None:
    store = MemoryFeedbackStore() if kind == "memory" else SqlFeedbackStore(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    try:
        cards = [IssuedCard(f"c{i}", "warning", kind="spinal-metastases", rules_version="v9", patient_key="P",
                            user_key="U") for i in range(3)]
        store.record_issued(S, cards, None, None)
        store.acknowledgements().record_suppressed(S, [SuppressedCard("spinal-metastases", "warning", "v9")], None,
                                                   None)
        body = b'{"feedback": [{"card": "c0", "outcome": "overridden", "outcomeTimestamp": "2026-11-01T10:00:00Z"}]}'
        store.record_feedback(S, parse_feedback(body), None, None)
        report = store.report()
    finally:
        store.close()
    (version,) = report.by_version
    assert (version.rules_version, version.issued, version.overridden, version.suppressed) == ("v9", 3, 1, 1)
    (repeat,) = report.repeats
    assert (repeat.patients, repeat.cards, repeat.repeats, repeat.windows) == (1, 3, 2, 1)
    assert [(r.kind, r.clinician_days, r.cards) for r in report.clinicians] == [("all", 1, 3), ("warning", 1, 3)]


def test_html_report_is_self_contained_and_carries_the_figures() -> None:
    from cds_hooks.feedback.report_html import render_html

    page = render_html(analytics(), generated=datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    # Nothing fetched when it opens: no script, stylesheet, image, frame or font from anywhere.
    for tag in ("<script", "<link", "<img", "<iframe", "@import", "url("):
        assert tag not in page
    assert page.count("<svg") == 6  # outcomes, reasons, suppressed, versions, repeats, clinician-days
    for figure in ("accepted 20.0%", "overridden 40.0%", "42.9%", "1.33", "repeats 25.0%", "3 clinician-days",
                   "Spinal MRI already ordered or booked", "suppressed 3"):
        assert figure in page
    assert "Generated 2026-12-01 09:00 UTC" in page


def test_html_report_of_nothing() -> None:
    from cds_hooks.feedback.report_html import render_html

    page = render_html(MemoryFeedbackStore().report())
    assert "No cards issued." in page and "<svg" not in page
