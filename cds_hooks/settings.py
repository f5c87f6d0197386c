"""Service settings, from environment variables prefixed `MSCC_ALERT_` (validated at start)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cards.policy import Policy
from cards.suppression import Windows

DEFAULT_CORS_ORIGINS = ("https://sandbox.cds-hooks.org",)
# Any port on loopback: integrators run the sandbox and their own tools locally.
DEFAULT_CORS_ORIGIN_REGEX = r"^http://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$"


class Settings(BaseSettings):
    """Every setting has an embedded default, so `mscc-alert serve` needs no other server or file."""

    model_config = SettingsConfigDict(env_prefix="MSCC_ALERT_", extra="ignore", frozen=True)

    # --- HTTP -------------------------------------------------------------------------------------
    # 50,000 resources at the ~1.2 KB of performance.md are ~60 MB, and resources with narrative text run larger:
    # 128 MiB leaves room for such a chart. A request holds about twice its body at peak (README, issue 5).
    max_body_bytes: int = Field(128 * 1024 * 1024, gt=0, description="Hook request bodies above this get 413.")
    # Bodies one worker holds at once (cds_hooks/inflight.py): beyond this, hook requests queue, never fail.
    max_inflight_body_bytes: int = Field(512 * 1024 * 1024, gt=0)
    # A body that trickles in would hold its share of that budget: it must arrive whole within this (408).
    body_read_seconds: float = Field(60.0, gt=0)
    cors_origins: Annotated[tuple[str, ...], NoDecode] = DEFAULT_CORS_ORIGINS
    cors_origin_regex: str | None = DEFAULT_CORS_ORIGIN_REGEX
    public_base_url: str | None = Field(
        None, description="The external base URL (behind a proxy): JWT `aud` is checked against it."
    )

    # --- FHIR server fallback (prefetch key absent) ------------------------------------------------
    fhir_connect_timeout: float = Field(2.0, gt=0)
    fhir_read_timeout: float = Field(5.0, gt=0)
    fhir_max_pages: int = Field(20, gt=0)
    fhir_total_seconds: float = Field(10.0, gt=0, description="Budget for one search with all its pages.")

    # --- Security ------------------------------------------------------------------------------------
    auth: Literal["on", "off"] = "on"
    trusted_issuers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    trust_sandbox: bool = Field(False, description="Development only: trust the public CDS Hooks sandbox key.")
    jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = ("ES384", "RS384")
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)

    # --- Storage, logs -------------------------------------------------------------------------------
    database_url: str | None = Field(None, description="Feedback store; default: an SQLite file in the data dir.")
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

    # --- Clinical policy (design choices from clinical.md §1.2, not guideline rules) -----------------
    new_pain_window_days: int = Field(42, ge=28, le=90)
    pain_washout_days: int = Field(180, ge=0, le=730)
    severe_pain_score: float = Field(7.0, ge=0, le=10)
    count_unconfirmed: bool = False
    in_situ_mode: Literal["ignore", "info"] = "ignore"
    any_cancer: bool = False
    minimum_age_years: int = Field(18, ge=0, le=120)
    end_of_life_mode: Literal["keep", "downgrade"] = "keep"

    @field_validator("cors_origins", "jwt_algorithms", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("trusted_issuers", mode="before")
    @classmethod
    def _issuer_map(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError('must be a JSON object {"<iss>": "<jwks url>", ...}') from exc
        return value

    @field_validator("trusted_issuers")
    @classmethod
    def _issuer_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for issuer, jwks_url in value.items():
            if not jwks_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
                raise ValueError(f"JWKS URL for issuer {issuer!r} must be https (or loopback http for tests)")
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _safe_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS384", "PS256"}
        bad = [alg for alg in value if alg not in allowed]
        if bad:
            raise ValueError(f"not allowed: {bad}; asymmetric algorithms only (never none or HMAC)")
        return value

    def suppression_windows(self) -> Windows:
        return Windows(
            override_days=self.suppress_override_days,
            accepted_critical_days=self.suppress_accepted_critical_days,
            accepted_warning_days=self.suppress_accepted_warning_days,
        )

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
        )
