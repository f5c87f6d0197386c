"""Run uvicorn with a listening socket we create ourselves.

uvicorn's own socket for `--workers N` is made without IPPROTO_TCP, so asyncio never sets TCP_NODELAY
on accepted connections and every keep-alive request after the first waits ~44 ms for delayed ACKs
(uvicorn issue #3149; docs/performance-budget.md). A socket created with proto=IPPROTO_TCP avoids it, for one
worker or many.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from cds_hooks.server.connections import (
    ConnectionLimits,
    LimitedConfig,
    LimitedHttpToolsProtocol,
    connection_cap,
    raise_file_limit,
)
from cds_hooks.settings import Settings

_log = logging.getLogger("mscc_alert")


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The limits of cds_hooks/server/connections.py, with the cap kept below the (raised) file limit."""
    file_limit = raise_file_limit()
    cap = connection_cap(settings.max_connections, file_limit)
    if cap < settings.max_connections:
        _log.warning("MSCC_ALERT_MAX_CONNECTIONS lowered to stay below the file limit",
                     extra={"max_connections": cap, "file_limit": file_limit})
    return ConnectionLimits(
        max_head_bytes=settings.max_head_bytes, head_seconds=settings.head_read_seconds,
        idle_seconds=settings.keep_alive_seconds, body_seconds=settings.body_read_seconds, max_connections=cap,
    )


def serve(host: str, port: int, workers: int, settings: Settings, sock: socket.socket | None = None) -> None:
    """Serve on `sock` if given (the CLI binds first, to report a busy port in one line), else bind host:port."""
    # ws="none": a WebSocket upgrade would hand the connection to a protocol outside these limits, and the
    # service has no WebSocket route.
    config = LimitedConfig(
        "cds_hooks.protocol.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
        log_config=None, access_log=False, server_header=False, http=LimitedHttpToolsProtocol, ws="none",
        timeout_keep_alive=max(1, round(settings.keep_alive_seconds)), limits=connection_limits(settings),
    )
    sock = sock or listening_socket(host, port)
    server = uvicorn.Server(config)
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        server.run(sockets=[sock])
