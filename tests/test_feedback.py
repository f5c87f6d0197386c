"""Feedback validation (CDS Hooks 2.0 §Feedback, invariants cds-fb-1..3), the memory store and the report."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from cds_hooks.feedback.models import (
    FeedbackError,
    FeedbackItem,
    FeedbackRequest,
    FeedbackResult,
    FeedbackStore,
    IssuedCard,
    MemoryFeedbackStore,
    feedback_outcome,
    parse_feedback,
)
from cds_hooks.feedback.report import NO_CODED_REASON, FeedbackFact, build_report, render_report
from tests.conftest import TEST_DATA

SPEC_EXAMPLES = TEST_DATA / "cds-hooks-examples/spec-2.x"
SERVICE = "breast-cancer-back-pain"
REASON_SYSTEM = "https://example.com/cds-hooks/override-reason-system"


def item(
    card: object = "card-1",
    outcome: object = "overridden",
    timestamp: object = "2024-05-01T10:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    """One feedback entry as a client would send it; `extra` adds or overrides members."""
    return {"card": card, "outcome": outcome, "outcomeTimestamp": timestamp, **extra}


def body(*items: dict[str, Any], **top: Any) -> bytes:
    return orjson.dumps({"feedback": list(items), **top})


def accepted(card: str, timestamp: str = "2024-05-01T10:00:00Z", suggestion: str = "s-1") -> dict[str, Any]:
    return item(card, "accepted", timestamp, acceptedSuggestions=[{"id": suggestion}])


def overridden(
    card: str, timestamp: str = "2024-05-01T10:00:00Z", code: str | None = None, comment: str | None = None
) -> dict[str, Any]:
    reason: dict[str, Any] = {}
    if code is not None:
        reason["reason"] = {"system": REASON_SYSTEM, "code": code}
    if comment is not None:
        reason["userComment"] = comment
    return item(card, "overridden", timestamp, **({"overrideReason": reason} if reason else {}))


def rejects(raw: bytes) -> FeedbackError:
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(raw)
    return caught.value


# --- the specification's own examples -------------------------------------------------------------------


def spec_example(number: int) -> bytes:
    """Examples 19-21 of cds-hooks/docs `current.md`, repaired into JSON.

    As printed they are not JSON: each starts with a `POST {baseUrl}/...` line, and example 20 has a
    `// uuid from card.uuid` comment. We drop the POST line and any `//` comment that follows whitespace
    (the `//` inside "https://..." in example 21 follows a colon, so it is kept). The files in tests/data
    are left untouched.
    """
    (path,) = SPEC_EXAMPLES.glob(f"spec-current-{number}-*.txt")
    lines = [line for line in path.read_text().splitlines() if not line.startswith("POST ")]
    return "\n".join(re.sub(r"\s+//.*$", "", line) for line in lines).encode()


def test_spec_example_19_suggestion_accepted() -> None:
    request = parse_feedback(spec_example(19))
    (entry,) = request.feedback
    assert entry.card == "4e0a3a1e-3283-4575-ab82-028d55fe2719"
    assert entry.outcome == "accepted"
    assert [s.id for s in entry.acceptedSuggestions or []] == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
    assert entry.outcomeTimestamp == datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)


def test_spec_example_20_overridden_without_reason() -> None:
    (entry,) = parse_feedback(spec_example(20)).feedback
    assert (entry.card, entry.outcome, entry.overrideReason) == (
        "f6b95768-b1c8-40dc-8385-bf3504b82ffb",
        "overridden",
        None,
    )


def test_spec_example_21_overridden_with_reason() -> None:
    (entry,) = parse_feedback(spec_example(21)).feedback
    assert entry.overrideReason is not None
    assert entry.overrideReason.reason is not None
    assert (entry.overrideReason.reason.system, entry.overrideReason.reason.code) == (
        REASON_SYSTEM,
        "d7ecf885",
    )
    assert entry.overrideReason.userComment == "A comment entered by the clinician."


def test_spec_examples_are_not_json_as_printed() -> None:
    """Guards the repair above: if the copied files ever become plain JSON, the repair must go."""
    for number in (19, 20, 21):
        (path,) = SPEC_EXAMPLES.glob(f"spec-current-{number}-*.txt")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(path.read_bytes())


# --- invariants ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["ignored", "rejected", "ACCEPTED", ""])
def test_cds_fb_1_outcome_must_be_accepted_or_overridden(outcome: str) -> None:
    error = rejects(body(item("c-1", outcome)))
    assert error.expression == "feedback[0].outcome"
    assert "cds-fb-1" in error.message
    assert "'c-1'" in error.message


def test_cds_fb_2_accepted_needs_accepted_suggestions() -> None:
    error = rejects(body(item("c-1", "accepted")))
    assert error.expression == "feedback[0].acceptedSuggestions"
    assert "cds-fb-2" in error.message


def test_cds_fb_2_accepted_suggestions_may_not_be_empty() -> None:
    error = rejects(body(item("c-1", "accepted", acceptedSuggestions=[])))
    assert error.expression == "feedback[0].acceptedSuggestions"
    assert "empty" in error.message


def test_cds_fb_2_satisfied() -> None:
    (entry,) = parse_feedback(body(accepted("c-1", suggestion="s-9"))).feedback
    assert [s.id for s in entry.acceptedSuggestions or []] == ["s-9"]


def test_cds_fb_3_override_reason_needs_reason_or_comment() -> None:
    error = rejects(body(item("c-1", overrideReason={})))
    assert error.expression == "feedback[0].overrideReason"
    assert "cds-fb-3" in error.message


@pytest.mark.parametrize(
    ("code", "comment"), [("not-indicated", None), (None, "already imaged elsewhere"), ("x", "both")]
)
def test_cds_fb_3_satisfied(code: str | None, comment: str | None) -> None:
    (entry,) = parse_feedback(body(overridden("c-1", code=code, comment=comment))).feedback
    assert entry.overrideReason is not None
    assert entry.overrideReason.userComment == comment
    assert (entry.overrideReason.reason.code if entry.overrideReason.reason else None) == code


# --- timestamps ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp",
    [
        "2021-12-11T10:05:31",  # naive
        "2021-12-11T10:05:31.250",  # naive with fraction
        "2021-12-11",  # a date is not a date-time
        "2021-12-11 10:05:31Z",  # space separator: not RFC 3339 §5.6 ABNF
        "2021-12-11T10:05Z",  # seconds are required
        "2021-12-11T10:05:31+0100",  # offset needs the colon
        "11/12/2021 10:05",
    ],
)
def test_timestamps_without_rfc3339_offset_are_rejected(timestamp: str) -> None:
    error = rejects(body(item("c-1", timestamp=timestamp)))
    assert error.expression == "feedback[0].outcomeTimestamp"
    assert "RFC 3339" in error.message


def test_errors_do_not_echo_submitted_content() -> None:
    """Error messages may be logged; what the client typed (possibly PHI) must not be in them."""
    for entry in (
        item(timestamp="Jane Doe 1970-01-01"),
        item(overrideReason={"userComment": ["Jane Doe"]}),
        item(outcome="Jane Doe"),
        item(overrideReason={"reason": {"system": "s", "code": "c", "display": ""}}, note="Jane Doe"),
    ):
        assert "Jane" not in rejects(body(entry)).message


def test_impossible_date_is_rejected() -> None:
    assert rejects(body(item(timestamp="2021-02-30T10:05:31Z"))).expression == "feedback[0].outcomeTimestamp"


@pytest.mark.parametrize("value", [1639217131, 1639217131.5, None, True])
def test_non_string_timestamps_are_rejected(value: object) -> None:
    assert rejects(body(item(timestamp=value))).expression == "feedback[0].outcomeTimestamp"


@pytest.mark.parametrize(
    ("timestamp", "utc"),
    [
        ("2021-12-11T10:05:31Z", datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)),
        ("2021-12-11t10:05:31z", datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)),
        ("2021-12-11T11:05:31+01:00", datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)),
        ("2021-12-11T10:05:31.5-00:30", datetime(2021, 12, 11, 10, 35, 31, 500000, tzinfo=UTC)),
    ],
)
def test_timestamps_with_offset_are_accepted(timestamp: str, utc: datetime) -> None:
    (entry,) = parse_feedback(body(item(timestamp=timestamp))).feedback
    assert entry.outcomeTimestamp == utc
    assert entry.outcomeTimestamp.utcoffset() is not None


def test_models_refuse_naive_datetime_from_python_too() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        FeedbackItem(card="c", outcome="overridden", outcomeTimestamp=datetime(2024, 1, 1))
    aware = FeedbackItem(card="c", outcome="overridden", outcomeTimestamp=datetime(2024, 1, 1, tzinfo=UTC))
    assert aware.outcomeTimestamp.tzinfo is not None


# --- shape and types -------------------------------------------------------------------------------------


def test_empty_feedback_list_is_rejected() -> None:
    error = rejects(b'{"feedback": []}')
    assert (error.expression, error.message) == ("feedback", "feedback: must not be empty")


@pytest.mark.parametrize(
    ("raw", "expression", "fragment"),
    [
        (b"", "(body)", "not valid JSON"),
        (b"{feedback: []}", "(body)", "not valid JSON"),
        (b"[]", "(body)", "got an array"),
        (b"null", "(body)", "got null"),
        (b"{}", "feedback", "is required"),
        (b'{"feedback": {"card": "c"}}', "feedback", "must be a JSON array"),
        (b'{"feedback": ["c"]}', "feedback[0]", "must be a JSON object"),
        (b'{"cards": []}', "cards", "unknown top-level member"),
    ],
)
def test_wrong_top_level_shapes_are_rejected_clearly(raw: bytes, expression: str, fragment: str) -> None:
    error = rejects(raw)
    assert error.expression == expression
    assert fragment in error.message


@pytest.mark.parametrize(
    ("entry", "expression"),
    [
        (item(card=7), "feedback[0].card"),
        (item(card=""), "feedback[0].card"),
        (item(outcome=1), "feedback[0].outcome"),
        ({"card": "c", "outcome": "overridden"}, "feedback[0].outcomeTimestamp"),
        (item("c", "accepted", acceptedSuggestions={"id": "s"}), "feedback[0].acceptedSuggestions"),
        (item("c", "accepted", acceptedSuggestions=[{"uuid": "s"}]), "feedback[0].acceptedSuggestions[0].id"),
        (item(overrideReason="not indicated"), "feedback[0].overrideReason"),
        (item(overrideReason={"reason": "not indicated"}), "feedback[0].overrideReason.reason"),
        (item(overrideReason={"reason": {"system": "s"}}), "feedback[0].overrideReason.reason.code"),
        (item(overrideReason={"userComment": ""}), "feedback[0].overrideReason.userComment"),
        (item(overrideReason={"userComment": 5}), "feedback[0].overrideReason.userComment"),
        (item(cardUuid="c"), "feedback[0].cardUuid"),
        # Longer than the store's columns:
        (item(card="c" * 257), "feedback[0].card"),
        (
            item("c", "accepted", acceptedSuggestions=[{"id": "s" * 257}]),
            "feedback[0].acceptedSuggestions[0].id",
        ),
        (
            item(overrideReason={"reason": {"system": "s" * 1025, "code": "c"}}),
            "feedback[0].overrideReason.reason.system",
        ),
        (
            item(overrideReason={"reason": {"system": "s", "code": "c" * 257}}),
            "feedback[0].overrideReason.reason.code",
        ),
    ],
)
def test_wrong_types_and_members_name_the_field(entry: dict[str, Any], expression: str) -> None:
    assert rejects(body(entry)).expression == expression


def test_error_names_the_offending_item_by_index_and_card() -> None:
    error = rejects(body(accepted("good"), item("bad-card", "accepted")))
    assert error.expression == "feedback[1].acceptedSuggestions"
    assert error.message.startswith("feedback[1] (card 'bad-card'): acceptedSuggestions: ")


def test_error_counts_further_problems() -> None:
    error = rejects(body(item(card=""), item(outcome="nope")))
    assert error.message.endswith("(and 1 more problem)")


def test_extension_objects_are_tolerated() -> None:
    ext = {"com.example.foo": {"bar": 1}}
    request = parse_feedback(
        body(
            item(extension=ext, overrideReason={"userComment": "x", "extension": ext}),
            accepted("c-2") | {"acceptedSuggestions": [{"id": "s", "extension": ext}]},
            extension=ext,
        )
    )
    assert request.extension == ext
    assert request.feedback[0].extension == ext


@pytest.mark.parametrize("value", [[], "x", 1])
def test_extension_must_be_an_object(value: object) -> None:
    assert rejects(body(item(extension=value))).expression == "feedback[0].extension"


# --- memory store ----------------------------------------------------------------------------------------


def test_memory_store_is_a_feedback_store() -> None:
    store: FeedbackStore = MemoryFeedbackStore()  # the static check (mypy)
    assert isinstance(store, FeedbackStore)  # and the runtime one


def issued_store(*uuids: str, issuer: str | None = None, services: tuple[str, ...] = (SERVICE,)) -> MemoryFeedbackStore:
    store = MemoryFeedbackStore()
    for service in services:
        store.record_issued(service, [IssuedCard(u, "warning") for u in uuids], issuer, None)
    return store


def test_memory_store_redelivery_is_idempotent() -> None:
    store = issued_store("c-1", "c-2", issuer="https://ehr.example")
    request = parse_feedback(body(accepted("c-1"), overridden("c-2", code="r")))
    assert store.record_feedback(SERVICE, request, "https://ehr.example", None) == FeedbackResult(2)
    assert store.record_feedback(SERVICE, request, "https://ehr.example", None) == FeedbackResult(0)
    # The same instant written with another offset is the same outcomeTimestamp.
    again = parse_feedback(body(accepted("c-1", timestamp="2024-05-01T12:00:00+02:00")))
    assert store.record_feedback(SERVICE, again, "https://ehr.example", None) == FeedbackResult(0)
    assert len(store.feedback_rows) == 2


def test_memory_store_refuses_feedback_on_cards_not_issued_to_this_client() -> None:
    store = issued_store("ours", issuer="https://ehr.example")
    store.record_issued(SERVICE, [IssuedCard("theirs", "critical")], "https://other.example", None)
    request = parse_feedback(body(overridden("never"), accepted("ours"), overridden("theirs")))
    assert store.record_feedback(SERVICE, request, "https://ehr.example", None) == FeedbackResult(1, (0, 2))
    assert [row.card_uuid for row in store.feedback_rows] == ["ours"]


def test_feedback_outcome_names_each_refused_item_up_to_a_bound() -> None:
    request = parse_feedback(body(*[overridden(f"c-{i}") for i in range(30)]))
    outcome = feedback_outcome(request, FeedbackResult(5, tuple(range(5, 30))))
    first, *warnings = outcome["issue"]
    assert first["diagnostics"] == (
        "Feedback received: 30 item(s), 5 new, 25 refused (card not issued by this service to this client)")
    assert [w["expression"] for w in warnings[:20]] == [[f"feedback[{i}].card"] for i in range(5, 25)]
    assert warnings[20]["diagnostics"] == "5 more item(s) refused for the same reason"
    assert len(warnings) == 21 and all(w["severity"] == "warning" for w in warnings)
    plain = feedback_outcome(request, FeedbackResult(30))
    assert plain["issue"] == [{"severity": "information", "code": "informational",
                               "diagnostics": "Feedback received: 30 item(s), 30 new"}]


def test_memory_store_keeps_distinct_outcomes_and_times() -> None:
    store = issued_store("c-1", services=(SERVICE, "another-service"))
    request = parse_feedback(
        body(
            accepted("c-1"),
            overridden("c-1"),  # same card and time, other outcome
            accepted("c-1", timestamp="2024-05-01T10:00:01Z"),  # same card and outcome, later
            accepted("c-1", timestamp="2024-05-01T10:00:01Z"),  # duplicate within one delivery
        )
    )
    assert store.record_feedback(SERVICE, request, None, None) == FeedbackResult(3)
    assert store.record_feedback("another-service", request, None, None) == FeedbackResult(3)


def test_memory_store_keeps_no_user_comment_or_extension() -> None:
    store = issued_store("c-1")
    comment = "Patient Jane Doe, MRN 12345, declined"
    raw = body(overridden("c-1", code="declined", comment=comment) | {"extension": {"com.x": "secret-ext"}})
    store.record_feedback(SERVICE, parse_feedback(raw), None, None)
    (row,) = store.feedback_rows
    values = repr(dataclasses.astuple(row))
    assert "declined" in values  # the coded reason is kept, the free text is not:
    assert comment not in values and "Jane" not in values and "secret-ext" not in values
    assert (row.reason_system, row.reason_code) == (REASON_SYSTEM, "declined")


def test_memory_store_row_contents() -> None:
    store = issued_store("c-1", issuer="https://ehr.example")
    before = datetime.now(UTC)
    raw = body(accepted("c-1", timestamp="2024-05-01T12:00:00+02:00", suggestion="mri"))
    store.record_feedback(SERVICE, parse_feedback(raw), "https://ehr.example", "tenant-a")
    (row,) = store.feedback_rows
    assert row.service_id == SERVICE
    assert (row.card_uuid, row.outcome, row.accepted_suggestions) == ("c-1", "accepted", ("mri",))
    assert row.outcome_timestamp == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert row.outcome_timestamp.tzinfo == UTC
    assert (row.issuer, row.tenant) == ("https://ehr.example", "tenant-a")
    assert before <= row.received_at <= datetime.now(UTC)


def report_scenario(store: FeedbackStore) -> None:
    """A fixed set of issued cards and feedback; `expected_report_rows` gives the report it must produce.

    critical: 3 issued; c1 accepted; c2 overridden (reason a), c3 ignored.
    warning: 2 issued; w1 overridden (reason a) then later accepted (final: accepted);
             w2 accepted and overridden at the same instant (tie: overridden, comment only).
    x1, which we never issued, overridden (reason b): refused, not stored.
    """
    store.record_issued(
        SERVICE,
        [IssuedCard("c1", "critical"), IssuedCard("c2", "critical"), IssuedCard("c3", "critical")],
        None,
        "tenant-a",
    )
    store.record_issued(SERVICE, [IssuedCard("w1", "warning"), IssuedCard("w2", "warning")], None, None)
    store.record_issued(SERVICE, [IssuedCard("c1", "critical")], None, None)  # re-recorded: counted once
    first = body(
        accepted("c1"),
        overridden("c2", code="a", comment="free text"),
        overridden("w1", code="a", timestamp="2024-05-01T09:00:00Z"),
        overridden("x1", code="b"),
    )
    second = body(
        accepted("w1", timestamp="2024-05-01T09:30:00Z"),
        accepted("w2", timestamp="2024-05-01T11:00:00Z"),
        overridden("w2", timestamp="2024-05-01T11:00:00Z", comment="only a comment"),
    )
    assert store.record_feedback(SERVICE, parse_feedback(first), None, None) == FeedbackResult(3, (3,))
    assert store.record_feedback(SERVICE, parse_feedback(second), None, None) == FeedbackResult(3)
    assert store.record_feedback(SERVICE, parse_feedback(second), None, None) == FeedbackResult(0)


Rows = list[tuple[object, ...]]


def expected_report_rows() -> tuple[Rows, Rows]:
    kinds: list[tuple[object, ...]] = [
        # kind, issued, feedback rows, accepted, overridden, acceptance, override
        ("critical", 3, 2, 1, 1, pytest.approx(1 / 3), pytest.approx(1 / 3)),
        ("warning", 2, 4, 1, 1, 0.5, 0.5),
    ]
    reasons: Rows = [
        (f"{REASON_SYSTEM}|a", 1, 0.5),
        (NO_CODED_REASON, 1, 0.5),  # ties: the uncoded bucket comes last
    ]
    return kinds, reasons


def report_rows(store: FeedbackStore) -> tuple[Rows, Rows]:
    report = store.report()
    return (
        [dataclasses.astuple(row) for row in report.by_kind],
        [dataclasses.astuple(row) for row in report.by_reason],
    )


def test_memory_store_report() -> None:
    store = MemoryFeedbackStore()
    report_scenario(store)
    assert report_rows(store) == expected_report_rows()


def test_report_of_nothing() -> None:
    report = MemoryFeedbackStore().report()
    assert (report.by_kind, report.by_reason) == ((), ())
    assert render_report(report) == "No cards issued and no feedback recorded.\n"


def test_issued_cards_without_feedback_still_appear() -> None:
    store = MemoryFeedbackStore()
    store.record_issued(SERVICE, [IssuedCard("c1", "warning")], None, None)
    (row,) = store.report().by_kind
    assert dataclasses.astuple(row) == ("warning", 1, 0, 0, 0, 0.0, 0.0)


def test_kind_join_is_per_service() -> None:
    store = MemoryFeedbackStore()
    store.record_issued("other-service", [IssuedCard("c1", "critical")], None, None)
    # c1 was issued by another service: feedback sent to this one is refused.
    assert store.record_feedback(SERVICE, parse_feedback(body(accepted("c1"))), None, None).refused == (0,)
    assert [(r.kind, r.issued, r.feedback) for r in store.report().by_kind] == [("critical", 1, 0)]


def test_render_report_table() -> None:
    store = MemoryFeedbackStore()
    report_scenario(store)
    text = render_report(store.report())
    lines = text.splitlines()
    assert lines[1].split() == [
        "kind",
        "issued",
        "feedback",
        "accepted",
        "overridden",
        "acceptance",
        "override",
    ]
    assert lines[2].split() == ["critical", "3", "2", "1", "1", "33.3%", "33.3%"]
    assert lines[3].split() == ["warning", "2", "4", "1", "1", "50.0%", "50.0%"]
    assert f"{REASON_SYSTEM}|a" in text and NO_CODED_REASON in text
    # Columns line up: every number column ends at the same place as its header.
    assert len({len(line) for line in lines[1:4]}) == 1


def test_render_report_of_rows_from_before_feedback_was_checked() -> None:
    """Feedback on cards never issued was stored before it was refused: such rows report as kind unknown."""
    fact = FeedbackFact(SERVICE, "x1", "unknown", "overridden", datetime(2024, 5, 1, tzinfo=UTC), None, None)
    lines = render_report(build_report({}, [fact])).splitlines()
    assert lines[2].split() == ["unknown", "0", "1", "0", "1", "-", "-"]


def test_build_report_orders_reasons_by_count_then_name() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    facts = [
        FeedbackFact(SERVICE, f"c{i}", "warning", "overridden", t0, "s", code)
        for i, code in enumerate(["b", "a", "b", "c"])
    ]
    report = build_report({"warning": 4}, facts)
    assert [(r.reason, r.count, r.share) for r in report.by_reason] == [
        ("s|b", 2, 0.5),
        ("s|a", 1, 0.25),
        ("s|c", 1, 0.25),
    ]


def test_feedback_request_round_trips() -> None:
    request = parse_feedback(body(accepted("c-1"), overridden("c-2", code="r", comment="c")))
    again = parse_feedback(request.model_dump_json(exclude_none=True).encode())
    assert again == request
    assert isinstance(again, FeedbackRequest)
