"""Nothing the service acknowledged is lost when it is killed: `mscc-alert serve` takes hook calls (which issue
cards) and feedback from several clients at once, is killed with SIGKILL in the middle of them, and after a
restart every card of every 200 answer and every feedback item of every 200 answer is in the database; on an
SQLite file and on a real PostgreSQL server (tests/postgres.py).

The issued-card records used to be written from a queue after the response: 13 of 6,650 acknowledged cards
were missing after kill -9.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.conftest import SERVICE_ID, LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb

if TYPE_CHECKING:
    pass

pytest_plugins = ["tests.postgres"]
pytestmark = pytest.mark.e2e

CLIENTS = 4
MAX_CALLS_PER_CLIENT = 400  # bounds the run; the kill comes first
KILL_AFTER_SECONDS = 4.0



class Acknowledged:
    """What the service answered 200 to: card uuids, and feedback items as (card, outcomeTimestamp)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cards: set[str] = set()
        self.feedback: set[tuple[str, str]] = set()
        self.refused_connections = 0


def client(service: LiveService, number: int, stop: threading.Event, acked: Acknowledged) -> None:
    session = requests.Session()
    hook_url = service.url(f"/cds-services/{SERVICE_ID}")
    own_cards: list[str] = []
    try:
        for call in range(MAX_CALLS_PER_CLIENT):
            if stop.is_set():
                return
            try:
                if call % 3 == 2 and own_cards:  # every third call: feedback on cards this client received
                    stamp = f"2026-11-20T10:{number:02d}:{call % 60:02d}.{call:06d}Z"
                    items = [{"card": c, "outcome": "overridden", "outcomeTimestamp": stamp} for c in own_cards[-3:]]
                    response = session.post(hook_url + "/feedback", json={"feedback": items}, timeout=30)
                    if response.status_code == 200:
                        assert "refused" not in response.json()["issue"][0]["diagnostics"], response.text
                        with acked.lock:
                            acked.feedback.update((item["card"], stamp) for item in items)
                    continue
                request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])
                response = session.post(hook_url, json=request, timeout=30)
                if response.status_code == 200:
                    uuids = [card["uuid"] for card in response.json()["cards"]]
                    assert uuids, "the scenario issues a warning card"
                    own_cards.extend(uuids)
                    with acked.lock:
                        acked.cards.update(uuids)
            except requests.RequestException:  # the kill: an answer that never came was never acknowledged
                with acked.lock:
                    acked.refused_connections += 1
                return
    finally:
        session.close()


def instant(value: str | datetime) -> datetime:
    """An outcomeTimestamp as sent (RFC 3339) or as stored (text on SQLite, timestamptz on PostgreSQL)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def stored(database_url: str) -> tuple[set[str], set[tuple[str, datetime]]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            cards = set(connection.execute(text("SELECT card_uuid FROM issued_cards")).scalars())
            rows = connection.execute(text("SELECT card_uuid, outcome_timestamp FROM feedback")).all()
    finally:
        engine.dispose()
    return cards, {(card, instant(stamp)) for card, stamp in rows}


def test_nothing_acknowledged_is_lost_on_kill_9(tmp_path: Path, database_url: str) -> None:
    env = {"MSCC_ALERT_DATABASE_URL": database_url}
    service = start_live_service(tmp_path, env)
    acked = Acknowledged()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(service, n, stop, acked)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(KILL_AFTER_SECONDS)
    service.process.kill()  # SIGKILL, mid-traffic
    service.process.wait(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(acked.cards) >= 20 and acked.feedback, "too little traffic before the kill to prove anything"

    restarted = start_live_service(tmp_path, env)  # the database opens (and recovers) after the kill
    try:
        assert restarted.session.get(restarted.url("/healthz"), timeout=10).status_code == 200
    finally:
        stop_live_service(restarted)
    cards, feedback = stored(database_url)
    lost_cards = acked.cards - cards
    lost_feedback = {(card, instant(stamp)) for card, stamp in acked.feedback} - feedback
    assert not lost_cards, f"{len(lost_cards)} of {len(acked.cards)} acknowledged cards lost"
    assert not lost_feedback, f"{len(lost_feedback)} of {len(acked.feedback)} acknowledged feedback items lost"
