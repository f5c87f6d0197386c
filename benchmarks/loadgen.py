"""A bounded keep-alive HTTP/1.1 load generator for loopback, run as its own process.

    python -m benchmarks.loadgen --port P --path /cds-services/ID --body FILE --connections C \
        --requests N --seconds T [--warmup W] [--expect TEXT]

It runs in a separate process so it never shares the server's (or the orchestrator's) GIL. Each connection is
one thread with one socket that stays open (keep-alive) and sends the whole request with a single `sendall`;
TCP_NODELAY is set on the client side, so any 40 ms delayed-ACK stall measured comes from the server. The run
stops after N measured requests in all or T seconds, whichever comes first; `--warmup` requests per connection
are sent first and not measured. Latency is from the first byte sent to the last byte of the response read.
Prints one JSON object: latencies in ms, count, elapsed seconds, requests/s, and any failures.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Connection:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, read one response (Content-Length framing, as the service answers)."""
        self.sock.sendall(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        if "content-length" not in headers:
            raise ConnectionError(f"no Content-Length in the response (status {status})")
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        if headers.get("connection", "").lower() == "close":
            raise ConnectionError("server asked to close the connection: not keep-alive")
        return status, body


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


def run(host: str, port: int, request: bytes, connections: int, max_requests: int, max_seconds: float,
        warmup: int, expect: bytes | None, timeout: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(connections + 1)
    go = threading.Event()  # set once the deadline is: nobody reads it before
    state = {"issued": 0, "deadline": 0.0}

    def worker() -> None:
        conn: Connection | None = None
        try:
            conn = Connection(host, port, timeout)
            for _ in range(warmup):
                conn.exchange(request)
        except (OSError, ConnectionError, ValueError) as exc:
            with lock:
                failures.append(f"warm-up: {type(exc).__name__}: {exc}")
        ready.wait()
        go.wait()
        if conn is None:
            return
        try:
            while True:
                with lock:
                    if state["issued"] >= max_requests or time.perf_counter() >= state["deadline"]:
                        return
                    state["issued"] += 1
                t0 = time.perf_counter()
                status, body = conn.exchange(request)
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    if status != 200:
                        failures.append(f"status {status}")
                    elif expect is not None and expect not in body:
                        failures.append("response without the expected card")
                    else:
                        latencies.append(elapsed)
        except (OSError, ConnectionError, ValueError) as exc:
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    state["deadline"] = start + max_seconds
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return {
        "connections": connections,
        "count": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "latencies_ms": latencies,
        "failures": failures[:20],
        "failure_count": len(failures),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--requests", type=int, required=True, help="stop after this many measured requests")
    parser.add_argument("--seconds", type=float, required=True, help="stop after this long")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured requests per connection first")
    parser.add_argument("--expect", help="text every response body must contain")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout per operation")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK:
        parser.error("loopback only: this is a benchmark, not a load test of someone else's server")
    request = build_request(args.host, args.port, args.path, Path(args.body).read_bytes())
    result = run(args.host, args.port, request, args.connections, args.requests, args.seconds, args.warmup,
                 args.expect.encode() if args.expect else None, args.timeout)
    sys.stdout.buffer.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
