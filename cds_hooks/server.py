"""Run uvicorn with a listening socket we create ourselves.

uvicorn's own socket for `--workers N` is made without IPPROTO_TCP, so asyncio never sets TCP_NODELAY
on accepted connections and every keep-alive request after the first waits ~44 ms for delayed ACKs
(uvicorn issue #3149; docs/performance-budget.md). A socket created with proto=IPPROTO_TCP avoids it, for one
worker or many.
"""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(host: str, port: int, workers: int, sock: socket.socket | None = None) -> None:
    """Serve on `sock` if given (the CLI binds first, to report a busy port in one line), else bind host:port."""
    config = uvicorn.Config(
        "cds_hooks.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
        log_config=None, access_log=False, server_header=False, timeout_keep_alive=30,
    )
    sock = sock or listening_socket(host, port)
    server = uvicorn.Server(config)
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        server.run(sockets=[sock])
