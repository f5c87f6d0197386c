"""`mscc-alert evaluate FILE [--json] [--now]` and `mscc-alert serve`'s start-up checks, run as the user runs
them: `python -m cds_hooks ...` in a subprocess with a clean MSCC_ALERT_* environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from tests.conftest import TEST_DATA, free_port
from tests.scenarios.fhir_builders import (
    CORD_COMPRESSION,
    JSON,
    back_pain,
    breast_cancer,
    finding,
    hook_request,
    now,
    patient,
)
from tests.scenarios.test_clinical_scenarios import assert_valid_cds_response

pytestmark = pytest.mark.e2e  # starts servers or subprocesses

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = TEST_DATA / "synthea/sample-bulk-10-patients"
DECEASED_BREAST_CANCER = SYNTHEA / "129c6ac7-8d06-89de-ad63-0204a93e76c3.json"
BACK_PAIN_NO_CANCER = SYNTHEA / "ca15b832-01e4-41dd-6a52-97bd3e5510cb.json"


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    env["MSCC_ALERT_DATABASE_URL"] = "memory://"
    env.update(extra or {})
    return env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds_hooks", *args],
        capture_output=True,
        text=True,
        env=environment(env),
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def write(tmp_path: Path, body: JSON | str, name: str = "request.json") -> str:
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


def wait_until_healthy(process: subprocess.Popen[str], port: int) -> None:
    """Until /healthz answers 200 (at most 60 s: a loaded machine starts slowly), or the process exits."""
    deadline = time.monotonic() + 60
    status = None
    while status != 200 and time.monotonic() < deadline and process.poll() is None:
        try:
            status = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
        except requests.RequestException:
            time.sleep(0.1)
    assert status == 200, f"exit code {process.poll()}"


def warning_request() -> JSON:
    return hook_request(patient(), conditions=[breast_cancer(), back_pain()])


# --- evaluate ---------------------------------------------------------------------------------------------------
def test_evaluate_prints_a_readable_card(tmp_path: Path) -> None:
    result = cli("evaluate", write(tmp_path, warning_request()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[WARNING] ")
    assert "MRI" in result.stdout and "Suggestion:" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_evaluate_prints_a_critical_card(tmp_path: Path) -> None:
    body = hook_request(patient(), conditions=[breast_cancer(), back_pain(), finding(CORD_COMPRESSION)])
    result = cli("evaluate", write(tmp_path, body))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[CRITICAL] ")


def test_evaluate_json_prints_a_cds_hooks_response(tmp_path: Path) -> None:
    body = warning_request()
    result = cli("evaluate", "--json", write(tmp_path, body))
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert_valid_cds_response(response, patient_id=body["context"]["patientId"])
    assert [card["indicator"] for card in response["cards"]] == ["warning"]


def test_evaluate_now_moves_the_clock(tmp_path: Path) -> None:
    """A year later the same back pain is no longer new: no card."""
    later = (now() + timedelta(days=365)).isoformat()
    result = cli("evaluate", "--now", later, write(tmp_path, warning_request()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No card")


# The deceased patient's breast cancer is coded, with no spinal pain: the first missing piece is the reason
# (the record is never validated, since no card could follow); back pain without a history is the other.
@pytest.mark.parametrize(("bundle", "reason"), [(DECEASED_BREAST_CANCER, "no new spinal pain"),
                                                (BACK_PAIN_NO_CANCER, "no personal history of breast cancer")])
def test_evaluate_synthea_bundle_prints_no_card(bundle: Path, reason: str) -> None:
    result = cli("evaluate", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No card")
    assert reason in result.stdout


def test_evaluate_request_without_data_says_412(tmp_path: Path) -> None:
    body = warning_request()
    del body["prefetch"]
    result = cli("evaluate", write(tmp_path, body))
    assert result.returncode != 0
    assert "412" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("this is not JSON {", "not JSON"),
        ("[1, 2, 3]", "neither"),
        ('"patient-view"', "neither"),
        ('{"hook": "patient-view"}', "400"),
        ('{"hook": "medication-prescribe", "hookInstance": "x", "context": {}}', "no service here answers"),
    ],
)
def test_evaluate_garbage_fails_with_a_message(tmp_path: Path, content: str, said: str) -> None:
    path = write(tmp_path, content, "garbage.json")
    result = cli("evaluate", path)
    assert result.returncode != 0
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_evaluate_missing_file_fails_with_a_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-request.json"
    result = cli("evaluate", str(missing))
    assert result.returncode != 0
    assert "no-such-request.json" in result.stderr
    assert "Traceback" not in result.stderr


# --- serve: start-up checks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "7", ""])
@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("evaluate", str(DECEASED_BREAST_CANCER))])
def test_invalid_setting_exits_2_naming_the_variable(command: tuple[str, ...], value: str) -> None:
    result = cli(*command, env={"MSCC_ALERT_NEW_PAIN_WINDOW_DAYS": value})
    assert result.returncode == 2
    assert "MSCC_ALERT_NEW_PAIN_WINDOW_DAYS" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_beyond_loopback_without_issuers_refuses_to_start() -> None:
    result = cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "MSCC_ALERT_TRUSTED_ISSUERS" in result.stderr and "MSCC_ALERT_AUTH=off" in result.stderr


def test_serve_beyond_loopback_with_auth_off_starts() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_hooks", "serve", "--host", "0.0.0.0", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=environment({"MSCC_ALERT_AUTH": "off"}),
    )
    try:
        wait_until_healthy(process, port)
        discovery = requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=5)
        assert discovery.status_code == 200  # open: no JWT needed
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "AUTHENTICATION IS OFF" in output


# --- the CLI explains itself, and ordinary use never shows a traceback ----------------------------------------------
def test_version_is_the_installed_version() -> None:
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mscc-alert {version('mscc-alert')}"


def test_every_option_of_every_command_says_what_it_does_and_its_default() -> None:
    import argparse

    from cds_hooks.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"serve", "evaluate", "sweep", "feedback-report"}
    for name, command in commands.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help and len(action.help) > 10, (name, action.dest)
            assert "default" in action.help, f"{name} {action.option_strings[0]} does not show its default"
            if action.default not in (None, False):
                assert "%(default)s" in action.help or str(action.default) in action.help, (name, action.dest)


def test_database_url_is_shown_without_its_password() -> None:
    from cds_hooks.cli import shown_database
    from cds_hooks.settings import Settings

    shown = shown_database(Settings(database_url="postgresql+psycopg://alert:s3cret-pw@db.example.org:5432/fb"))
    assert "s3cret-pw" not in shown
    assert shown == "postgresql+psycopg://alert:***@db.example.org:5432/fb"


def test_evaluate_now_takes_a_date_alone(tmp_path: Path) -> None:
    """A date with no time or zone is that day's midnight UTC: tomorrow, 10-day-old pain is still new."""
    tomorrow = (now() + timedelta(days=1)).date().isoformat()
    result = cli("evaluate", "--now", tomorrow, write(tmp_path, warning_request()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[WARNING] ")


@pytest.mark.parametrize("value", ["2026-13-01", "yesterday", "2026-11-01T25:00"])
def test_evaluate_bad_now_is_one_line(tmp_path: Path, value: str) -> None:
    result = cli("evaluate", "--now", value, write(tmp_path, warning_request()))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and value in result.stderr and "ISO 8601" in result.stderr
    assert result.stdout == ""


def test_evaluate_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`mscc-alert evaluate ... | head`: the reader goes away; no BrokenPipeError."""
    path = write(tmp_path, warning_request())
    process = subprocess.Popen([sys.executable, "-m", "cds_hooks", "evaluate", "--json", path], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment())
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before it writes anything
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0
    assert stderr == ""


def test_serve_on_a_busy_port_says_so_in_one_line() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_says_where_it_serves_and_ctrl_c_stops_it_quietly(tmp_path: Path) -> None:
    import signal

    port = free_port()
    database = tmp_path / "feedback.sqlite3"
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_hooks", "serve", "--port", str(port), "--database-url", f"sqlite:///{database}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=environment(),
    )
    try:
        wait_until_healthy(process, port)
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, 130), output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert f"serving http://127.0.0.1:{port}/cds-services" in output
    assert f"docs=http://127.0.0.1:{port}/docs database=sqlite:///{database}" in output
    assert database.exists()  # the --database-url option was used, not the environment's memory://


def test_feedback_report_says_which_database_it_read(tmp_path: Path) -> None:
    database = tmp_path / "report.sqlite3"
    by_option = cli("feedback-report", "--database-url", f"sqlite:///{database}")
    assert by_option.returncode == 0, by_option.stderr
    assert by_option.stdout.startswith(f"Feedback database: sqlite:///{database}\n")
    by_env = cli("feedback-report", env={"MSCC_ALERT_DATABASE_URL": f"sqlite:///{database}"})
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_option.stdout
