"""Hostile clients against `mscc-alert serve` on loopback, over raw sockets: oversized and slow heads, idle and
half-open connections, trickling bodies, connection floods, oversized feedback and a foreign Host in open mode.

Small limits (a cap of 50 connections, one-second deadlines) keep each test to seconds; every loop is bounded
in count and in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from tests.conftest import LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb

pytestmark = pytest.mark.e2e

SERVICE = "/cds-services/breast-cancer-back-pain"
FEEDBACK = SERVICE + "/feedback"
MiB = 1024 * 1024


def settings_env(**settings: str) -> dict[str, str]:
    env = {"MSCC_ALERT_AUTH": "off", "MSCC_ALERT_LOG_FORMAT": "json"}
    env.update({f"MSCC_ALERT_{name.upper()}": value for name, value in settings.items()})
    return env


@contextlib.contextmanager
def serve(tmp_path: Path, **settings: str) -> Iterator[LiveService]:
    service = start_live_service(tmp_path, settings_env(**settings))
    try:
        yield service
    finally:
        stop_live_service(service)


def port_of(service: LiveService) -> int:
    return int(service.base_url.rsplit(":", 1)[1])


def connect(service: LiveService) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(service)), timeout=10)


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (or `seconds` pass), and when it closed."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def read_response(sock: socket.socket, seconds: float) -> bytes:
    """One whole response with a Content-Length (what the server sends before anything else)."""
    started = time.monotonic()
    received = b""
    sock.settimeout(seconds)
    while time.monotonic() - started < seconds:
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:"))
            if len(body) >= length:
                return received
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (after whatever it sent before closing)."""
    sock.settimeout(0)
    for _ in range(1000):
        try:
            if sock.recv(65536) == b"":
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True
    return False


def outcome(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/fhir+json" in head.lower(), head
    parsed: dict[str, object] = json.loads(body)
    assert parsed["resourceType"] == "OperationOutcome"
    return parsed


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def hook_body() -> bytes:
    return orjson.dumps(fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(fb.BREAST_CANCER_SNOMED),
                                                                  fb.back_pain()]))


def call_hook(service: LiveService, body: bytes, timeout: float = 30) -> requests.Response:
    return requests.post(service.url(SERVICE), data=body, timeout=timeout, headers={"Content-Type": "application/json"})


# --- request heads ---------------------------------------------------------------------------------------------


def test_an_oversized_head_gets_431_and_unterminated_heads_cost_no_memory(tmp_path: Path) -> None:
    with serve(tmp_path) as service:
        with connect(service) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (40 * 1024) + b"\r\n\r\n")
            answer, _ = read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert outcome(answer)["issue"][0]["code"] == "too-costly"  # type: ignore[index]
        # Just under the bound is served.
        ok = requests.get(service.url("/healthz"), headers={"X-Big": "a" * (30 * 1024)}, timeout=10)
        assert ok.status_code == 200

        before = rss_bytes(service.process.pid)
        chunk = b"b" * MiB
        socks = [connect(service) for _ in range(16)]
        sent = [0] * len(socks)
        for i, sock in enumerate(socks):  # each one unterminated header line, up to 16 MiB, until the server closes
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            with contextlib.suppress(OSError):
                for _ in range(16):
                    sock.sendall(chunk)
                    sent[i] += len(chunk)
        grown = rss_bytes(service.process.pid) - before
        closed = sum(is_closed(sock) for sock in socks)
        for sock in socks:
            sock.close()
        assert requests.get(service.url("/healthz"), timeout=10).status_code == 200
    assert closed == 16, "every connection with an oversized head is closed"
    assert all(s < 16 * MiB for s in sent), "the server stopped reading each one long before 16 MiB"
    assert grown < 40 * MiB, f"16 unterminated heads grew the worker by {grown / MiB:.0f} MiB"


def assert_408_after_a_second(service: LiveService, start_of_request: bytes) -> None:
    """Send the start of a request and no more: a 408 OperationOutcome comes at the (1 s) deadline."""
    with connect(service) as sock:
        sock.sendall(start_of_request)
        answer, waited = read_until_closed(sock, 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert outcome(answer)["issue"][0]["code"] == "timeout"  # type: ignore[index]
    assert 0.8 < waited < 4, waited


def test_a_head_that_does_not_arrive_in_time_gets_408(tmp_path: Path) -> None:
    with serve(tmp_path, head_read_seconds="1") as service:
        assert_408_after_a_second(service, b"GET /healthz HTTP/1.1\r\nHo")
        # A byte now and then does not extend the deadline.
        with connect(service) as trickle:
            trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            with contextlib.suppress(OSError):
                for _ in range(40):
                    if is_closed(trickle):
                        break
                    trickle.sendall(b"X")
                    time.sleep(0.1)
            assert time.monotonic() - started < 3.5


def test_idle_connections_are_closed_before_and_after_a_first_request(tmp_path: Path) -> None:
    with serve(tmp_path, keep_alive_seconds="1") as service:
        with connect(service) as silent:
            answer, waited = read_until_closed(silent, 10)
        assert answer == b"" and 0.8 < waited < 4, (answer, waited)
        with connect(service) as used:
            used.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer, waited = read_until_closed(used, 10)
        assert answer.startswith(b"HTTP/1.1 200 ") and 0.8 < waited < 4, (answer, waited)
        # Keep-alive still works within the idle time.
        with requests.Session() as session:
            assert [session.get(service.url("/healthz"), timeout=10).status_code for _ in range(3)] == [200] * 3


# --- bodies ------------------------------------------------------------------------------------------------------


def test_a_trickling_feedback_body_gets_408_within_its_deadline(tmp_path: Path) -> None:
    with serve(tmp_path, body_read_seconds="1") as service:
        assert_408_after_a_second(service, f"POST {FEEDBACK} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                           "application/json\r\nContent-Length: 500\r\n\r\n{\"feedback\": [".encode())
        # A body nobody reads (unknown route: 404 at once) must still arrive in time, or the connection closes.
        with connect(service) as unread:
            unread.sendall(b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\nxx")
            answer, waited = read_until_closed(unread, 10)
        assert answer.startswith(b"HTTP/1.1 404 ") and 0.8 < waited < 4, (answer[:50], waited)


def test_four_trickling_128_mib_hook_bodies_do_not_hold_the_budget(tmp_path: Path) -> None:
    """Defaults: 128 MiB body limit, 512 MiB budget. Four clients declare the limit and send almost nothing."""
    body = hook_body()
    with serve(tmp_path) as service:
        assert call_hook(service, body).status_code == 200
        before = rss_bytes(service.process.pid)
        tricklers = [connect(service) for _ in range(4)]
        for sock in tricklers:
            sock.sendall(f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {128 * MiB}\r\n\r\n{{".encode())
        time.sleep(0.5)
        for sock in tricklers:
            sock.sendall(b" ")
        started = time.monotonic()
        answer = call_hook(service, body)
        waited = time.monotonic() - started
        grown = rss_bytes(service.process.pid) - before
        assert all(not is_closed(sock) for sock in tricklers), "the tricklers are still being read"
        for sock in tricklers:
            sock.close()
    assert answer.status_code == 200 and answer.json()["cards"][0]["indicator"] == "warning"
    assert waited < 2, f"a valid call waited {waited:.2f} s behind four trickling bodies"
    assert grown < 64 * MiB, f"four declared-but-unsent bodies grew the worker by {grown / MiB:.0f} MiB"


def test_a_50_mb_feedback_post_gets_413_at_once_and_does_not_delay_others(tmp_path: Path) -> None:
    body = hook_body()
    with serve(tmp_path) as service:
        assert call_hook(service, body).status_code == 200
        results: dict[str, object] = {}

        def upload(chunked: bool) -> None:
            piece = b'{"feedback": [' + b'{"card": "x", "outcome": "accepted"}, ' * 27_000  # ~1 MB
            if chunked:
                piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            with connect(service) as sock:
                framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {50_000_000}"
                started = time.monotonic()
                sock.sendall(f"POST {FEEDBACK} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             f"{framing}\r\n\r\n".encode() + piece + piece)
                results[f"answer-{chunked}"] = read_response(sock, 10)
                results[f"seconds-{chunked}"] = time.monotonic() - started
                with contextlib.suppress(OSError):
                    for _ in range(48):  # the rest of ~50 MB, for as long as the server reads it
                        sock.sendall(piece)

        latencies = []
        for chunked in (False, True):
            uploader = threading.Thread(target=upload, args=(chunked,))
            uploader.start()
            deadline = time.monotonic() + 30
            while uploader.is_alive() and time.monotonic() < deadline:
                started = time.monotonic()
                assert call_hook(service, body).status_code == 200
                latencies.append(time.monotonic() - started)
            uploader.join(30)
    for chunked in (False, True):
        answer = results.get(f"answer-{chunked}", b"")
        assert isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 413 "), answer[:100]
        assert outcome(answer)["issue"][0]["code"] == "too-costly"  # type: ignore[index]
        assert results[f"seconds-{chunked}"] < 2  # type: ignore[operator]
    assert latencies and max(latencies) < 1.0, latencies


def test_feedback_with_more_items_than_allowed_gets_413_naming_the_field(tmp_path: Path) -> None:
    item = {"card": "4c1f6e3a-0d1b-4c6e-9a55-2b9d0b6b1c11", "outcome": "overridden",
            "outcomeTimestamp": "2026-01-01T10:00:00Z"}
    with serve(tmp_path, feedback_max_items="3") as service:
        many = requests.post(service.url(FEEDBACK), json={"feedback": [item] * 4}, timeout=10)
        few = requests.post(service.url(FEEDBACK), json={"feedback": [item] * 3}, timeout=10)
    assert many.status_code == 413, many.text
    assert many.json()["issue"][0]["expression"] == ["feedback"]
    assert few.status_code == 200, few.text


# --- connection cap ------------------------------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_more_idle_connections_than_the_cap_do_not_starve_a_valid_call(tmp_path: Path) -> None:
    body = hook_body()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # serve inherits a low soft limit
    try:
        service = start_live_service(tmp_path, settings_env(max_connections="50"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{service.process.pid}/limits").read_text()
        baseline = open_fds(service.process.pid)
        idle = [connect(service) for _ in range(60)]
        half_open = []
        for _ in range(60):
            sock = connect(service)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 12")
            half_open.append(sock)
        time.sleep(0.5)
        fds = open_fds(service.process.pid)
        started = time.monotonic()
        answer = call_hook(service, body, timeout=10)
        waited = time.monotonic() - started
        for sock in idle + half_open:
            sock.close()
    finally:
        stop_live_service(service)
    assert answer.status_code == 200 and answer.json()["cards"][0]["indicator"] == "warning"
    assert waited < 1.5, f"a valid call waited {waited:.2f} s behind 120 idle and half-open connections"
    assert fds - baseline <= 50, f"the worker holds {fds - baseline} more descriptors than at rest, cap 50"
    served_soft, served_hard = next(line.split()[3:5] for line in limits.splitlines()
                                    if line.startswith("Max open files"))
    assert served_soft == served_hard, "serve raises the soft file limit to the hard one"


def test_the_cap_stays_below_the_file_limit() -> None:
    from cds_hooks.server.connections import FD_RESERVE, connection_cap

    assert connection_cap(1000, 1_048_576) == 1000
    assert connection_cap(1000, 1024) == 1024 - FD_RESERVE


def test_when_every_connection_is_busy_a_new_one_is_closed_at_once(tmp_path: Path) -> None:
    with serve(tmp_path, max_connections="20", body_read_seconds="20") as service:
        busy = []
        for _ in range(20):  # each one a hook body the service is reading: busy, not evictable
            sock = connect(service)
            sock.sendall(f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         "Content-Length: 1000\r\n\r\n{".encode())
            busy.append(sock)
        time.sleep(0.5)
        with connect(service) as newcomer:
            newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer, waited = read_until_closed(newcomer, 10)
        still_open = sum(not is_closed(sock) for sock in busy)
        for sock in busy:
            sock.close()
        time.sleep(0.3)
        after = requests.get(service.url("/healthz"), timeout=10)
    assert answer == b"" and waited < 1, (answer[:50], waited)
    assert still_open == 20
    assert after.status_code == 200, "once the busy connections are gone, new ones are served"


# --- open mode ------------------------------------------------------------------------------------------------------


def test_open_mode_serves_only_loopback_host_names(tmp_path: Path) -> None:
    port = None
    with serve(tmp_path) as service:
        port = port_of(service)
        answers = {host: requests.get(service.url("/cds-services"), headers={"Host": host}, timeout=10)
                   for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}",
                                f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST")}
        with connect(service) as sock:  # no Host at all (HTTP/1.0)
            sock.sendall(b"GET /cds-services HTTP/1.0\r\n\r\n")
            no_host, _ = read_until_closed(sock, 10)
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        assert answers[host].status_code == 421, host
        assert answers[host].json()["issue"][0]["expression"] == ["Host"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
        assert answers[host].status_code == 200, host
    assert no_host.startswith(b"HTTP/1.1 421 "), no_host[:60]
