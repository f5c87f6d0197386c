"""The feedback store's side of suppression: revision 0003 on a database that already holds cards, and the
lookup of earlier actions by patient pseudonym (SQLite and PostgreSQL give the same answers as memory)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from cds_hooks.feedback.acknowledgements import SuppressedCard
from cds_hooks.feedback.models import FeedbackStore, IssuedCard, MemoryFeedbackStore, parse_feedback
from cds_hooks.feedback.store import SqlFeedbackStore

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

pytest_plugins = ["tests.postgres"]

SERVICE = "breast-cancer-back-pain"
MIGRATIONS = Path(__file__).resolve().parents[1] / "cds_hooks" / "feedback" / "migrations"


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeedbackStore]:
    opened: FeedbackStore
    if request.param == "memory":
        opened = MemoryFeedbackStore()
    elif request.param == "sqlite":
        opened = SqlFeedbackStore(f"sqlite:///{tmp_path / 'f.sqlite3'}")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        opened = SqlFeedbackStore(server.create_database())
    yield opened
    opened.close()


def feedback_on(card: str, outcome: str, at: datetime) -> bytes:
    item: dict[str, object] = {"card": card, "outcome": outcome, "outcomeTimestamp": at.isoformat()}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": "s"}]
    return json.dumps({"feedback": [item]}).encode()


def test_prior_actions_by_patient(store: FeedbackStore) -> None:
    evidence = datetime(2026, 11, 20, tzinfo=UTC)
    cards = [IssuedCard("w1", "warning", kind="spinal-metastases", evidence_at=evidence, patient_key="p1"),
             IssuedCard("c1", "critical", kind="mscc", evidence_at=evidence, patient_key="p1"),
             IssuedCard("x1", "warning", kind="spinal-metastases", evidence_at=evidence, patient_key="p2"),
             IssuedCard("old", "warning")]  # issued before pseudonyms (no kind, no patient): never matched
    store.record_issued(SERVICE, cards, None, None)
    flush = getattr(store, "flush", None)
    if flush:
        flush()
    now = datetime.now(UTC)
    for card, outcome, at in [("w1", "accepted", now - timedelta(minutes=2)),
                              ("w1", "overridden", now - timedelta(minutes=1)),
                              ("x1", "overridden", now), ("old", "overridden", now)]:
        store.record_feedback(SERVICE, parse_feedback(feedback_on(card, outcome, at)), None, None)
    acks = store.acknowledgements()
    (action,) = acks.prior_actions(SERVICE, "p1", now - timedelta(days=14), 100)
    # w1's latest action counts; c1 has none.
    assert (action.kind, action.indicator, action.outcome, action.evidence_at) == (
        "spinal-metastases", "warning", "overridden", evidence)
    assert acks.prior_actions(SERVICE, "p1", now + timedelta(seconds=5), 100) == []  # received before `since`
    assert acks.prior_actions("other-service", "p1", now - timedelta(days=14), 100) == []
    assert [a.kind for a in acks.prior_actions(SERVICE, "p2", now - timedelta(days=14), 100)] == ["spinal-metastases"]
    acks.record_suppressed(SERVICE, [SuppressedCard("mscc", "critical", "v1")], None, None)


def test_revision_0003_upgrades_a_database_that_holds_cards(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(text("INSERT INTO issued_cards (service_id, card_uuid, indicator, issued_at) "
                                "VALUES ('breast-cancer-back-pain', 'before', 'warning', '2026-11-01 10:00:00')"))
    engine.dispose()
    store = SqlFeedbackStore(url)
    try:
        report = store.report()
        assert [(row.kind, row.issued) for row in report.by_kind] == [("warning", 1)]
        assert store.acknowledgements().prior_actions(SERVICE, "anyone", datetime(2000, 1, 1, tzinfo=UTC), 10) == []
    finally:
        store.close()


def test_pseudonyms_are_keyed_per_issuer_and_role() -> None:
    import hashlib
    import hmac

    from cds_hooks.security.pseudonym import Pseudonyms

    key = "k" * 32
    one = Pseudonyms(key)
    assert one.patient("https://ehr-a", "123") == Pseudonyms(key).patient("https://ehr-a", "123")  # stable
    assert one.patient("https://ehr-a", "123") != one.patient("https://ehr-b", "123")  # another EHR's patient
    assert one.patient(None, "123") != one.user(None, "123")  # a patient and a clinician never share one
    assert one.patient("https://ehr-a", "123") != Pseudonyms("j" * 32).patient("https://ehr-a", "123")
    assert one.user("https://ehr-a", None) is None
    message = "\x00".join(("patient", "https://ehr-a", "123")).encode()
    expected = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    assert one.patient("https://ehr-a", "123") == expected


def test_a_short_secret_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from cds_hooks.cli import main
    from cds_hooks.settings import Settings

    monkeypatch.setenv("MSCC_ALERT_PSEUDONYM_SECRET", "tooshort-Zq9")
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--port", "1"])
    assert stopped.value.code == 2


def test_a_store_that_cannot_be_read_never_hides_a_card(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from cds_hooks.protocol.app import create_app
    from cds_hooks.settings import Settings
    from tests.scenarios import fhir_builders as fb

    url = f"sqlite:///{tmp_path / 'broken.sqlite3'}"
    app = create_app(Settings(database_url=url, pseudonym_secret="s" * 32))
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])
    with TestClient(app) as client:
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE feedback"))  # a real fault: the lookup's query fails
        engine.dispose()
        response = client.post(f"/cds-services/{SERVICE}", json=request)
    assert response.status_code == 200
    assert [c["indicator"] for c in response.json()["cards"]] == ["warning"]
    assert "suppression lookup failed: card shown" in caplog.text
