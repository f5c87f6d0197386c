"""What an operator and a newcomer reach besides the hooks: /docs with no internet access, /openapi.json,
/healthz, /readyz, and /metrics that count every worker's requests."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

pytest_plugins = ["tests.postgres"]

ROOT = Path(__file__).resolve().parents[1]


def test_docs_page_loads_its_scripts_from_this_server_only(service_client: Any) -> None:
    page = service_client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by this server (a CDN needs internet access)"
        fetched = service_client.get(asset)
        assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
    assert "url: '/openapi.json'" in page.text


def test_redoc_page_is_offline_too(service_client: Any) -> None:
    page = service_client.get("/redoc")
    assert page.status_code == 200
    scripts = re.findall(r'src="([^"]+)"', page.text)
    assert scripts and all(s.startswith("/") for s in scripts), scripts
    assert "fonts.googleapis" not in page.text


def test_openapi_documents_the_operational_endpoints(service_client: Any) -> None:
    document = service_client.get("/openapi.json").json()
    for path in ("/cds-services", "/cds-services/{service_id}", "/healthz", "/readyz", "/metrics"):
        operation = next(iter(document["paths"][path].values()))
        assert operation.get("summary"), path
    assert set(document["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert "/readyz" in document["info"]["description"]


def test_readyz_is_ready_with_a_reachable_database(service_client: Any) -> None:
    response = service_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.e2e
@pytest.mark.postgres
def test_readyz_is_503_when_the_database_is_gone(postgres_server: PostgresServer) -> None:
    """The feedback database disappears while the service runs (dropped, its connections closed): not ready,
    and the answer says which check failed; the liveness check still answers."""
    import psycopg
    from fastapi.testclient import TestClient

    from cds_hooks.protocol.app import create_app
    from cds_hooks.settings import Settings

    url = postgres_server.create_database()
    with TestClient(create_app(Settings(database_url=url, ready_timeout_seconds=10))) as client:
        assert client.get("/readyz").status_code == 200
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.url(driver="postgresql"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # name is ours: [a-z0-9_] only
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert response.status_code == 503
    issue = response.json()["issue"][0]
    assert issue["code"] == "transient" and "feedback database unreachable" in issue["diagnostics"]
    assert postgres_server.password not in response.text


@pytest.mark.e2e
def test_metrics_count_every_workers_requests(tmp_path: Path) -> None:
    """With --workers 2 the requests land on both workers; /metrics, from whichever worker answers, counts all."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSCC_ALERT_", "PROMETHEUS_"))}
    env.update(MSCC_ALERT_DATABASE_URL=f"sqlite:///{tmp_path / 'feedback.sqlite3'}", MSCC_ALERT_LOG_LEVEL="INFO")
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "cds_hooks", "serve", "--port", str(port), "--workers", "2"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        log.flush()
        found = re.search(r"metrics_dir=(\S+)", Path(log.name).read_text())
        assert found, Path(log.name).read_text()
        metrics_dir = Path(found.group(1))

        # Rounds of 4 connections opened together, one request each, until both workers have answered (each
        # worker writes its own counter file): an idle server tends to hand every new connection to one worker.
        # The second worker may still be starting on a loaded machine: rounds every 0.5 s, for at most 60 s.
        sent = 0
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(4)]
            for connection in connections:
                connection.connect()
            for connection in connections:
                connection.request("GET", "/cds-services")
            for connection in connections:
                assert connection.getresponse().status == 200
                connection.close()
            sent += len(connections)
            if len(list(metrics_dir.glob("counter_*.db"))) >= 2:
                break
            time.sleep(0.5)
        assert len(list(metrics_dir.glob("counter_*.db"))) >= 2, "the requests never reached the second worker"

        def scrape() -> float:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"}, timeout=10).text
            return sum(
                sample.value
                for family in text_string_to_metric_families(text) if family.name == "mscc_alert_requests"
                for sample in family.samples
                if sample.name == "mscc_alert_requests_total" and sample.labels["route"] == "/cds-services"
            )

        # A request is counted just after its answer is sent: let the last ones land (at most 10 s).
        settle = time.monotonic() + 10
        while scrape() != sent and time.monotonic() < settle:
            time.sleep(0.2)
        # Each scrape may reach either worker: every one must count all the requests.
        assert [scrape() for _ in range(4)] == [sent] * 4
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert not metrics_dir.exists(), "the service removes its metrics folder when it stops"
