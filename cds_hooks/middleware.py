"""ASGI middleware: one PHI-free log line and metrics per request; unexpected exceptions as a 500
OperationOutcome. Pure ASGI, so the body is never buffered on the way."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from cds_hooks.errors import FHIR_JSON_MEDIA_TYPE, operation_outcome
from cds_hooks.metrics import Metrics

_log = logging.getLogger("mscc_alert.http")
ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


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
