"""The HTTP app: decode, dispatch, encode. Clinical logic lives in fhir_mapping and cards."""

from __future__ import annotations

import gc
import ipaddress
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cds_hooks.errors import (
    FHIR_JSON_MEDIA_TYPE,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
    operation_outcome,
)
from cds_hooks.feedback import (
    FeedbackError,
    FeedbackRequest,
    FeedbackStore,
    IssuedCard,
    MemoryFeedbackStore,
    parse_feedback,
)
from cds_hooks.fhir_client import FetchLimits
from cds_hooks.hook_request import HookRequest, decode_hook_request
from cds_hooks.metrics import Metrics
from cds_hooks.patient_view import PatientViewService
from cds_hooks.security import AuthenticationError, JwksCache, JwtVerifier, VerifiedClient
from cds_hooks.security.jwks import SANDBOX_ISSUER, SANDBOX_JWKS_URL, sandbox_jwks
from cds_hooks.security.jwt_auth import ReplayCache
from cds_hooks.settings import Settings
from fhir_mapping.terminology import load_terminology

_log = logging.getLogger("mscc_alert.http")
_JSON_TYPES = ("application/json", "application/fhir+json")
ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


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
    issuers = dict(settings.trusted_issuers)
    cache = JwksCache()
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
    from cds_hooks.feedback_db import SqlFeedbackStore, default_database_url

    return SqlFeedbackStore(settings.database_url or default_database_url())


class AccessLog:
    """One PHI-free log line and the metrics for every request (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        fields: dict[str, Any] = {}
        scope.setdefault("state", {})["log"] = fields
        status = 500

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(route_path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route_path).observe(elapsed)
            if route_path not in ("/healthz", "/metrics"):
                _log.info("request", extra={"route": route_path, "method": scope["method"], "status": status,
                                            "latency_ms": round(elapsed * 1000, 2), **fields})


class InternalErrors:
    """An unexpected exception becomes a 500 OperationOutcome, never an empty card list.

    Starlette's own catch-all runs outside every middleware, so its 500 would lack the CORS headers a browser
    client needs to read it; this sits inside the CORS middleware instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else "unknown"
            fields = scope.get("state", {}).get("log", {})
            # Exception messages can quote resource content: log the type and the place only.
            _log.error("internal error", extra={**fields, "error_type": type(exc).__name__, "reason": where})
            if started:
                raise
            body = orjson.dumps(operation_outcome([(
                "fatal", "exception", "Internal error: the request was not evaluated. No conclusion about the "
                "patient can be drawn from this response.", None)]))
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", FHIR_JSON_MEDIA_TYPE.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    terminology = load_terminology()
    service = PatientViewService(
        terminology,
        settings.policy(),
        FetchLimits(connect_timeout=settings.fhir_connect_timeout, read_timeout=settings.fhir_read_timeout,
                    max_pages=settings.fhir_max_pages, total_seconds=settings.fhir_total_seconds,
                    max_bytes=settings.max_body_bytes),
    )
    services = {service.id: service}
    store = open_feedback_store(settings)
    verifier = build_verifier(settings, store.replay_cache())
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Long-lived objects from imports and start-up never need another GC pass (performance.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            store.close()

    app = FastAPI(title="mscc-alert", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.services = services

    def log_fields(request: Request) -> dict[str, Any]:
        fields: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("log", {})
        return fields

    def authenticate(request: Request) -> VerifiedClient | None:
        if verifier is None:
            return None
        try:
            client = verifier.verify(request.headers.get("authorization"), audiences_for(request, settings))
        except AuthenticationError as exc:
            log_fields(request)["reason"] = f"auth: {exc}"
            raise Unauthorized() from None
        log_fields(request).update(issuer=client.issuer, tenant=client.tenant, jti=client.jti)
        return client

    async def read_json_body(request: Request) -> bytearray:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _JSON_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type must be application/json (got {content_type or 'none'})")
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        expected = int(declared) if declared and declared.isdigit() else None
        if expected is not None and expected > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
        # One buffer, filled in place: the body is held once, never as chunks plus a joined copy.
        body = bytearray(expected) if expected is not None else bytearray()
        size = 0
        async for chunk in request.stream():
            if size + len(chunk) > limit:
                raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
            if expected is not None and size + len(chunk) <= expected:
                body[size:size + len(chunk)] = chunk
            else:
                body[size:] = chunk
            size += len(chunk)
        del body[size:]  # a body shorter than declared (the server rejects longer ones)
        return body

    def service_for(service_id: str) -> PatientViewService:
        found = services.get(service_id)
        if found is None:
            raise NotFound("Unknown CDS service id; GET /cds-services lists the services")
        return found

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        if isinstance(exc, PreconditionFailed):
            log_fields(request)["reason"] = "precondition-failed"
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

    @app.get("/cds-services")
    async def discovery(request: Request) -> Response:
        authenticate(request)
        return _json({"services": [s.discovery() for s in services.values()]})

    @app.post("/cds-services/{service_id}")
    async def call_service(service_id: str, request: Request) -> Response:
        service = service_for(service_id)
        fields = log_fields(request)
        fields["service_id"] = service.id
        client = authenticate(request)
        body = await read_json_body(request)
        hook_request = decode_hook_request(body, service.hook)
        fields["hook_instance"] = hook_request.hookInstance
        undeclared = sorted(k for k in hook_request.prefetch or {} if k not in service.templates)
        if undeclared:
            fields["undeclared_keys"] = ",".join(undeclared)
        outcome = await run_in_threadpool(service.evaluate, hook_request)
        evaluation, gathered = outcome.evaluation, outcome.gathered
        cards = evaluation.cards
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
            store.record_issued(
                service.id, [IssuedCard(c["uuid"], c["indicator"]) for c in cards],
                client.issuer if client else None, client.tenant if client else None,
            )
        return _json({"cards": cards})

    @app.post("/cds-services/{service_id}/feedback")
    async def feedback(service_id: str, request: Request) -> Response:
        service = service_for(service_id)
        log_fields(request)["service_id"] = service.id
        client = authenticate(request)
        body = await read_json_body(request)
        try:
            parsed = parse_feedback(bytes(body))  # small: a copy is cheaper than a second API
        except FeedbackError as exc:
            raise BadRequest(exc.message, expression=[exc.expression]) from None
        stored = await run_in_threadpool(
            store.record_feedback, service.id, parsed,
            client.issuer if client else None, client.tenant if client else None,
        )
        message = f"Feedback received: {len(parsed.feedback)} item(s), {stored} new"
        return Response(orjson.dumps(operation_outcome([("information", "informational", message, None)])),
                        media_type=FHIR_JSON_MEDIA_TYPE)

    def allow(methods: str) -> Callable[[], Awaitable[Response]]:
        async def options() -> Response:
            return Response(status_code=204, headers={"Allow": methods})
        return options

    app.add_api_route("/cds-services", allow("GET, OPTIONS"), methods=["OPTIONS"], include_in_schema=False)
    app.add_api_route("/cds-services/{service_id}", allow("POST, OPTIONS"), methods=["OPTIONS"],
                      include_in_schema=False)
    app.add_api_route("/cds-services/{service_id}/feedback", allow("POST, OPTIONS"), methods=["OPTIONS"],
                      include_in_schema=False)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
    app.add_middleware(AccessLog, metrics=metrics)
    app.openapi = _openapi_document(app)  # type: ignore[method-assign]
    return app


_OPERATION_OUTCOME_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["severity", "code"],
            "properties": {"severity": {"type": "string"}, "code": {"type": "string"},
                           "diagnostics": {"type": "string"},
                           "expression": {"type": "array", "items": {"type": "string"}}}}},
    },
}
_CARD_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["uuid", "summary", "indicator", "source"],
    "properties": {
        "uuid": {"type": "string"}, "summary": {"type": "string", "maxLength": 139},
        "detail": {"type": "string"}, "indicator": {"type": "string", "enum": ["info", "warning", "critical"]},
        "source": {"type": "object", "required": ["label"]},
        "suggestions": {"type": "array", "items": {"type": "object", "required": ["label"]}},
        "selectionBehavior": {"type": "string", "enum": ["at-most-one", "any"]},
        "overrideReasons": {"type": "array", "items": {"type": "object", "required": ["code", "system", "display"]}},
        "links": {"type": "array", "items": {"type": "object", "required": ["label", "url", "type"]}},
    },
}
_ERRORS = {
    "400": "Malformed request", "401": "No valid client JWT", "404": "Unknown service", "413": "Body too large",
    "415": "Not JSON", "500": "Internal error: the request was not evaluated",
}


def _json_answer(description: str, schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _openapi_document(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The document says what the service really takes and answers. The hook and feedback routes read raw
    bytes (the fast path), so their bodies are described from the models that decode them; every error is
    an OperationOutcome (application/fhir+json); FastAPI's 422 is never sent."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        template = "#/components/schemas/{name}"
        (hook_ref,), components = msgspec.json.schema_components([HookRequest], ref_template=template)
        feedback = FeedbackRequest.model_json_schema(ref_template=template.replace("{name}", "{model}"))
        components.update(feedback.pop("$defs", {}))
        components["FeedbackRequest"] = feedback
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas.update(components)

        def errors(*codes: str) -> dict[str, Any]:
            return {c: _json_answer(_ERRORS[c], _OPERATION_OUTCOME_SCHEMA, FHIR_JSON_MEDIA_TYPE) for c in codes}

        paths = schema["paths"]
        hook = paths["/cds-services/{service_id}"]["post"]
        feedback_path = paths["/cds-services/{service_id}/feedback"]["post"]
        hook["requestBody"] = {"required": True, "content": {"application/json": {"schema": hook_ref}}}
        hook["responses"] = {
            "200": _json_answer("CDS Hooks response", {"type": "object", "required": ["cards"], "properties": {
                "cards": {"type": "array", "items": _CARD_SCHEMA}}}),
            "412": _json_answer("Data the rules need could not be obtained", _OPERATION_OUTCOME_SCHEMA,
                                FHIR_JSON_MEDIA_TYPE),
            **errors("400", "401", "404", "413", "415", "500"),
        }
        feedback_path["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": template.format(name="FeedbackRequest")}}}}
        feedback_path["responses"] = {
            "200": _json_answer("Feedback recorded", _OPERATION_OUTCOME_SCHEMA, FHIR_JSON_MEDIA_TYPE),
            **errors("400", "401", "404", "413", "415", "500"),
        }
        paths["/cds-services"]["get"]["responses"] = {
            "200": _json_answer("Discovery", {"type": "object", "required": ["services"], "properties": {
                "services": {"type": "array", "items": {"type": "object",
                                                        "required": ["hook", "description", "id"]}}}}),
            **errors("401", "500"),
        }
        paths["/metrics"]["get"]["responses"] = {
            "200": {"description": "Prometheus metrics",
                    "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        }
        paths["/healthz"]["get"]["responses"] = {
            "200": _json_answer("Alive", {"type": "object", "properties": {"status": {"type": "string"}}})
        }
        app.openapi_schema = schema
        return schema

    return openapi


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
    from cds_hooks.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
