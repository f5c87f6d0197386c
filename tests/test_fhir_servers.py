"""The FHIR servers a client may name: base-URL matching, the open-mode default, and the settings that
configure them (MSCC_ALERT_TRUSTED_ISSUERS with fhir_servers, MSCC_ALERT_FHIR_SERVERS)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cds_hooks.protocol.fhir_servers import FhirServerPolicy, configured_server, parse_server_url
from cds_hooks.settings import IssuerConfig, Settings

ISSUER = "https://ehr.example.org"
BASE = "https://fhir.example.org/fhir"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://fhir.example.org/fhir", True),
        ("https://fhir.example.org/fhir/", True),
        ("https://fhir.example.org/fhir/r4", True),
        ("https://FHIR.example.org/fhir", True),  # host names are case-insensitive
        ("https://fhir.example.org:443/fhir", True),  # the default port, spelt out
        ("https://fhir.example.org/fhirevil", False),  # a prefix, not a segment
        ("https://fhir.example.org/FHIR", False),  # paths are case-sensitive
        ("https://fhir.example.org/", False),
        ("https://fhir.example.org", False),
        ("http://fhir.example.org/fhir", False),  # the scheme must match: never downgraded to http
        ("https://fhir.example.org:8443/fhir", False),
        ("https://evil.fhir.example.org/fhir", False),
        ("https://fhir.example.org.evil.example/fhir", False),
        ("https://fhir.example.org%2f@evil/fhir", False),
    ],
)
def test_a_base_url_matches_on_origin_and_path_segments(url: str, allowed: bool) -> None:
    policy = FhirServerPolicy({ISSUER: [configured_server(BASE)]}, ())
    try:
        server = parse_server_url(url)
    except ValueError:
        assert not allowed
        return
    assert policy.allows(ISSUER, server) is allowed


def test_root_base_url_allows_every_path_of_its_origin() -> None:
    policy = FhirServerPolicy({ISSUER: [configured_server("https://fhir.example.org/")]}, ())
    assert policy.allows(ISSUER, parse_server_url("https://fhir.example.org/any/path"))
    assert not policy.allows(ISSUER, parse_server_url("https://fhir.example.org:444/any/path"))


def test_each_issuer_has_its_own_list() -> None:
    policy = FhirServerPolicy({ISSUER: [configured_server(BASE)], "https://other.example": []}, ())
    assert not policy.allows("https://other.example", parse_server_url(BASE))
    assert not policy.allows("https://unknown.example", parse_server_url(BASE))
    assert not policy.allows(None, parse_server_url(BASE))  # not open mode: no list


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/fhir", True),
        ("http://localhost:1/fhir", True),
        ("http://[::1]:8080/fhir", True),
        ("https://127.0.0.5/fhir", True),
        ("http://10.0.0.5/fhir", False),
        ("https://fhir.example.org/fhir", False),
        ("http://localhost.evil.example/fhir", False),
        ("http://[::ffff:10.0.0.5]/fhir", False),
    ],
)
def test_open_mode_default_is_loopback_only(url: str, allowed: bool) -> None:
    assert FhirServerPolicy({}, None).allows(None, parse_server_url(url)) is allowed


def test_open_mode_list_replaces_the_loopback_default() -> None:
    policy = FhirServerPolicy({}, [configured_server(BASE)])
    assert policy.allows(None, parse_server_url(BASE + "/r4"))
    assert not policy.allows(None, parse_server_url("http://127.0.0.1:8080/fhir"))


@pytest.mark.parametrize(
    "url",
    ["http://fhir.example.org/fhir", "ftp://fhir.example.org/fhir", "https://fhir.example.org/fhir?x=1",
     "https://u:p@fhir.example.org/fhir", "https://fhir.example.org:70000/fhir", "fhir.example.org/fhir"],
)
def test_configured_servers_must_be_https_base_urls(url: str) -> None:
    with pytest.raises(ValueError):
        configured_server(url)


# --- settings ------------------------------------------------------------------------------------------


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"MSCC_ALERT_{name.upper()}", value)
    return Settings()


def test_trusted_issuers_take_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    issuers = {
        "https://short.example": "https://short.example/jwks.json",
        ISSUER: {"jwks_url": "https://ehr.example.org/jwks.json", "fhir_servers": [BASE, "http://127.0.0.1:9/fhir"]},
    }
    settings = settings_from_env(monkeypatch, trusted_issuers=json.dumps(issuers))
    assert settings.trusted_issuers == {
        "https://short.example": IssuerConfig("https://short.example/jwks.json"),
        ISSUER: IssuerConfig("https://ehr.example.org/jwks.json", (BASE, "http://127.0.0.1:9/fhir")),
    }
    policy = settings.fhir_server_policy(open_mode=False)
    assert policy.allows(ISSUER, parse_server_url(BASE))
    # An issuer given by its JWKS URL alone may name no FHIR server: it must send prefetch.
    assert not policy.allows("https://short.example", parse_server_url(BASE))
    assert not policy.allows("https://short.example", parse_server_url("http://127.0.0.1:9/fhir"))


@pytest.mark.parametrize(
    "issuers",
    [
        {ISSUER: {"jwks_url": "https://ehr.example.org/jwks.json", "fhir_servers": ["http://fhir.example.org/fhir"]}},
        {ISSUER: {"jwks_url": "https://ehr.example.org/jwks.json", "fhir_servers": ["https://x/fhir?q=1"]}},
        {ISSUER: {"fhir_servers": [BASE]}},
        {ISSUER: {"jwks_url": "https://ehr.example.org/jwks.json", "fhir_servers": BASE}},
    ],
)
def test_bad_issuer_fhir_servers_stop_the_start(monkeypatch: pytest.MonkeyPatch, issuers: object) -> None:
    with pytest.raises(ValidationError):
        settings_from_env(monkeypatch, trusted_issuers=json.dumps(issuers))


def test_open_mode_fhir_servers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(monkeypatch, fhir_servers=f"{BASE}, http://127.0.0.1:8080/r4")
    assert settings.fhir_servers == (BASE, "http://127.0.0.1:8080/r4")
    policy = settings.fhir_server_policy(open_mode=True)
    assert policy.allows(None, parse_server_url(BASE))
    assert policy.allows(None, parse_server_url("http://127.0.0.1:8080/r4"))
    assert not policy.allows(None, parse_server_url("http://127.0.0.1:8081/r4"))
    # With trusted issuers the open-mode list gives nothing: only the issuers' own lists count.
    assert not settings.fhir_server_policy(open_mode=False).allows(None, parse_server_url(BASE))


def test_open_mode_fhir_servers_must_be_https_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        settings_from_env(monkeypatch, fhir_servers="http://fhir.example.org/fhir")
