"""The HTTP app: decode, dispatch, encode. Clinical logic lives in fhir_mapping and cards."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import mmap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cards.suppression import card_facts
from cards.version import rules_version
from cds_hooks.feedback.models import (
    FeedbackError,
    FeedbackStore,
    FeedbackTooLarge,
    IssuedCard,
    MemoryFeedbackStore,
    feedback_outcome,
    parse_feedback,
)
from cds_hooks.feedback.suppression import Suppression
from cds_hooks.protocol.errors import (
    FHIR_JSON_MEDIA_TYPE,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
    operation_outcome,
)
from cds_hooks.protocol.fetch_pool import FetchPool
from cds_hooks.protocol.fhir_client import FetchBudget, FetchLimits
from cds_hooks.protocol.openapi import openapi_document
from cds_hooks.protocol.prefetch import Gathered
from cds_hooks.protocol.requests import HookRequest, decode_hook_request
from cds_hooks.security import AuthenticationError, JwksCache, JwtVerifier, VerifiedClient
from cds_hooks.security.jwks import SANDBOX_ISSUER, SANDBOX_JWKS_URL, sandbox_jwks
from cds_hooks.security.jwt_auth import ReplayCache
from cds_hooks.security.pseudonym import Pseudonyms
from cds_hooks.server.inflight import InflightBudget, Share
from cds_hooks.server.metrics import Metrics
from cds_hooks.server.middleware import AccessLog, InternalErrors, LoopbackHostOnly
from cds_hooks.services.patient_view import Outcome, PatientViewService
from cds_hooks.settings import Settings
from fhir_mapping.terminology import load_terminology

# The value sets every rule reads: /readyz says not ready unless each has codes.
READY_VALUE_SETS = ("breast-cancer", "spinal-pain", "neuro-red-flags", "spine-imaging")
API_DESCRIPTION = (
    "A CDS Hooks 2.0 service: breast-cancer history plus new spinal pain gives a warning card (suspected spinal "
    "metastases: MRI of the whole spine within a week) or a critical card (suspected spinal cord compression: "
    "within 24 h). `GET /cds-services` is discovery; `POST /cds-services/{id}` is the hook call. "
    "`GET /healthz` says the process is alive, `GET /readyz` that it can answer (value sets loaded, feedback "
    "database reachable), `GET /metrics` is Prometheus text (all workers)."
)

_JSON_TYPES = ("application/json", "application/fhir+json")
# Bodies declared larger than this are read into an anonymous map (see read_json_body). At 4 MiB, four concurrent
# 12.8 MB bodies peaked at 1.15x body per connection against 1.98x when they grew side by side in the heap.
MAPPED_BODY_BYTES = 4 * 1024 * 1024


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _outcome_response(error: ServiceError, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(error), status_code=error.status, media_type=FHIR_JSON_MEDIA_TYPE,
                    headers=headers)


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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    terminology = load_terminology()
    store = open_feedback_store(settings)
    verifier = build_verifier(settings, store.replay_cache())
    service = PatientViewService(
        terminology,
        settings.policy(),
        FetchLimits(connect_timeout=settings.fhir_connect_timeout, read_timeout=settings.fhir_read_timeout,
                    max_pages=settings.fhir_max_pages, total_seconds=settings.fhir_total_seconds,
                    max_bytes=settings.fhir_max_bytes),
        settings.fhir_server_policy(open_mode=verifier is None),
    )
    services = {service.id: service}
    suppression = build_suppression(settings, store)
    metrics = Metrics()
    inflight = InflightBudget(settings.max_inflight_body_bytes)
    # JWT checks get threads of their own: behind slow hook evaluations or feedback writes in the shared pool,
    # a valid token would wait for others' work (and the shared pool's threads for a slow key server).
    auth_pool = ThreadPoolExecutor(max_workers=settings.auth_threads, thread_name_prefix="jwt-verify")
    fetches = FetchPool(settings.fhir_max_calls, settings.fhir_max_calls_per_server)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Long-lived objects from imports and start-up never need another GC pass (docs/performance-budget.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            auth_pool.shutdown(wait=False, cancel_futures=True)
            fetches.close()
            store.close()

    # /docs (Swagger UI) and /redoc with their scripts served from the installed fastapi-offline package, never
    # from a CDN: the documentation works on a machine with no internet access.
    app = FastAPIOffline(title="mscc-alert", version="0.1.0", lifespan=lifespan, docs_url="/docs",
                         redoc_url="/redoc", description=API_DESCRIPTION)
    app.state.settings = settings
    app.state.services = services

    def log_fields(request: Request) -> dict[str, Any]:
        fields: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("log", {})
        return fields

    async def authenticate(request: Request) -> VerifiedClient | None:
        if verifier is None:
            return None
        try:
            # Off the event loop: verifying may wait for a JWKS fetch and records the jti in the database.
            client = await asyncio.get_running_loop().run_in_executor(
                auth_pool, verifier.verify, request.headers.get("authorization"), audiences_for(request, settings))
        except AuthenticationError as exc:
            log_fields(request)["reason"] = f"auth: {exc}"
            raise Unauthorized() from None
        log_fields(request).update(issuer=client.issuer, tenant=client.tenant, jti=client.jti)
        return client

    async def read_json_body(request: Request, limit: int, share: Share) -> bytearray | memoryview:
        """The body, counted into `share` as it arrives; 413 over `limit`, 408 if it does not arrive within
        MSCC_ALERT_BODY_READ_SECONDS (time spent waiting for room in the budget is the server's, not counted)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _JSON_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type must be application/json (got {content_type or 'none'})")
        expected = declared_length(request)
        if expected is not None and expected > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
        # Memory is taken as the body arrives, never at the declared size up front: a client that declares
        # 128 MiB and sends nothing must hold nothing. Small bodies grow a bytearray (by realloc, in the heap
        # pages cds_hooks/server/allocator.py keeps); a large declared body is filled into an anonymous map of its size,
        # whose pages become resident only as they are written, so it is never copied as it grows, and several
        # growing side by side do not fragment the heap.
        mapped = expected if expected is not None and expected > MAPPED_BODY_BYTES else None
        body: bytearray | mmap.mmap = mmap.mmap(-1, mapped) if mapped else bytearray()
        size = 0
        deadline = asyncio.get_running_loop().time() + settings.body_read_seconds
        try:
            async with asyncio.timeout_at(deadline) as timer:
                async for chunk in request.stream():
                    if size + len(chunk) > (mapped or limit):
                        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
                    timer.reschedule(None)
                    deadline += await share.take(len(chunk))
                    timer.reschedule(deadline)
                    if isinstance(body, bytearray):
                        body += chunk
                    else:
                        body[size:size + len(chunk)] = chunk
                    size += len(chunk)
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {settings.body_read_seconds:g} seconds") from None
        return body if isinstance(body, bytearray) else memoryview(body)[:size]

    async def fetch_then_decide(service: PatientViewService, hook_request: HookRequest[Any], gathered: Gathered,
                                client: VerifiedClient | None, share: Share) -> Outcome:
        """The keys the prefetch lacks, from fhirServer: in the fetch pool, within one budget of bytes (held
        in the in-flight budget meanwhile, as part of the request's own share, so the oldest request can
        always go on) and of seconds (waiting for a slot included)."""
        plan = service.plan_fetch(hook_request, gathered, client.issuer if client else None)
        seconds = settings.fhir_total_seconds
        start = time.monotonic()
        async with AsyncExitStack() as held:
            try:
                async with asyncio.timeout(seconds):
                    await held.enter_async_context(fetches.admit(plan.origin))
                    await share.take(settings.fhir_max_bytes)
            except TimeoutError:
                raise service.not_fetched(hook_request, gathered, "fhir-busy") from None
            budget = FetchBudget(settings.fhir_max_bytes, seconds - (time.monotonic() - start))
            return await fetches.run(
                lambda keys: service.fetch_and_decide(hook_request, gathered, plan, budget, keys))

    def service_for(service_id: str) -> PatientViewService:
        found = services.get(service_id)
        if found is None:
            raise NotFound("Unknown CDS service id; GET /cds-services lists the services")
        return found

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        if isinstance(exc, PreconditionFailed):
            log_fields(request)["reason"] = "precondition-failed"
            if exc.log_detail:
                log_fields(request)["fetch_errors"] = exc.log_detail
            # The key names only: the reasons can carry the FHIR server's URLs, which hold patient ids.
            log_fields(request)["failed_keys"] = ",".join(e.removeprefix("prefetch.") for e in exc.expression or [])
            if exc.fetch_failures:
                metrics.fhir_fetches.labels("failed").inc(exc.fetch_failures)
        if isinstance(exc, Unauthorized):
            return _outcome_response(exc, headers={"WWW-Authenticate": "Bearer"})
        return _outcome_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error = ServiceError(str(exc.detail))
        error.status = exc.status_code
        error.issue_code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        if exc.status_code == 404:
            error.message = "No such endpoint; discovery is at GET /cds-services"
        elif exc.status_code == 405:
            error.message = f"Method {request.method} is not allowed here"
        return _outcome_response(error, headers=dict(exc.headers or {}))

    @app.get("/cds-services", summary="Discovery: the services and their prefetch templates")
    async def discovery(request: Request) -> Response:
        await authenticate(request)
        return _json({"services": [s.discovery() for s in services.values()]})

    @app.post("/cds-services/{service_id}", summary="Call the service (the patient-view hook)")
    async def call_service(service_id: str, request: Request) -> Response:
        service = service_for(service_id)
        fields = log_fields(request)
        fields["service_id"] = service.id
        client = await authenticate(request)
        async with inflight.share() as share:
            body = await read_json_body(request, settings.max_body_bytes, share)
            if share.waited_ms >= 1:
                fields["queued_ms"] = round(share.waited_ms, 1)
            hook_request = decode_hook_request(body, service.hook)
            fields["hook_instance"] = hook_request.hookInstance
            undeclared = sorted(k for k in hook_request.prefetch or {} if k not in service.templates)
            if undeclared:
                fields["undeclared_keys"] = ",".join(undeclared)
            # Most calls end here: one hop to a thread (the prefetch is read and judged there).
            result = await run_in_threadpool(service.evaluate_prefetched, hook_request)
            outcome = result if isinstance(result, Outcome) else (
                await fetch_then_decide(service, hook_request, result, client, share))
        evaluation, gathered = outcome.evaluation, outcome.gathered
        cards = evaluation.cards
        issuer, tenant = (client.issuer, client.tenant) if client else (None, None)
        facts = card_facts(evaluation.decision) if cards else None
        patient_key = user_key = None
        if suppression is not None and facts is not None:
            patient_key = suppression.pseudonyms.patient(issuer, hook_request.context.patientId)
            user_key = suppression.pseudonyms.user(issuer, hook_request.context.userId)
            shown = await run_in_threadpool(suppression.apply, service.id, cards, facts, patient_key,
                                            datetime.now(UTC), rules_version(), issuer, tenant)
            if shown.suppressed:
                fields["suppressed"] = shown.suppressed
                for card in cards:
                    metrics.suppressed.labels(card["indicator"]).inc()
            cards = shown.cards
        fields.update(
            cards=len(cards), indicator=cards[0]["indicator"] if cards else "none",
            resources_seen=evaluation.resources_seen, resources_used=evaluation.resources_used,
            skipped=len(evaluation.record.skipped), other_patient=evaluation.record.ignored_other_patient,
        )
        if gathered.from_prefetch:
            fields["prefetch_keys"] = ",".join(gathered.from_prefetch)
        if gathered.null_keys:
            fields["null_keys"] = ",".join(gathered.null_keys)
        if gathered.fetched:
            fields["fetched_keys"] = ",".join(gathered.fetched)
            metrics.fhir_fetches.labels("ok").inc(len(gathered.fetched))
        for card in cards:
            metrics.cards.labels(card["indicator"]).inc()
        if cards:
            # On record before the client has the cards (its feedback on them is accepted only then).
            await run_in_threadpool(
                store.record_issued,
                service.id,
                [IssuedCard(c["uuid"], c["indicator"], kind=facts.kind if facts else None,
                            evidence_at=facts.evidence_at if facts else None, rules_version=rules_version(),
                            patient_key=patient_key, user_key=user_key) for c in cards],
                issuer, tenant,
            )
        return _json({"cards": cards})

    @app.post("/cds-services/{service_id}/feedback", summary="Feedback on the cards (accepted, overridden)")
    async def feedback(service_id: str, request: Request) -> Response:
        service = service_for(service_id)
        log_fields(request)["service_id"] = service.id
        client = await authenticate(request)
        async with inflight.share() as share:
            body = await read_json_body(request, settings.feedback_max_body_bytes, share)
            try:
                # Off the event loop: even a body at the limit must not stall every other connection.
                parsed = await run_in_threadpool(parse_feedback, bytes(body), settings.feedback_max_items)
            except FeedbackTooLarge as exc:
                raise PayloadTooLarge(exc.message, expression=[exc.expression]) from None
            except FeedbackError as exc:
                raise BadRequest(exc.message, expression=[exc.expression]) from None
        result = await run_in_threadpool(
            store.record_feedback, service.id, parsed,
            client.issuer if client else None, client.tenant if client else None,
        )
        if result.refused:
            log_fields(request)["feedback_refused"] = len(result.refused)
        return Response(orjson.dumps(feedback_outcome(parsed, result)), media_type=FHIR_JSON_MEDIA_TYPE)

    def allow(methods: str) -> Callable[[], Awaitable[Response]]:
        async def options() -> Response:
            return Response(status_code=204, headers={"Allow": methods})
        return options

    app.add_api_route("/cds-services", allow("GET, OPTIONS"), methods=["OPTIONS"], include_in_schema=False)
    app.add_api_route("/cds-services/{service_id}", allow("POST, OPTIONS"), methods=["OPTIONS"],
                      include_in_schema=False)
    app.add_api_route("/cds-services/{service_id}/feedback", allow("POST, OPTIONS"), methods=["OPTIONS"],
                      include_in_schema=False)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Readiness: value sets loaded, feedback database reachable")
    async def readyz() -> Response:
        """Ready to answer hooks: the value sets are loaded and the feedback database answers."""
        problems = [] if all(terminology.value_set(vs) for vs in READY_VALUE_SETS) else ["value sets not loaded"]
        try:
            async with asyncio.timeout(settings.ready_timeout_seconds):
                await run_in_threadpool(store.ping)
        except Exception as exc:  # any failure means not ready; the type says which
            problems.append(f"feedback database unreachable ({type(exc).__name__})")
        if problems:
            return Response(orjson.dumps(operation_outcome([("error", "transient", p, None) for p in problems])),
                            status_code=503, media_type=FHIR_JSON_MEDIA_TYPE)
        return _json({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics, summed over all workers")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(InternalErrors)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_origin_regex=settings.cors_origin_regex,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        allow_credentials=False,  # the JWT travels in a header; never '*' with credentials
        max_age=600,
    )
    if verifier is None:
        app.add_middleware(LoopbackHostOnly, is_loopback=is_loopback)  # DNS-rebinding defence, open mode only
    app.add_middleware(AccessLog, metrics=metrics)
    app.openapi = openapi_document(app)  # type: ignore[method-assign]
    return app


def audiences_for(request: Request, settings: Settings) -> list[str]:
    """The URLs a client JWT's `aud` may name for this request: the URL invoked.

    The Host header is the client's to choose: trusted, it would let a token the EHR minted for another CDS
    service be replayed here. So: the configured public URL (behind a proxy), the URL of the socket the
    request actually arrived on, and the Host-derived URL only in development (no public URL, loopback Host).
    """
    path = request.url.path
    audiences = []
    if settings.public_base_url:
        audiences.append(settings.public_base_url.rstrip("/") + path)
    server = request.scope.get("server")
    scheme = request.url.scheme
    if server and server[1] is not None:
        host, port = server
        host = f"[{host}]" if ":" in host else host
        audiences.append(f"{scheme}://{host}:{port}{path}")
        if (scheme, port) in (("http", 80), ("https", 443)):
            audiences.append(f"{scheme}://{host}{path}")
    if not settings.public_base_url and is_loopback(request.url.hostname or ""):
        audiences.append(str(request.url.replace(query="")))
    return audiences


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers (each worker builds its own app from the environment).

    Workers are spawned processes: they inherit neither the parent's logging set-up nor its app."""
    from cds_hooks.server.allocator import keep_freed_memory
    from cds_hooks.server.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    keep_freed_memory()
    return create_app(settings)


def declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared and declared.isdigit() else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
