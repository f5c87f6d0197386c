"""Unit tests of the small pieces under fhir_mapping: date spans, free text, repair and the intake filter."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from fhir_mapping.dates import Calendar, age_in_years, parse_span, span_of_period
from fhir_mapping.intake import collect, repair
from fhir_mapping.terminology import load_terminology
from fhir_mapping.text import breast_cancer_in, spinal_pain_in


@pytest.mark.parametrize(
    ("text", "earliest", "latest"),
    [
        ("2019", "2019-01-01T00:00:00+00:00", "2019-12-31T23:59:59.999999+00:00"),
        ("2024-02", "2024-02-01T00:00:00+00:00", "2024-02-29T23:59:59.999999+00:00"),
        ("2024-05-03", "2024-05-03T00:00:00+00:00", "2024-05-03T23:59:59.999999+00:00"),
        ("2024-05-03T10:00:00+02:00", "2024-05-03T08:00:00+00:00", "2024-05-03T08:00:00+00:00"),
        ("2024-05-03T10:00:00Z", "2024-05-03T10:00:00+00:00", "2024-05-03T10:00:00+00:00"),
    ],
)
def test_partial_dates_are_spans(text: str, earliest: str, latest: str) -> None:
    span = parse_span(text)
    assert span is not None
    assert span.earliest.isoformat() == earliest
    assert span.latest.isoformat() == latest


def test_datetime_without_timezone_is_read_as_utc_and_flagged() -> None:
    span = parse_span("2024-05-03T10:00:00")
    assert span is not None and span.assumed_utc
    assert span.earliest == datetime(2024, 5, 3, 10, tzinfo=UTC)


@pytest.mark.parametrize("junk", [None, "", "yesterday", "2024-13", 17, "2024-02-30"])
def test_unreadable_dates_are_none(junk: object) -> None:
    assert parse_span(junk) is None


def test_open_period_spans_its_start() -> None:
    span = span_of_period("2024-05", None)
    assert span is not None and span.latest.date().isoformat() == "2024-05-31"


def test_age_uses_the_youngest_possible_birth_date() -> None:
    birth = parse_span("2008")
    assert birth is not None
    # Born some time in 2008: on 2026-06-01 the patient may still be 17, so under-18 rules must apply.
    assert age_in_years(birth, datetime(2026, 6, 1, tzinfo=UTC)) == 17


@pytest.mark.parametrize(
    ("text", "region"),
    [("lower back ache", "lumbar"), ("Thoracic back pain at night", "thoracic"), ("neck pain", "cervical"),
     ("Backache", "unspecified"), ("pain in the lower back, worse on coughing", "lumbar")],
)
def test_spinal_pain_text(text: str, region: str) -> None:
    found = spinal_pain_in(text)
    assert found is not None and found.region == region


@pytest.mark.parametrize(
    "text", ["no back pain", "Denies back pain", "back pain resolved", "feedback", "backorder",
             "pain at the back of head", "mother has back pain"],
)
def test_negated_or_unrelated_text_is_not_pain(text: str) -> None:
    assert spinal_pain_in(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Breast cancer", True), ("carcinoma of left breast", True), ("Family history of breast cancer", False),
     ("DCIS of breast", False), ("melanoma metastatic to the breast", False), ("suspected breast cancer", False)],
)
def test_breast_cancer_text(text: str, expected: bool) -> None:
    assert breast_cancer_in(text) is expected


def test_repair_mends_integer_codes_and_naive_datetimes_only() -> None:
    data = {"code": {"coding": [{"code": 161891005, "system": "http://snomed.info/sct"}]},
            "onsetDateTime": "2024-05-03T10:00", "valueInteger": 7, "note": [{"text": "2024-05-03T10:00:00"}]}
    mended = repair(data)
    assert mended["code"]["coding"][0]["code"] == "161891005"
    assert mended["onsetDateTime"] == "2024-05-03T10:00:00+00:00"
    assert mended["valueInteger"] == 7


def _bundle(*resources: dict[str, object]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset",
                         "entry": [{"resource": r} for r in resources]})


def test_intake_validates_only_relevant_resources_and_reports_broken_ones() -> None:
    patient = "p1"
    subject = {"reference": f"Patient/{patient}"}
    heart_rate = {"resourceType": "Observation", "id": "hr", "status": "final", "subject": subject,
                  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "back pain?"}}
    pain = {"resourceType": "Condition", "id": "pain", "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": 279039007}]}}
    broken = {"resourceType": "Condition", "id": "broken", "subject": subject, "code": "breast cancer"}
    someone_else = {**pain, "id": "other", "subject": {"reference": "Patient/p2"}}
    intake = collect([_bundle(heart_rate, pain, broken, someone_else, pain)], patient, load_terminology())
    assert [r.id for r in intake.resources] == ["pain"]  # integer code repaired, heart rate never validated
    assert [(s.resource_type, s.resource_id) for s in intake.skipped] == [("Condition", "broken")]
    assert intake.other_patient == 1
    assert intake.duplicates == 1
    assert intake.seen == 5


@pytest.mark.parametrize(
    ("days", "words"),
    [(0, "today"), (1, "yesterday"), (9, "12 Nov (9 days ago)"), (89, "24 Aug (89 days ago)"),
     (200, "5 May (6 months ago)"), (1095, "Nov 2023 (3 years ago)"), (-3, "24 Nov (in the future)")],
)
def test_card_says_how_long_ago_in_words_a_clinician_reads(days: int, words: str) -> None:
    from datetime import timedelta

    from cards.render import _on

    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    span = parse_span((now - timedelta(days=days)).isoformat())
    assert span is not None
    assert _on(span, Calendar(now)) == words


@pytest.mark.parametrize(
    ("written", "now", "zone", "words"),
    [("2026-11-12T18:00:00-05:00", "2026-11-13T02:00:00+00:00", None, "today"),  # 21:00 on the 12th where written
     ("2026-11-12T22:00:00-05:00", "2026-11-21T12:00:00+00:00", None, "12 Nov (9 days ago)"),  # not UTC's 13 Nov
     ("2026-11-13T01:00:00+09:00", "2026-11-13T10:00:00+00:00", None, "today"),  # 19:00 on the 13th where written
     ("2026-11-12", "2026-11-13T02:00:00+00:00", None, "yesterday"),  # a date alone: `now`'s own day
     ("2026-11-12", "2026-11-12T21:00:00-05:00", None, "today"),
     # A zone set for the site: every dateTime in it, whatever offset the server wrote (UTC here, as many do).
     ("2026-11-13T03:00:00Z", "2026-11-13T04:00:00Z", "America/New_York", "today"),  # 22:00 and 23:00 on the 12th
     ("2026-11-13T03:00:00Z", "2026-11-21T12:00:00Z", "America/New_York", "12 Nov (9 days ago)"),
     ("2026-11-12T23:30:00Z", "2026-11-13T14:00:00Z", "Australia/Sydney", "yesterday"),  # 13th 10:30, 14th 01:00
     ("2026-11-12", "2026-11-13T02:00:00Z", "America/New_York", "today"),  # 21:00 on the 12th in New York
     ("2026-03-08T12:00:00Z", "2026-03-09T04:30:00Z", "America/New_York", "yesterday")],  # 00:30 EDT, 23:30 EST
)
def test_card_dates_a_finding_by_the_day_its_reader_sees(written: str, now: str, zone: str | None,
                                                         words: str) -> None:
    from zoneinfo import ZoneInfo

    from cards.render import _on

    span = parse_span(written)
    assert span is not None
    assert _on(span, Calendar(datetime.fromisoformat(now), ZoneInfo(zone) if zone else None)) == words
