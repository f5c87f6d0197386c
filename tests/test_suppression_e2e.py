"""Shown once, unless it gets worse, through a real `mscc-alert serve`: feedback on a card silences the same
card for the same patient; a neurological feature brings the critical card at once; new evidence brings a new
card; an accepted order silences the card for the order's time frame only. Across two workers and a restart, on
an SQLite file and on a real PostgreSQL server (tests/postgres.py). The database never holds the patient id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.conftest import SERVICE_ID, LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb
from tests.test_feedback_e2e import database_dump, database_files

if TYPE_CHECKING:
    pass

pytest_plugins = ["tests.postgres"]
pytestmark = pytest.mark.e2e

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
SECRET = "test-only pseudonym key, 32+ characters long"
# Distinctive, so a grep of the database for it cannot match anything else.
PATIENT = "pt-quokka-7731"
CLINICIAN = "Practitioner/dr-numbat-5529"



@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"MSCC_ALERT_DATABASE_URL": database_url, "MSCC_ALERT_LOG_FORMAT": "json",
            "MSCC_ALERT_PSEUDONYM_SECRET": SECRET}


@pytest.fixture
def service(tmp_path: Path, env: dict[str, str]) -> Iterator[LiveService]:
    running = start_live_service(tmp_path, env)
    yield running
    stop_live_service(running)


def chart(*extra: dict[str, Any]) -> dict[str, Any]:
    """Breast cancer three years ago and low back pain since 10 days: a warning card; plus `extra` Conditions."""
    request = fb.hook_request(fb.patient(patient_id=PATIENT),
                              conditions=[fb.breast_cancer(patient_id=PATIENT), fb.back_pain(patient_id=PATIENT),
                                          *extra])
    request["context"]["userId"] = CLINICIAN
    return request


def call(service: LiveService, request: dict[str, Any]) -> list[dict[str, Any]]:
    # A fresh connection each time: with two workers, the kernel hands connections to either.
    response = requests.post(service.url(SERVICE_PATH), json={**request, "hookInstance": str(uuid.uuid4())},
                             timeout=60)
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


def stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def feedback(service: LiveService, card: dict[str, Any], outcome: str) -> None:
    item: dict[str, Any] = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": stamp()}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    else:
        (reason,) = [r for r in card["overrideReasons"] if r["code"] == "need-more-info"]
        item["overrideReason"] = {"reason": reason}
    response = requests.post(service.url(SERVICE_PATH + "/feedback"), json={"feedback": [item]}, timeout=60)
    assert response.status_code == 200, response.text


def hook_log_lines(service: LiveService) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("route") == "/cds-services/{service_id}"]


def assert_no_patient_id_stored(database_url: str) -> None:
    dump = database_dump(database_url)
    assert "breast-cancer-back-pain" in dump  # the dump does show what is stored...
    for secret in (PATIENT, CLINICIAN, "dr-numbat"):
        assert secret not in dump  # ...and neither the patient nor the clinician is in it
        for path in database_files(database_url):
            assert secret.encode() not in path.read_bytes(), path


def test_override_silences_the_card_until_it_gets_worse(service: LiveService, database_url: str) -> None:
    (warning,) = call(service, chart())
    assert warning["indicator"] == "warning"
    feedback(service, warning, "overridden")
    assert call(service, chart()) == []  # the same card, for the same patient: not shown again
    assert call(service, chart()) == []

    # Another patient's identical chart is not affected.
    other = chart()
    other["context"]["patientId"] = "someone-else"
    for key in ("patient", "conditions"):
        other["prefetch"][key] = json.loads(json.dumps(other["prefetch"][key]).replace(PATIENT, "someone-else"))
    assert [c["indicator"] for c in call(service, other)] == ["warning"]

    # A neurological feature: the critical card, at once, whatever was done with the warning.
    walking = fb.finding(fb.DIFFICULTY_WALKING, onset_days_ago=0, patient_id=PATIENT)
    (critical,) = call(service, chart(walking))
    assert critical["indicator"] == "critical"
    feedback(service, critical, "overridden")
    assert call(service, chart(walking)) == []

    # New evidence dated after the feedback (another spinal region, recorded now): a new card. FHIR dateTimes
    # here carry whole seconds and this test runs fast, so the new finding is made at least a second after the
    # neurological finding the critical card rested on (else both would bear the same second).
    time.sleep(1.1)
    thoracic = fb.back_pain(*fb.THORACIC_PAIN, onset_days_ago=0, patient_id=PATIENT)
    assert [c["indicator"] for c in call(service, chart(walking, thoracic))] == ["critical"]

    metrics = requests.get(service.url("/metrics"), timeout=30).text
    assert 'mscc_alert_cards_suppressed_total{indicator="warning"} 2.0' in metrics
    assert 'mscc_alert_cards_suppressed_total{indicator="critical"} 1.0' in metrics
    lines = hook_log_lines(service)
    assert [(line["cards"], line.get("suppressed")) for line in lines] == [
        (1, None), (0, 1), (0, 1), (1, None), (1, None), (0, 1), (1, None)]
    assert PATIENT not in service.logs()
    assert_no_patient_id_stored(database_url)


def test_acceptance_silences_for_the_order_time_frame_across_workers_and_restarts(
    tmp_path: Path, env: dict[str, str], database_url: str
) -> None:
    first = start_live_service(tmp_path, env, workers=2)
    try:
        (warning,) = call(first, chart())
        feedback(first, warning, "accepted")
        assert [call(first, chart()) for _ in range(6)] == [[]] * 6  # whichever worker answers
    finally:
        stop_live_service(first)
    # Read once stopped: a worker writes its line just after the response.
    assert sum(line.get("suppressed", 0) for line in hook_log_lines(first)) == 6

    second = start_live_service(tmp_path, env)  # a restart: the acceptance is remembered
    try:
        assert call(second, chart()) == []
    finally:
        stop_live_service(second)

    # The urgent MRI's time frame (7 days by default) is what ends it: with a time frame already over, the card
    # comes back (the order may not have been done).
    third = start_live_service(tmp_path, {**env, "MSCC_ALERT_SUPPRESS_ACCEPTED_WARNING_DAYS": "0.00001"})
    try:
        assert [c["indicator"] for c in call(third, chart())] == ["warning"]
    finally:
        stop_live_service(third)
    assert_no_patient_id_stored(database_url)

    # The committee report reads it back: 2 warning cards shown (the first and the one after the time frame),
    # the first accepted; 7 suppressed (six on two workers, one after the restart); one patient, one clinician.
    html = tmp_path / "report.html"
    report = feedback_report(env, "--html", str(html))
    (shown,) = [line.split() for line in report.splitlines() if line.split()[:2] == ["warning", "2"]]
    assert shown == ["warning", "2", "1", "1", "0", "50.0%", "0.0%"]
    (hidden,) = [line.split() for line in report.splitlines() if line.split()[:1] == ["warning"] and len(
        line.split()) == 2]
    assert hidden == ["warning", "7"]
    (repeat,) = [line.split() for line in report.splitlines() if line.startswith("warning") and "50.0%" in line
                 and len(line.split()) == 7 and line.split()[1] == "1"]
    assert repeat == ["warning", "1", "2", "2.00", "1", "50.0%", "0"]
    page = html.read_text()
    assert "suppressed 7" in page and PATIENT not in page


def test_without_a_secret_suppression_is_off_and_serve_says_so(tmp_path: Path) -> None:
    service = start_live_service(tmp_path, {"MSCC_ALERT_LOG_FORMAT": "json"})
    try:
        (warning,) = call(service, chart())
        feedback(service, warning, "overridden")
        assert [c["indicator"] for c in call(service, chart())] == ["warning"]
    finally:
        stop_live_service(service)
    records = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    assert [r["message"].split(":")[0] for r in records if r.get("suppression") == "off"] == ["SUPPRESSION IS OFF"]


def feedback_report(env_extra: dict[str, str], *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    env.update(env_extra)
    completed = subprocess.run([sys.executable, "-m", "cds_hooks", "feedback-report", *args], env=env,
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout
