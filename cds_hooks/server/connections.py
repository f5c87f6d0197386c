"""Bounds on what one HTTP connection may hold: head size, head, body and idle deadlines, and a per-worker cap.

uvicorn enforces none of these on its httptools protocol: a header line may grow without limit (16 unterminated
128 MiB headers took a worker to 2.2 GiB), a connection that never sends a byte is never closed (its keep-alive
timer starts only after a first response), a body nobody reads (after a 401, 404 or 413) may trickle in forever,
and `limit_concurrency` answers 503 only once a request head arrives, so idle sockets still pile up until the
file limit and then every new connection waits. This subclass of uvicorn's httptools protocol adds:

- the request head (request line and headers) is bounded by `max_head_bytes`: over it, 431 and the connection
  closes. The raw bytes received while a head is incomplete are counted before the parser can buffer more, so a
  connection never holds more than the bound plus one socket read;
- a head must arrive whole within `head_seconds` of its first byte (else 408, closed);
- a connection with nothing in progress (before its first request too) is closed after `idle_seconds`;
- a body the application did not read must still arrive within `body_seconds` of its head, else the connection
  closes (bodies the application reads are timed by the application, which can answer 408 with an
  OperationOutcome and does not count time a request spends queued for memory, cds_hooks/server/inflight.py);
- at most `max_connections` per worker. A new connection beyond it first evicts the connection idle the longest,
  then the oldest one stuck in a partial head; if every connection has a request in progress, the new one is
  closed at once. So idle or half-open sockets cannot starve valid clients, and the file limit is never reached.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from cds_hooks.protocol.errors import FHIR_JSON_MEDIA_TYPE, operation_outcome

_log = logging.getLogger("mscc_alert.connections")

# File descriptors a worker keeps for itself beyond client connections: the database, FHIR-server and JWKS
# fetches, logs, the listening socket.
FD_RESERVE = 128


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 32 * 1024
    head_seconds: float = 10.0
    idle_seconds: float = 30.0
    body_seconds: float = 60.0
    max_connections: int = 1000


class LimitedConfig(Config):
    """uvicorn's Config plus our limits; pickled as a whole into each `--workers N` process."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (workers inherit it); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or (target != resource.RLIM_INFINITY and soft >= target):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def connection_cap(configured: int, file_limit: int) -> int:
    """The per-worker cap actually used: the setting, kept below the file limit."""
    return max(1, min(configured, file_limit - FD_RESERVE))


def _outcome_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = orjson.dumps(operation_outcome([("error", code, message, None)]))
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {FHIR_JSON_MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


_Phase = Literal["between", "head", "body"]


class _Peers:
    """This worker's open connections, and which of them may be evicted, oldest first."""

    def __init__(self) -> None:
        self.open: set[LimitedHttpToolsProtocol] = set()
        self.idle: dict[LimitedHttpToolsProtocol, None] = {}  # insertion order = idle since
        self.in_head: dict[LimitedHttpToolsProtocol, None] = {}
        self._last_warning = 0.0

    def admit(self, newcomer: LimitedHttpToolsProtocol, cap: int) -> bool:
        if len(self.open) >= cap:
            victim = next(iter(self.idle), None) or next(iter(self.in_head), None)
            if victim is None:
                self._warn("connection cap reached with every connection busy: refusing a new connection", cap)
                return False
            victim.evict()
        self.open.add(newcomer)
        return True

    def mark(self, protocol: LimitedHttpToolsProtocol, state: str | None) -> None:
        for name, group in (("idle", self.idle), ("head", self.in_head)):
            if name != state:
                group.pop(protocol, None)
            elif protocol not in group:
                group[protocol] = None

    def forget(self, protocol: LimitedHttpToolsProtocol) -> None:
        self.open.discard(protocol)
        self.mark(protocol, None)

    def _warn(self, message: str, cap: int) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:  # an attack must not flood the log
            self._last_warning = now
            _log.warning(message, extra={"max_connections": cap})


_peers = _Peers()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "limits", ConnectionLimits())
        self._phase: _Phase = "between"
        self._head_bytes = 0  # raw bytes received since the last message ended
        self._head_started = 0.0
        self._head_done = 0.0
        self._idle_since = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False

    # --- connection ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not _peers.admit(self, self.limits.max_connections):
            self._closed = True
            transport.abort()  # refused at once: the descriptor is freed now, not after a close handshake
            return
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        _peers.forget(self)
        self._set_timer(None)
        super().connection_lost(exc)

    def evict(self) -> None:
        self._closed = True
        _peers.forget(self)
        self._set_timer(None)
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(response)
        self.evict()

    # --- bytes in -----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._phase != "body":
            self._head_bytes += len(data)
        super().data_received(data)
        if self._closed or self.transport.is_closing():
            return
        if self._phase != "body" and self._head_bytes > self.limits.max_head_bytes:
            self._refuse_head()
            return
        self._update()

    def _refuse_head(self) -> None:
        self._refuse(_outcome_response(
            431, "Request Header Fields Too Large", "too-costly",
            f"The request line and headers are larger than the limit of {self.limits.max_head_bytes} bytes"))

    # --- parser callbacks (called from data_received) -------------------------------------------------
    def on_message_begin(self) -> None:
        if self._closed:
            return
        self._phase = "head"
        self._head_started = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._closed:
            return
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_head_bytes:
            self._refuse_head()
            return
        self._phase = "body"
        self._head_done = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._closed:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._closed:
            return
        self._phase = "between"
        self._head_bytes = 0
        self._idle_since = self.loop.time()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._idle_since = self.loop.time()
        if not self._closed and not self.transport.is_closing():
            self._update()

    # --- deadlines ----------------------------------------------------------------------------------
    def _busy(self) -> bool:
        """A response is being produced for this connection (the application owns the time then)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _update(self) -> None:
        limits = self.limits
        at: float | None = None
        state: str | None = None
        if self._phase == "head":
            at, state = self._head_started + limits.head_seconds, "head"
        elif self._phase == "body":
            if not self._busy():  # answered without reading the body: it still has to arrive, in time
                at = self._head_done + limits.body_seconds
        elif not self._busy():
            at, state = self._idle_since + limits.idle_seconds, "idle"
        _peers.mark(self, state if not self._busy() else None)
        self._set_timer(at)

    def _set_timer(self, at: float | None) -> None:
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = (None, None) if at is None else (self.loop.call_at(at, self._expired), at)

    def _expired(self) -> None:
        self._timer, self._timer_at = None, None
        if self._closed or self.transport.is_closing():
            return
        if self._phase == "head":
            self._refuse(_outcome_response(
                408, "Request Timeout", "timeout",
                f"The request line and headers did not arrive within {self.limits.head_seconds:g} seconds"))
        else:
            self.evict()
