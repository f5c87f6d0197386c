"""Service settings, from environment variables prefixed `MSCC_ALERT_` (validated at start).

Read by the model itself (`Settings._environment`) rather than by pydantic-settings: every field takes its
variable's text as it is, so nothing of that library was used but the lookup, and importing it (asyncio, ssl,
argparse and its many sources) cost 0.16 s of every command's start, a tenth of a 1 GB sweep."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from cards.policy import Policy
from cds_hooks.protocol.fhir_servers import FhirServerPolicy, configured_server, is_loopback_host

if TYPE_CHECKING:
    # Imported where used: every command loads the settings, and these bring in the HTTP client, PyJWT and
    # the rules' models (a few tenths of a second that `mscc-alert sweep` has better uses for).
    from cards.suppression import Windows
    from cds_hooks.protocol.fhir_client import FetchLimits

DEFAULT_CORS_ORIGINS = ("https://sandbox.cds-hooks.org",)
# Any port on loopback: integrators run the sandbox and their own tools locally.
DEFAULT_CORS_ORIGIN_REGEX = r"^http://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted JWT issuer: where its keys are, and the FHIR servers its calls may name as `fhirServer`
    (none: the issuer must send prefetch; the service never fetches for it)."""

    jwks_url: str
    fhir_servers: tuple[str, ...] = ()


ENV_PREFIX = "MSCC_ALERT_"


class Settings(BaseModel):
    """Every setting has an embedded default, so `mscc-alert serve` needs no other server or file. A setting
    given to the constructor wins over its environment variable (tests, the CLI's options)."""

    # Defaults are validated too: a default is a setting like any other.
    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)

    # --- HTTP -------------------------------------------------------------------------------------
    # 50,000 resources at the ~1.2 KB of docs/performance-budget.md are ~60 MB, and resources with narrative text
    # run larger: 128 MiB leaves room for such a chart. A request holds about twice its body at peak
    # (docs/performance-budget.md).
    max_body_bytes: int = Field(128 * 1024 * 1024, gt=0, description="Hook request bodies above this get 413.")
    # Bodies one worker holds at once (cds_hooks/server/inflight.py): beyond this, hook requests queue, never fail.
    max_inflight_body_bytes: int = Field(512 * 1024 * 1024, gt=0)
    # Every request body (hook, feedback, any route) must arrive whole within this of its head (408), not
    # counting time spent queued for the budget above.
    body_read_seconds: float = Field(60.0, gt=0)
    # Feedback is a few items per card: a small body, parsed off the event loop (larger: 413).
    feedback_max_body_bytes: int = Field(1024 * 1024, gt=0)
    # order-select / order-sign: draft orders one call may hold (an order session has a handful; each is validated).
    max_draft_orders: int = Field(200, gt=0)
    feedback_max_items: int = Field(100, gt=0)

    # --- Connections (cds_hooks/server/connections.py) -------------------------------------------------------
    # Request line and headers: over this, 431 and the connection closes. EHR calls send a few KiB (a JWT).
    max_head_bytes: int = Field(32 * 1024, ge=1024)
    head_read_seconds: float = Field(10.0, gt=0, description="The head must arrive within this of its first byte.")
    keep_alive_seconds: float = Field(30.0, gt=0, description="An idle connection (before its first request too) "
                                                               "is closed after this.")
    # Per worker, kept below the file limit (raised to the hard limit at start). Beyond it the longest-idle
    # connection is evicted, or the new one is closed at once if every connection is busy.
    max_connections: int = Field(1000, gt=0)
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    cors_origin_regex: str | None = DEFAULT_CORS_ORIGIN_REGEX
    public_base_url: str | None = Field(
        None, description="The external base URL (behind a proxy): JWT `aud` is checked against it."
    )

    # --- FHIR server fallback (prefetch key absent) ------------------------------------------------
    fhir_connect_timeout: float = Field(2.0, gt=0)
    fhir_read_timeout: float = Field(5.0, gt=0)
    fhir_max_pages: int = Field(20, gt=0)
    fhir_total_seconds: float = Field(
        10.0, gt=0, description="Wall-clock budget for one hook call's fetches: waiting, every key and page, parsing.")
    # One hook call's fetched bytes, all keys and pages: held in the in-flight budget while the call fetches.
    fhir_max_bytes: int = Field(32 * 1024 * 1024, gt=0, le=64 * 1024 * 1024)
    # Hook calls fetching at once per worker (their own threads, never the pool other calls use), and per FHIR
    # server (origin): a slow server holds at most its share. 8 x 32 MiB keeps half the in-flight budget free.
    fhir_max_calls: int = Field(8, gt=0, le=64)
    fhir_max_calls_per_server: int = Field(4, gt=0, le=64)
    # Open mode only (no trusted issuers): the fhirServer base URLs a caller may name; empty: loopback only.
    fhir_servers: tuple[str, ...] = ()

    # --- Security ------------------------------------------------------------------------------------
    auth: Literal["on", "off"] = "on"
    trusted_issuers: dict[str, IssuerConfig] = Field(default_factory=dict)
    trust_sandbox: bool = Field(False, description="Development only: trust the public CDS Hooks sandbox key.")
    jwt_algorithms: tuple[str, ...] = ("ES384", "RS384")
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)
    # A key server that is slow or down holds up only the tokens that need it (cds_hooks/security/jwks.py).
    jwks_fetch_seconds: float = Field(5.0, gt=0, le=60, description="Total deadline for one JWKS fetch.")
    jwks_retry_seconds: float = Field(5.0, ge=0, le=300, description="Wait after a failed JWKS fetch.")
    jwks_max_waiters: int = Field(4, ge=1, le=1000, description="Verifications waiting for one JWKS at once.")
    auth_threads: int = Field(16, ge=1, le=1000, description="Threads verifying JWTs (a pool of their own).")

    # --- Bulk Data client (`mscc-alert sweep <kick-off URL>`; HL7 Bulk Data Access IG 2.0.0) ----------------
    # SMART Backend Services credentials: all three or none (none: the export server must be open).
    bulk_client_id: str | None = None
    bulk_private_key_file: Path | None = Field(None, description="PEM private key (EC P-384 or RSA >= 2048).")
    bulk_key_id: str | None = Field(None, description="`kid` of that key in the JWK Set registered with the server.")
    bulk_scope: str = "system/*.read"  # SMART v1; `system/*.rs` on SMART v2 servers
    bulk_token_url: str | None = Field(None, description="Default: [base]/.well-known/smart-configuration's.")
    # Origins besides the export server's own that may receive the access token (a separate file server).
    bulk_token_origins: tuple[str, ...] = ()
    # `_typeFilter` is optional for servers (IG: experimental); one that rejects it is asked again without it.
    bulk_type_filter: bool = True
    bulk_poll_min_seconds: float = Field(1.0, gt=0)
    bulk_poll_max_seconds: float = Field(300.0, gt=0)  # a Retry-After above this is clamped to it
    bulk_export_seconds: float = Field(12 * 3600.0, gt=0, description="Deadline from kick-off to manifest.")
    bulk_retries: int = Field(8, ge=0, le=100)  # consecutive transient failures (429, 5xx, network) tolerated
    bulk_connect_timeout: float = Field(10.0, gt=0)
    bulk_read_timeout: float = Field(120.0, gt=0)  # seconds without a byte arriving
    bulk_parallel_downloads: int = Field(2, ge=1, le=16)  # files fetched at once
    bulk_max_file_bytes: int = Field(8 * 1024**3, gt=0)  # as stored (compressed if the server gzipped it)
    bulk_max_total_bytes: int = Field(64 * 1024**3, gt=0)

    # --- Storage, logs -------------------------------------------------------------------------------
    database_url: str | None = Field(None, description="Feedback store; default: an SQLite file in the data dir.")
    ready_timeout_seconds: float = Field(2.0, gt=0, le=60, description="/readyz waits this long for the database.")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- Shown once, unless it gets worse (cards/suppression.py) -----------------------------------------
    # The key of the HMAC-SHA-256 pseudonyms of patients and clinicians kept in the feedback store. Without it no
    # pseudonym is stored and no card is ever suppressed (serve says so at start).
    pseudonym_secret: SecretStr | None = Field(None, min_length=32)
    suppress_override_days: float = Field(14.0, ge=0, le=365)
    suppress_accepted_critical_days: float = Field(1.0, ge=0, le=365)  # the stat MRI's time frame (24 h)
    suppress_accepted_warning_days: float = Field(7.0, ge=0, le=365)  # the urgent MRI's time frame (1 week)
    # Earlier actions read per hook call: a client posting feedback without end cannot make one lookup large.
    suppression_lookup_rows: int = Field(200, ge=1, le=10_000)

    # --- Population sweep (`mscc-alert sweep`) ------------------------------------------------------
    # A Bulk NDJSON line longer than this is skipped and counted, never read whole (the hook's body limit).
    sweep_max_line_bytes: int = Field(128 * 1024 * 1024, gt=0)
    # Plain NDJSON files are screened in byte ranges of this size, so workers share a large file.
    sweep_chunk_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    # The compiled mention test is kept here between sweeps (one file of ~0.6 MB, only ever loaded from a folder
    # and a file this user owns and only they can write: cds_hooks/sweep/pattern_cache.py). Empty: no cache.
    sweep_cache_dir: Path | None = Field(default_factory=lambda: _default_cache_dir())
    # `--since` (cds_hooks/sweep/delta.py): each patient with a relevant change in the delta export is fetched
    # whole from the FHIR server (the fhir_* limits above apply to each). Beyond this many the sweep stops before
    # fetching any; this many are fetched at once (each runs up to 4 searches at once).
    sweep_since_max_patients: int = Field(2000, ge=1, le=1_000_000)
    sweep_since_parallel: int = Field(4, ge=1, le=32)

    # --- Clinical policy (design choices from docs/clinical-rules.md §1.2, not guideline rules) -----------------
    new_pain_window_days: int = Field(42, ge=28, le=90)
    pain_washout_days: int = Field(180, ge=0, le=730)
    severe_pain_score: float = Field(7.0, ge=0, le=10)
    count_unconfirmed: bool = False
    in_situ_mode: Literal["ignore", "info"] = "ignore"
    any_cancer: bool = False
    minimum_age_years: int = Field(18, ge=0, le=120)
    end_of_life_mode: Literal["keep", "downgrade"] = "keep"
    # The site's IANA time zone, in which cards count days (cards.policy.Policy.display_zone); unset: each record's
    # own offset.
    time_zone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _environment(cls, given: object) -> object:
        """Each setting the caller did not give, from MSCC_ALERT_<NAME> in any case, as the text it is (comma
        lists and JSON are read by the validators below, the rest by the fields' own types)."""
        if not isinstance(given, dict):
            return given
        prefix = ENV_PREFIX.lower()
        found: dict[str, str] = {}
        for key, value in os.environ.items():
            name = key.lower().removeprefix(prefix)
            if name != key.lower() and name in cls.model_fields:
                found[name] = value
        return {**found, **given}

    @field_validator("cors_origins", "jwt_algorithms", "fhir_servers", "bulk_token_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("sweep_cache_dir", mode="before")
    @classmethod
    def _no_cache_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            _zone(value)
        return value

    @field_validator("trusted_issuers", mode="before")
    @classmethod
    def _issuer_map(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError('must be a JSON object {"<iss>": "<jwks url>" or {"jwks_url": "<url>", '
                                 '"fhir_servers": ["<base url>", ...]}, ...}') from exc
        if isinstance(value, dict):  # the short form: an issuer given by its JWKS URL alone
            return {iss: {"jwks_url": v} if isinstance(v, str) else v for iss, v in value.items()}
        return value

    @field_validator("trusted_issuers")
    @classmethod
    def _issuer_urls(cls, value: dict[str, IssuerConfig]) -> dict[str, IssuerConfig]:
        if not value:
            return value
        from cds_hooks.security.jwks import check_jwks_url

        for issuer, config in value.items():
            try:
                check_jwks_url(config.jwks_url)
            except ValueError as exc:
                raise ValueError(f"issuer {issuer!r}: {exc}") from None
            _check_fhir_servers(config.fhir_servers, f"issuer {issuer!r}")
        return value

    @field_validator("fhir_servers")
    @classmethod
    def _open_fhir_servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _check_fhir_servers(value, "MSCC_ALERT_FHIR_SERVERS")
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _safe_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS384", "PS256"}
        bad = [alg for alg in value if alg not in allowed]
        if bad:
            raise ValueError(f"not allowed: {bad}; asymmetric algorithms only (never none or HMAC)")
        return value

    def fhir_server_policy(self, open_mode: bool) -> FhirServerPolicy:
        """Open mode: MSCC_ALERT_FHIR_SERVERS, else any loopback server. With issuers: each one's own list."""
        if not open_mode:
            return FhirServerPolicy({issuer: [configured_server(url) for url in config.fhir_servers]
                                     for issuer, config in self.trusted_issuers.items()}, ())
        return FhirServerPolicy({}, [configured_server(url) for url in self.fhir_servers] or None)

    def fetch_limits(self) -> FetchLimits:
        from cds_hooks.protocol.fhir_client import FetchLimits

        return FetchLimits(connect_timeout=self.fhir_connect_timeout, read_timeout=self.fhir_read_timeout,
                           max_pages=self.fhir_max_pages, total_seconds=self.fhir_total_seconds,
                           max_bytes=self.fhir_max_bytes)

    def suppression_windows(self) -> Windows:
        from cards.suppression import Windows

        return Windows(
            override_days=self.suppress_override_days,
            accepted_critical_days=self.suppress_accepted_critical_days,
            accepted_warning_days=self.suppress_accepted_warning_days,
        )

    @field_validator("bulk_token_url")
    @classmethod
    def _bulk_token_url(cls, value: str | None) -> str | None:
        if value is not None and not https_or_loopback(value):
            raise ValueError("must be an https URL (http only on loopback)")
        return value

    @field_validator("bulk_token_origins")
    @classmethod
    def _bulk_token_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not https_or_loopback(origin) or origin.rstrip("/").count("/") != 2:
                raise ValueError(f"{origin!r} must be an origin: https://host[:port] (http only on loopback)")
        return value

    @model_validator(mode="after")
    def _bulk_credentials(self) -> Self:
        given = {"BULK_CLIENT_ID": self.bulk_client_id, "BULK_PRIVATE_KEY_FILE": self.bulk_private_key_file,
                 "BULK_KEY_ID": self.bulk_key_id}
        missing = [f"MSCC_ALERT_{name}" for name, value in given.items() if not value]
        if 0 < len(missing) < len(given):
            raise ValueError(f"SMART Backend Services needs all of client id, key file and key id; missing: "
                             f"{', '.join(missing)}")
        if self.bulk_poll_min_seconds > self.bulk_poll_max_seconds:
            raise ValueError("MSCC_ALERT_BULK_POLL_MIN_SECONDS must not exceed MSCC_ALERT_BULK_POLL_MAX_SECONDS")
        return self

    def policy(self) -> Policy:
        return Policy(
            new_pain_window_days=self.new_pain_window_days,
            pain_washout_days=self.pain_washout_days,
            severe_pain_score=self.severe_pain_score,
            count_unconfirmed=self.count_unconfirmed,
            in_situ_mode=self.in_situ_mode,
            any_cancer=self.any_cancer,
            minimum_age_years=self.minimum_age_years,
            end_of_life_mode=self.end_of_life_mode,
            display_zone=_zone(self.time_zone) if self.time_zone else None,
        )


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone name (e.g. Europe/London, America/New_York)") from None


def _check_fhir_servers(urls: tuple[str, ...], owner: str) -> None:
    for url in urls:
        try:
            configured_server(url)
        except ValueError as exc:
            raise ValueError(f"FHIR server {url!r} of {owner} {exc}") from None


def https_or_loopback(url: str) -> bool:
    """https, or plain http to this machine only (tests, a local proxy): PHI and tokens never cross a network
    unencrypted. The host is parsed, so `http://localhost.example.org` is not loopback."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a malformed port)
    except ValueError:
        return False
    if not parts.hostname or "@" in parts.netloc:  # credentials in a URL would go out as Basic auth
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))


def _default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/mscc-alert, else ~/.cache/mscc-alert (the XDG Base Directory default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mscc-alert"
