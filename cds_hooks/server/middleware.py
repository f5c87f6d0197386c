"""ASGI middleware: one PHI-free log line and metrics per request; unexpected exceptions as a 500
OperationOutcome. Pure ASGI, so the body is never buffered on the way."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from cds_hooks.protocol.errors import FHIR_JSON_MEDIA_TYPE, operation_outcome
from cds_hooks.server.metrics import Metrics

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


class LoopbackHostOnly:
    """Open mode (no trusted issuers): a request that reached a loopback socket is served only if its `Host`
    names loopback (`localhost`, 127.0.0.0/8, `[::1]`), else 421.

    The defence against DNS rebinding: a web page on evil.example can point its own name at 127.0.0.1 and then
    call the open service "same-origin" from any browser on this machine, reading cards and metrics. Its
    requests still say `Host: evil.example`, which no client of a loopback service has reason to send.
    """

    def __init__(self, app: ASGIApp, is_loopback: Callable[[str], bool]) -> None:
        self.app = app
        self.is_loopback = is_loopback

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        server = scope.get("server")
        if scope["type"] != "http" or not server or not self.is_loopback(str(server[0])):
            await self.app(scope, receive, send)
            return
        host = next((value for name, value in scope["headers"] if name == b"host"), b"")
        if self.is_loopback(_host_name(host.decode("latin-1"))):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {}).setdefault("log", {})["reason"] = "foreign Host in open mode"
        body = orjson.dumps(operation_outcome([(
            "error", "forbidden", "This service runs without authentication and answers only requests addressed "
            "to a loopback name (Host: localhost, 127.0.0.1 or [::1])", ["Host"])]))
        await send({"type": "http.response.start", "status": 421,
                    "headers": [(b"content-type", FHIR_JSON_MEDIA_TYPE.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _host_name(host: str) -> str:
    """The name in a Host header value: `[::1]:8000` -> `::1`, `localhost.:80` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name if rest in ("", ":") or (rest[:1] == ":" and rest[1:].isdigit()) else ""
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    if port and not port.isdigit():
        return ""
    return name.rstrip(".")
