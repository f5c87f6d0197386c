"""`mscc-alert serve --workers 2`: starts on a fresh database, answers, and each worker logs its requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import SERVICE_ID, free_port
from tests.scenarios import fhir_builders as fb

pytestmark = pytest.mark.e2e  # starts servers or subprocesses


def test_two_workers_on_a_fresh_database(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    env["MSCC_ALERT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    env["MSCC_ALERT_LOG_FORMAT"] = "json"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_hooks", "serve", "--port", str(port), "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED), fb.back_pain()])
        with requests.Session() as session:  # keep-alive, as EHRs call
            answers = [session.post(f"{base}/cds-services/{SERVICE_ID}", json=body, timeout=30) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        assert all(a.json()["cards"][0]["indicator"] == "warning" for a in answers)
    finally:
        process.terminate()
        process.wait(timeout=15)
    text = log_path.read_text()
    assert "already exists" not in text and "Traceback" not in text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    hook_lines = [r for r in records if r.get("route") == "/cds-services/{service_id}"]
    assert len(hook_lines) == 6, text  # every worker's requests are logged
    assert all(r["cards"] == 1 and r["status"] == 200 for r in hook_lines)
    # Each worker process tunes its own allocator (cds_hooks/server/allocator.py): settings do not cross a spawn.
    assert sum("freed memory is kept for reuse" in r.get("message", "") for r in records) == 2, text
