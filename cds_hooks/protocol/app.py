"""The HTTP app, assembled: runtime, routers, error handlers, middleware. Clinical logic lives in fhir_mapping
and cards; what a service does, in cds_hooks.services; what every route needs, in cds_hooks.protocol.dependencies.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from cds_hooks.protocol.dependencies import log_fields
from cds_hooks.protocol.errors import FHIR_JSON_MEDIA_TYPE, PreconditionFailed, ServiceError, Unauthorized, error_body
from cds_hooks.protocol.fhir_servers import is_loopback_host
from cds_hooks.protocol.openapi import openapi_document
from cds_hooks.protocol.routes import feedback, hooks, operations
from cds_hooks.protocol.runtime import Runtime, build_runtime
from cds_hooks.server.middleware import AccessLog, InternalErrors, LoopbackHostOnly
from cds_hooks.settings import Settings

API_DESCRIPTION = (
    "A CDS Hooks 2.0 service: breast-cancer history plus new spinal pain gives a warning card (suspected spinal "
    "metastases: MRI of the whole spine within a week) or a critical card (suspected spinal cord compression: "
    "within 24 h). `GET /cds-services` is discovery; `POST /cds-services/{id}` is the hook call. "
    "`GET /healthz` says the process is alive, `GET /readyz` that it can answer (value sets loaded, feedback "
    "database reachable), `GET /metrics` is Prometheus text (all workers)."
)
# The methods each path answers (OPTIONS answers them, and CORS preflights are answered before routing).
_ALLOWED = {"/cds-services": "GET, OPTIONS", "/cds-services/{service_id}": "POST, OPTIONS",
            "/cds-services/{service_id}/feedback": "POST, OPTIONS"}


def create_app(settings: Settings | None = None) -> FastAPI:
    rt = build_runtime(settings or Settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Long-lived objects from imports and start-up never need another GC pass (docs/performance-budget.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            rt.close()

    # /docs (Swagger UI) and /redoc with their scripts served from the installed fastapi-offline package, never
    # from a CDN: the documentation works on a machine with no internet access.
    app = FastAPIOffline(title="mscc-alert", version="0.1.0", lifespan=lifespan, docs_url="/docs",
                         redoc_url="/redoc", description=API_DESCRIPTION)
    app.state.runtime = rt
    for router in (hooks.router, feedback.router, operations.router):
        app.include_router(router)
    for path, methods in _ALLOWED.items():
        app.add_api_route(path, _allow(methods), methods=["OPTIONS"], include_in_schema=False)
    app.add_exception_handler(ServiceError, _service_error(rt))  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    _add_middleware(app, rt)
    app.openapi = openapi_document(app, rt.services)  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers (each worker builds its own app from the environment).

    Workers are spawned processes: they inherit neither the parent's logging set-up nor its app."""
    from cds_hooks.server.allocator import keep_freed_memory
    from cds_hooks.server.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    keep_freed_memory()
    return create_app(settings)


def _add_middleware(app: FastAPI, rt: Runtime) -> None:
    """Innermost first: internal errors become 500 OperationOutcomes inside CORS (so browsers can read them),
    and the access log, outermost, sees every answer."""
    settings = rt.settings
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
    if rt.verifier is None:
        app.add_middleware(LoopbackHostOnly, is_loopback=is_loopback_host)  # DNS-rebinding defence, open mode only
    app.add_middleware(AccessLog, metrics=rt.metrics)


def _outcome_response(error: ServiceError, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(error), status_code=error.status, media_type=FHIR_JSON_MEDIA_TYPE, headers=headers)


def _service_error(rt: Runtime) -> Callable[[Request, ServiceError], Awaitable[Response]]:
    async def service_error(request: Request, exc: ServiceError) -> Response:
        fields = log_fields(request)
        if isinstance(exc, PreconditionFailed):
            fields["reason"] = "precondition-failed"
            if exc.log_detail:
                fields["fetch_errors"] = exc.log_detail
            # The key names only: the reasons can carry the FHIR server's URLs, which hold patient ids.
            fields["failed_keys"] = ",".join(e.removeprefix("prefetch.") for e in exc.expression or [])
            if exc.fetch_failures:
                rt.metrics.fhir_fetches.labels("failed").inc(exc.fetch_failures)
        if isinstance(exc, Unauthorized):
            return _outcome_response(exc, headers={"WWW-Authenticate": "Bearer"})
        return _outcome_response(exc)
    return service_error


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    error = ServiceError(str(exc.detail))
    error.status = exc.status_code
    error.issue_code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
    if exc.status_code == 404:
        error.message = "No such endpoint; discovery is at GET /cds-services"
    elif exc.status_code == 405:
        error.message = f"Method {request.method} is not allowed here"
    return _outcome_response(error, headers=dict(exc.headers or {}))


def _allow(methods: str) -> Callable[[], Awaitable[Response]]:
    async def options() -> Response:
        return Response(status_code=204, headers={"Allow": methods})
    return options
