"""Shared fixtures.

`service_client` is the service in-process (Starlette TestClient over the real ASGI app, with the same
settings `mscc-alert serve` uses by default, but an in-memory feedback store). `live_service` is the real
thing: `mscc-alert serve` started as a subprocess on a free loopback port, for tests where HTTP itself matters.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

SERVICE_ID = "breast-cancer-back-pain"
# Outside data the tests read (Synthea patients, CDS Hooks examples, captured client requests), copied into the
# repository unchanged; provenance in tests/data/README.md.
TEST_DATA = Path(__file__).resolve().parent / "data"


# Sweeps keep their compiled mention test in a cache folder (cds_hooks/sweep/pattern_cache.py): the suite's own
# for the session (subprocesses inherit it), never the home folder of whoever runs the tests.
_SWEEP_CACHE = tempfile.TemporaryDirectory(prefix="mscc-alert-test-sweep-cache-")
os.environ.setdefault("MSCC_ALERT_SWEEP_CACHE_DIR", _SWEEP_CACHE.name)


# Tests that need these fixtures start a server or a subprocess: marked `e2e`, whatever file they are in, so that
# `pytest -m "not e2e"` (the fast inner loop, README "Development") leaves them out. CI runs everything.
E2E_FIXTURES = frozenset({"live_service", "small_limit_service", "postgres_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        live_param = getattr(item, "callspec", None) is not None and "live" in item.callspec.params.values()
        if fixtures & E2E_FIXTURES or live_param or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.e2e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def service_client() -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from cds_hooks.protocol.app import create_app
    from cds_hooks.settings import Settings

    app = create_app(Settings(database_url="memory://"))
    with TestClient(app) as client:
        yield client


class LiveService:
    def __init__(self, base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.base_url = base_url
        self.process = process
        self.log_path = log_path
        self.session = requests.Session()

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_live_service(tmp_dir: Path, env_extra: dict[str, str] | None = None, workers: int = 1) -> LiveService:
    port = free_port()
    log_path = tmp_dir / f"service-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    env.update({"MSCC_ALERT_DATABASE_URL": f"sqlite:///{tmp_dir / f'feedback-{port}.sqlite3'}"})
    env.update(env_extra or {})
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_hooks", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited early:\n{log_path.read_text()}")
        try:
            if requests.get(base_url + "/healthz", timeout=1).status_code == 200:
                return LiveService(base_url, process, log_path)
        except requests.RequestException:  # not listening yet, or still starting up on a loaded machine
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"service did not start:\n{log_path.read_text()}")


def stop_live_service(service: LiveService) -> None:
    service.session.close()
    service.process.terminate()
    try:
        service.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        service.process.kill()


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    service = start_live_service(tmp_path_factory.mktemp("live"))
    yield service
    stop_live_service(service)
