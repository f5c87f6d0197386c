"""Settings come from MSCC_ALERT_* environment variables, read by the model itself (cds_hooks/settings.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cds_hooks.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_each_variable_is_read_as_its_field_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSCC_ALERT_NEW_PAIN_WINDOW_DAYS", "30")
    monkeypatch.setenv("MSCC_ALERT_SEVERE_PAIN_SCORE", "6.5")
    monkeypatch.setenv("MSCC_ALERT_ANY_CANCER", "true")
    monkeypatch.setenv("MSCC_ALERT_JWT_ALGORITHMS", "ES384, RS384")
    monkeypatch.setenv("MSCC_ALERT_SWEEP_CACHE_DIR", "/var/cache/mscc")
    monkeypatch.setenv("MSCC_ALERT_PSEUDONYM_SECRET", "not-shown-" * 4)
    settings = Settings()
    assert settings.new_pain_window_days == 30
    assert settings.severe_pain_score == 6.5
    assert settings.any_cancer is True
    assert settings.jwt_algorithms == ("ES384", "RS384")
    assert settings.sweep_cache_dir == Path("/var/cache/mscc")
    assert settings.pseudonym_secret is not None and settings.pseudonym_secret.get_secret_value() == "not-shown-" * 4
    assert "not-shown" not in repr(settings)


def test_variable_names_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("mscc_alert_new_pain_window_days", "35")
    assert Settings().new_pain_window_days == 35


def test_the_constructor_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSCC_ALERT_NEW_PAIN_WINDOW_DAYS", "30")
    monkeypatch.setenv("MSCC_ALERT_IN_SITU_MODE", "info")
    settings = Settings(new_pain_window_days=60)
    assert settings.new_pain_window_days == 60
    assert settings.in_situ_mode == "info"  # what the constructor did not give still comes from the environment


def test_other_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings().new_pain_window_days
    monkeypatch.setenv("NEW_PAIN_WINDOW_DAYS", str(default + 7))  # no prefix
    monkeypatch.setenv("MSCC_NEW_PAIN_WINDOW_DAYS", str(default + 7))  # another prefix
    monkeypatch.setenv("MSCC_ALERT_NO_SUCH_SETTING", "x")  # a name that is no setting: ignored, as before
    assert Settings().new_pain_window_days == default


def test_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSCC_ALERT_NEW_PAIN_WINDOW_DAYS", "six weeks")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert [error["loc"] for error in raised.value.errors()] == [("new_pain_window_days",)]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.new_pain_window_days = 1  # type: ignore[misc]


def test_commands_start_without_asyncio() -> None:
    """The CLI and the sweep's engine import neither asyncio nor ssl (0.1-0.2 s of every command's start, which
    pydantic-settings brought in); `serve` imports them with the web server."""
    code = ("import sys, cds_hooks.cli, cds_hooks.sweep.local; "
            "print(sorted(m for m in ('asyncio', 'ssl', 'pydantic_settings') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert shown.stdout.strip() == "[]"
