"""Durable feedback end to end: cards from a running `mscc-alert serve`, feedback on them over HTTP, a
restart on the same database, and `mscc-alert feedback-report` reading it back; on an SQLite file and on a
real PostgreSQL server (tests/postgres.py).

The store must keep analytics only: the clinician's free-text userComment (which here names a patient) must
be nowhere in the database, nor in the service's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import MetaData, create_engine, select

from tests.conftest import SERVICE_ID, LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb

pytestmark = pytest.mark.e2e  # starts servers or subprocesses

if TYPE_CHECKING:
    pass

pytest_plugins = ["tests.postgres"]

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{SERVICE_PATH}/feedback"
REASON_SYSTEM = "urn:mscc-alert:override-reason"
HL7_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
FAKE_PATIENT = "Hortensia Vandergriff-Oyelaran"
USER_COMMENT = f"Spoke to {FAKE_PATIENT} (MRN 77-4410-93): MRI already booked at St Elsewhere"



@pytest.fixture
def service_env(database_url: str) -> dict[str, str]:
    return {"MSCC_ALERT_DATABASE_URL": database_url, "MSCC_ALERT_LOG_FORMAT": "json"}


@pytest.fixture
def service(tmp_path: Path, service_env: dict[str, str]) -> Iterator[LiveService]:
    running = start_live_service(tmp_path, service_env)
    yield running
    stop_live_service(running)


@dataclass(frozen=True)
class IssuedCard:
    uuid: str
    suggestion: str
    reasons: list[dict[str, Any]]


def warning_card(service: LiveService) -> IssuedCard:
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])
    response = service.session.post(service.url(SERVICE_PATH), json=request, timeout=60)
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["indicator"] == "warning"
    (suggestion,) = card["suggestions"]
    return IssuedCard(card["uuid"], suggestion["uuid"], card["overrideReasons"])


def reason(card: IssuedCard, code: str) -> dict[str, Any]:
    """One of the override reasons the card itself offered, sent back as the spec's Coding."""
    offered = next(r for r in card.reasons if r["code"] == code)
    return {"system": offered["system"], "code": offered["code"], "display": offered["display"]}


def accepted(card: IssuedCard, at: str) -> dict[str, Any]:
    return {
        "card": card.uuid,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card.suggestion}],
        "outcomeTimestamp": at,
    }


def overridden(card: IssuedCard, code: str, at: str, comment: str | None = None) -> dict[str, Any]:
    override: dict[str, Any] = {"reason": reason(card, code)}
    if comment is not None:
        override["userComment"] = comment
    return {"card": card.uuid, "outcome": "overridden", "overrideReason": override, "outcomeTimestamp": at}


def post_feedback(service: LiveService, *items: dict[str, Any]) -> str:
    response = service.session.post(service.url(FEEDBACK_PATH), json={"feedback": list(items)}, timeout=60)
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "information"
    diagnostics: str = outcome["issue"][0]["diagnostics"]
    return diagnostics


def feedback_report(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    env.update(env_extra)
    completed = subprocess.run(
        [sys.executable, "-m", "cds_hooks", "feedback-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def table_row(report: str, first_cell: str) -> list[str]:
    """The row starting with `first_cell` in the report's first two tables (cards by kind, override reasons);
    later sections break the same figures down and repeat first cells such as the kind."""
    lines = report.splitlines()
    reasons = next(i for i, line in enumerate(lines) if line.startswith("Override reasons ("))
    end = lines.index("", reasons) if "" in lines[reasons:] else len(lines)
    rows = [line.split() for line in lines[:end] if line.split()[:1] == [first_cell]]
    assert len(rows) == 1, f"no single row {first_cell!r} in:\n{report}"
    return rows[0]


def kinds_in(report: str) -> list[str]:
    """The first cells of the by-kind table (from its header line to the blank line after it)."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("kind ")) + 1
    end = lines.index("", start)
    return [line.split()[0] for line in lines[start:end]]


def database_dump(database_url: str) -> str:
    """Every value in every table, as text: what a reader of the database could see."""
    engine = create_engine(database_url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            rows = [repr(row) for table in metadata.sorted_tables for row in connection.execute(select(table))]
    finally:
        engine.dispose()
    return "\n".join(rows)


def database_files(database_url: str) -> list[Path]:
    """The SQLite file and its -wal/-shm companions (empty for PostgreSQL)."""
    if not database_url.startswith("sqlite:///"):
        return []
    path = Path(database_url.removeprefix("sqlite:///"))
    return sorted(path.parent.glob(path.name + "*"))


def test_feedback_survives_a_restart_and_is_reported(
    tmp_path: Path, database_url: str, service_env: dict[str, str]
) -> None:
    first = start_live_service(tmp_path, service_env)
    try:
        cards = [warning_card(first) for _ in range(5)]
        assert len({c.uuid for c in cards}) == 5
        assert post_feedback(first, accepted(cards[0], "2026-11-20T10:00:00Z")) == (
            "Feedback received: 1 item(s), 1 new"
        )
        comment_item = overridden(cards[1], "benign-cause-known", "2026-11-20T10:01:00Z", USER_COMMENT)
        assert post_feedback(first, comment_item).endswith("1 new")
        # One POST may carry several items; the same card may be answered twice (the latest counts).
        assert (
            post_feedback(
                first,
                accepted(cards[2], "2026-11-20T10:02:00Z"),
                overridden(cards[2], "benign-cause-known", "2026-11-20T11:03:00+01:00"),  # 10:03Z, after 10:02Z
            )
            == "Feedback received: 2 item(s), 2 new"
        )
        # The EHR delivers the same feedback again (a retry): nothing new is stored.
        assert post_feedback(first, comment_item) == "Feedback received: 1 item(s), 0 new"
    finally:
        stop_live_service(first)

    second = start_live_service(tmp_path, service_env)
    try:
        # A card issued before the restart is still known by its kind.
        assert post_feedback(second, overridden(cards[3], "patient-refuses", "2026-11-20T11:00:00Z")).endswith("1 new")
        assert post_feedback(second, comment_item).endswith("0 new")
        # The report reads the database the running service writes to.
        report = feedback_report(service_env)
    finally:
        stop_live_service(second)

    # warning: 5 issued; feedback rows 5 (cards 0, 1, 2 twice, 3); finally accepted: card 0; overridden: 1, 2, 3.
    assert kinds_in(report) == ["warning"]
    assert table_row(report, "warning") == ["warning", "5", "5", "1", "3", "20.0%", "60.0%"]
    assert table_row(report, f"{REASON_SYSTEM}|benign-cause-known") == [
        f"{REASON_SYSTEM}|benign-cause-known",
        "2",
        "66.7%",
    ]
    refuses = f"{HL7_REASON_SYSTEM}|patient-refuses"
    assert table_row(report, refuses) == [refuses, "1", "33.3%"]

    dump = database_dump(database_url)
    assert cards[1].uuid in dump  # the dump does show what is stored...
    for secret in (USER_COMMENT, FAKE_PATIENT, "Vandergriff", "77-4410-93", "St Elsewhere"):
        assert secret not in dump  # ...and the clinician's comment is not part of it
        for path in database_files(database_url):
            assert secret.encode() not in path.read_bytes(), path
        assert secret not in first.logs() + second.logs()
    files = database_files(database_url)
    if database_url.startswith("sqlite"):
        assert any(cards[1].uuid.encode() in path.read_bytes() for path in files)


def test_report_on_an_empty_database(tmp_path: Path) -> None:
    """A fresh database (migrated by the report itself) reports nothing rather than failing."""
    database = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    report = feedback_report({"MSCC_ALERT_DATABASE_URL": database})
    assert report.strip() == f"Feedback database: {database}\n\nNo cards issued and no feedback recorded."


def test_feedback_on_a_card_never_issued_is_refused_and_not_stored(
    service: LiveService, service_env: dict[str, str], database_url: str
) -> None:
    ours = warning_card(service)
    never = {"card": "9f1c0b2e-not-one-of-ours", "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00Z"}
    response = service.session.post(
        service.url(FEEDBACK_PATH), json={"feedback": [never, overridden(ours, "benign-cause-known",
                                                                          "2026-11-20T10:01:00Z")]}, timeout=60)
    assert response.status_code == 200, response.text
    summary, refusal = response.json()["issue"]
    assert summary["diagnostics"] == (
        "Feedback received: 2 item(s), 1 new, 1 refused (card not issued by this service to this client)")
    assert (refusal["severity"], refusal["expression"]) == ("warning", ["feedback[0].card"])
    report = feedback_report(service_env)
    assert kinds_in(report) == ["warning"]  # no "unknown" row: nothing was stored for the foreign card
    assert "9f1c0b2e" not in database_dump(database_url)


# --- invalid feedback -------------------------------------------------------------------------------------

GOOD_ITEM = {"card": "card-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00Z"}

INVALID: dict[str, tuple[Any, str]] = {
    "outcome not in the value set (cds-fb-1)": (
        {"feedback": [{**GOOD_ITEM, "outcome": "rejected"}]},
        "feedback[0].outcome",
    ),
    "accepted without acceptedSuggestions (cds-fb-2)": (
        {"feedback": [{**GOOD_ITEM, "outcome": "accepted"}]},
        "feedback[0].acceptedSuggestions",
    ),
    "empty overrideReason (cds-fb-3)": (
        {"feedback": [{**GOOD_ITEM, "overrideReason": {}}]},
        "feedback[0].overrideReason",
    ),
    "reason Coding without system": (
        {"feedback": [{**GOOD_ITEM, "overrideReason": {"reason": {"code": "x"}}}]},
        "feedback[0].overrideReason.reason.system",
    ),
    "timestamp not RFC 3339": (
        {"feedback": [{**GOOD_ITEM, "outcomeTimestamp": "yesterday"}]},
        "feedback[0].outcomeTimestamp",
    ),
    "timestamp without offset": (
        {"feedback": [{**GOOD_ITEM, "outcomeTimestamp": "2026-11-20T10:00:00"}]},
        "feedback[0].outcomeTimestamp",
    ),
    "card missing": (
        {"feedback": [{"outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00Z"}]},
        "feedback[0].card",
    ),
    "card not a string": ({"feedback": [{**GOOD_ITEM, "card": 17}]}, "feedback[0].card"),
    "misspelt member": (
        {"feedback": [{**GOOD_ITEM, "overideReason": {"userComment": "x"}}]},
        "feedback[0].overideReason",
    ),
    "second item bad": ({"feedback": [GOOD_ITEM, {**GOOD_ITEM, "outcome": 3}]}, "feedback[1].outcome"),
    "empty feedback list": ({"feedback": []}, "feedback"),
    "feedback not a list": ({"feedback": GOOD_ITEM}, "feedback"),
    "body is an array": ([GOOD_ITEM], "(body)"),
    "oversized card id": ({"feedback": [{**GOOD_ITEM, "card": "c" * 5000}]}, "feedback[0].card"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_feedback_is_a_400_naming_the_field(live_service: LiveService, case: str) -> None:
    body, expression = INVALID[case]
    response = live_service.session.post(live_service.url(FEEDBACK_PATH), json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("error", "invalid")
    assert issue["expression"] == [expression]
    field = expression.rsplit(".", 1)[-1].split("[")[0].strip("()")
    assert field in issue["diagnostics"]


def test_feedback_that_is_not_json_is_a_400(live_service: LiveService) -> None:
    response = live_service.session.post(
        live_service.url(FEEDBACK_PATH),
        data=b'{"feedback": [',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["(body)"]


def test_feedback_for_an_unknown_service_is_a_404(live_service: LiveService) -> None:
    response = live_service.session.post(
        live_service.url("/cds-services/no-such-service/feedback"), json={"feedback": [GOOD_ITEM]}, timeout=60
    )
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_feedback_must_be_sent_as_json(live_service: LiveService) -> None:
    response = live_service.session.post(
        live_service.url(FEEDBACK_PATH),
        data=json.dumps({"feedback": [GOOD_ITEM]}),
        headers={"Content-Type": "text/plain"},
        timeout=60,
    )
    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"
