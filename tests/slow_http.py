"""A loopback HTTP server that answers slowly on purpose: it drips its answer a byte at a time.

`DripServer(mode="headers")` drips an endless status line and headers; `mode="body"` sends its headers at
once and drips a body it never finishes. Each byte comes well within any per-read timeout, so only a total
deadline ends the client's wait. The server counts requests and notices when a client hangs up.
Bounded: every connection stops after `max_seconds` whatever the client does.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Literal


class DripServer:
    def __init__(
        self,
        mode: Literal["headers", "body"] = "headers",
        interval: float = 0.1,
        max_seconds: float = 60.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.mode = mode
        self.tls = tls
        self.interval = interval
        self.max_seconds = max_seconds
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.requests = 0
        self.hung_up: list[float] = []  # seconds each client stayed before it closed the connection
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="drip-accept", daemon=True)
        self._acceptor.start()

    def url(self, path: str = "/jwks.json") -> str:
        # TLS: the name the test certificate is for.
        return f"https://localhost:{self.port}{path}" if self.tls else f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), name="drip-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        started = time.monotonic()
        connection.settimeout(5)
        if self.tls is not None:
            try:
                connection = self.tls.wrap_socket(connection, server_side=True)
            except OSError:
                connection.close()
                return
        with connection:
            try:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = connection.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                with self._lock:
                    self.requests += 1
                if self.mode == "body":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 100000\r\n\r\n")
                    payload = b'{"keys": [' + b" " * 200_000
                else:
                    payload = b"HTTP/1.1 200 OK\r\n" + b"X-Drip: " + b"a" * 200_000
                for byte in payload:
                    if self._stop.is_set() or time.monotonic() - started > self.max_seconds:
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(self.interval)
            except OSError:  # the client hung up: what a total deadline must make it do
                with self._lock:
                    self.hung_up.append(time.monotonic() - started)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> DripServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
