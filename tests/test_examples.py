"""README "Try it": `python -m examples.generate` works after the serve install alone, the requests it writes fire
their cards on the day it runs, it never dirties the work tree, and the example FHIR server serves the
fhirServer example and stops quietly on Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_hooks.services.registry import SERVICES
from tests.conftest import SERVICE_ID, free_port
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response

pytestmark = pytest.mark.e2e  # starts servers or subprocesses

ROOT = Path(__file__).resolve().parents[1]
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
SERVICE_BY_HOOK = {cls.hook: cls.id for cls in SERVICES}
# What the serve install lacks: the test extras. Importing any of them from the generator would fail for a newcomer.
TEST_ONLY = ("tests", "pytest", "_pytest", "httpx", "hypothesis", "pytest_httpserver", "schemathesis", "werkzeug")
GUARDED_RUN = f"""
import builtins, runpy, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in {TEST_ONLY!r}:
        raise ImportError("the generator imported " + name + ", which only the test extras install")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
sys.argv = ["examples.generate", *sys.argv[1:]]
runpy.run_module("examples.generate", run_name="__main__")
"""


def generate(out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    return subprocess.run([sys.executable, "-c", GUARDED_RUN, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("examples")
    result = generate(out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def test_generate_imports_nothing_the_serve_install_lacks(generated: tuple[Path, str]) -> None:
    out, stdout = generated
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.json" for name in ("patient-view-warning", "patient-view-critical", "patient-view-null-keys",
                                    "patient-view-fhir-server", "fhir-server-bundle", "patient-view-synthea",
                                    "order-select-lumbar-xray", "order-select-lumbar-mri",
                                    "order-sign-whole-spine-mri-stat"))
    assert "Traceback" not in stdout


@pytest.mark.parametrize(("name", "expected"), [
    ("patient-view-warning", ["warning"]),
    ("patient-view-critical", ["critical"]),
    ("patient-view-null-keys", []),
    ("patient-view-synthea", ["warning"]),
    ("order-select-lumbar-xray", ["warning"]),
    ("order-select-lumbar-mri", ["critical"]),
    ("order-sign-whole-spine-mri-stat", []),
])
def test_each_example_fires_its_card_today(
    generated: tuple[Path, str], service_client: Any, name: str, expected: list[str]
) -> None:
    out, stdout = generated
    body = load(out / f"{name}.json")
    response = service_client.post(f"/cds-services/{SERVICE_BY_HOOK[body['hook']]}", json=body)
    assert response.status_code == 200, response.text[:500]
    assert_valid_cds_response(response.json(), patient_id=body["context"]["patientId"])
    assert [card["indicator"] for card in response.json()["cards"]] == expected
    drafts = {e["resource"]["id"] for e in body["context"].get("draftOrders", {}).get("entry", [])}
    for card in response.json()["cards"] if drafts else ():
        for action in card["suggestions"][0]["actions"]:
            assert action["resource"]["id"] in drafts, "an order card's suggestion acts on the draft's own id"
    said = f"a {expected[0]} card" if expected else "no card"
    assert f"{name}.json: {said}\n" in stdout, "the generator's summary matches what the service answers"


def test_synthea_example_is_the_real_patient_plus_two_conditions(generated: tuple[Path, str]) -> None:
    out, _ = generated
    body = load(out / "patient-view-synthea.json")
    source = load(ROOT / "tests/data/synthea/sample-bulk-10-patients/6a4160eb-a793-2f86-2302-378626f46cce.json")
    in_source = {e["resource"]["id"] for e in source["entry"] if e["resource"]["resourceType"] == "Condition"}
    conditions = [e["resource"] for e in body["prefetch"]["conditions"]["entry"]]
    added = [c for c in conditions if c["id"] not in in_source]
    assert len(conditions) == len(in_source) + 2
    assert {c["code"]["coding"][0]["code"] for c in added} == {"254837009", "279039007"}
    assert body["prefetch"]["patient"]["id"] == "6a4160eb-a793-2f86-2302-378626f46cce"


def test_default_output_folder_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "examples/generated/patient-view-warning.json"],
                             cwd=ROOT, check=False)
    assert ignored.returncode == 0, "examples/generated/ must be git-ignored so regenerating never dirties the tree"


def test_fhir_server_example_serves_the_fhir_server_request_and_stops_quietly(
    generated: tuple[Path, str], service_client: Any
) -> None:
    out, _ = generated
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "examples.fhir_server", str(out / "fhir-server-bundle.json"), "--port", str(port),
         "--token", "example-token"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{base}/Patient/x", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.1)
        body = load(out / "patient-view-fhir-server.json")
        body["fhirServer"] = base  # the generated file names the default port 8090
        response = service_client.post(SERVICE_PATH, json=body)
        assert response.status_code == 200, response.text[:500]
        assert [card["indicator"] for card in response.json()["cards"]] == ["critical"]
        server.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert f"serving 6 resources at {base}" in output
