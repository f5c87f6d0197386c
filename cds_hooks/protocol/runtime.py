"""What one app holds for its lifetime: settings, the services, the feedback store, the verifier, the pools and
budgets. Built once per worker (create_app); routes reach it through cds_hooks.protocol.dependencies."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cds_hooks.feedback.models import FeedbackStore, MemoryFeedbackStore
from cds_hooks.feedback.suppression import Suppression
from cds_hooks.protocol.fetch_pool import FetchPool
from cds_hooks.security import JwksCache, JwtVerifier
from cds_hooks.security.jwks import SANDBOX_ISSUER, SANDBOX_JWKS_URL, sandbox_jwks
from cds_hooks.security.jwt_auth import ReplayCache
from cds_hooks.security.pseudonym import Pseudonyms
from cds_hooks.server.inflight import InflightBudget
from cds_hooks.server.metrics import Metrics
from cds_hooks.services.registry import Registry, registry_from_settings
from cds_hooks.settings import Settings
from fhir_mapping.intake import mention_test
from fhir_mapping.terminology import Terminology, load_terminology


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    terminology: Terminology
    services: Registry
    store: FeedbackStore
    verifier: JwtVerifier | None  # None: open mode (no client authentication)
    suppression: Suppression | None
    metrics: Metrics
    inflight: InflightBudget
    # JWT checks get threads of their own: behind slow hook evaluations or feedback writes in the shared pool,
    # a valid token would wait for others' work (and the shared pool's threads for a slow key server).
    auth_pool: ThreadPoolExecutor
    fetches: FetchPool

    def close(self) -> None:
        self.auth_pool.shutdown(wait=False, cancel_futures=True)
        self.fetches.close()
        self.store.close()


def build_runtime(settings: Settings) -> Runtime:
    terminology = load_terminology()
    mention_test(terminology)  # compiled now (a few tenths of a second), not during the first request
    store = open_feedback_store(settings)
    verifier = build_verifier(settings, store.replay_cache())
    return Runtime(
        settings=settings,
        terminology=terminology,
        services=registry_from_settings(settings, terminology, open_mode=verifier is None),
        store=store,
        verifier=verifier,
        suppression=build_suppression(settings, store),
        metrics=Metrics(),
        inflight=InflightBudget(settings.max_inflight_body_bytes),
        auth_pool=ThreadPoolExecutor(max_workers=settings.auth_threads, thread_name_prefix="jwt-verify"),
        fetches=FetchPool(settings.fhir_max_calls, settings.fhir_max_calls_per_server),
    )


def build_verifier(settings: Settings, replay_cache: ReplayCache | None = None) -> JwtVerifier | None:
    """None means the service runs open (see `mscc-alert serve` for when that is allowed).

    `replay_cache`: where seen JWT ids are kept; workers must share one (the database), or a token replayed
    to another worker would be accepted. None keeps them in this process (one worker, tests)."""
    if settings.auth == "off":
        return None
    issuers = {issuer: config.jwks_url for issuer, config in settings.trusted_issuers.items()}
    cache = JwksCache(timeout=min(3.0, settings.jwks_fetch_seconds), fetch_seconds=settings.jwks_fetch_seconds,
                      retry_seconds=settings.jwks_retry_seconds, max_waiters=settings.jwks_max_waiters)
    if settings.trust_sandbox:
        issuers[SANDBOX_ISSUER] = SANDBOX_JWKS_URL
        cache.preload(SANDBOX_JWKS_URL, sandbox_jwks())
    if not issuers:
        return None
    return JwtVerifier(issuers, algorithms=settings.jwt_algorithms, leeway_seconds=settings.jwt_leeway_seconds,
                       jwks=cache, replay_cache=replay_cache)


def open_feedback_store(settings: Settings) -> FeedbackStore:
    if settings.database_url == "memory://":
        return MemoryFeedbackStore()
    from cds_hooks.feedback.store import SqlFeedbackStore, default_database_url

    return SqlFeedbackStore(settings.database_url or default_database_url())


def build_suppression(settings: Settings, store: FeedbackStore) -> Suppression | None:
    """None (suppression off, no pseudonyms stored) without MSCC_ALERT_PSEUDONYM_SECRET."""
    if settings.pseudonym_secret is None:
        return None
    return Suppression(store.acknowledgements(), Pseudonyms(settings.pseudonym_secret.get_secret_value()),
                       settings.suppression_windows(), settings.suppression_lookup_rows)
