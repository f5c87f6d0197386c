"""Hostile FHIR servers against the running service (`mscc-alert serve` on loopback): a 100 MiB answer, a
trickling answer, slow answers, refused connections, and FHIR servers a client may not name.

The FHIR servers here are small threaded HTTP servers on loopback (`HostileFhir`) that answer every request
the same way. What the service promises, and each test checks:
- a call stops at its byte budget (MSCC_ALERT_FHIR_MAX_BYTES, all keys and pages together) with a 412, and the
  worker's peak RSS grows by no more than about twice that budget;
- a call ends within its time budget (MSCC_ALERT_FHIR_TOTAL_SECONDS), however the server drips;
- calls stuck on a slow FHIR server never make a call whose prefetch is complete wait;
- whatever went wrong, the client reads the same "could not be fetched" (no status, timeout or refusal);
- a fhirServer outside the client's list is never contacted.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_httpserver import HTTPServer

from tests.conftest import SERVICE_ID, LiveService, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb
from tests.test_auth_e2e import ISSUER, JWKS_PATH, Signer

pytestmark = pytest.mark.e2e

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
MIB = 1024 * 1024
BUDGET = 32 * MIB  # the default MSCC_ALERT_FHIR_MAX_BYTES
TOTAL_SECONDS = 4.0
JSON = Any


class HostileFhir:
    """A FHIR server on loopback that answers every GET with `mode`:

    huge     a searchset Bundle of `size` bytes of vital-sign Observations, without a Content-Length
    trickle  a Patient, one byte every `interval` seconds (each byte well within any read timeout)
    trickle-head  the status line and headers, one byte every `interval` seconds
    slow     an empty searchset Bundle after `delay` seconds
    """

    def __init__(self, mode: str, *, size: int = 100 * MIB, interval: float = 0.2, delay: float = 3.0) -> None:
        self.mode, self.size, self.interval, self.delay = mode, size, interval, delay
        self.requests = 0
        self.bytes_sent = 0
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no length to trust

            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests += 1
                    owner.in_flight += 1
                    owner.most_in_flight = max(owner.most_in_flight, owner.in_flight)
                # The service hanging up is what it should do at its bound.
                try:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        owner.answer(self)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        if self.mode == "trickle-head":
            for byte in b"HTTP/1.0 200 OK\r\nX-Pad: " + b"a" * 200:  # bounded: ~220 bytes
                self._write(handler, bytes([byte]))
                time.sleep(self.interval)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.end_headers()
        if self.mode == "slow":
            time.sleep(self.delay)
            self._write(handler, json.dumps(fb.searchset([])).encode())
        elif self.mode == "trickle":
            body = json.dumps({"resourceType": "Patient", "id": fb.PATIENT_ID}).encode()
            for byte in body[:200]:  # bounded: 200 bytes at most
                self._write(handler, bytes([byte]))
                time.sleep(self.interval)
        else:
            entry = json.dumps({"resource": fb.observation(fb.concept(fb.HEART_RATE), category="vital-signs",
                                                          valueQuantity={"value": 70})}).encode()
            self._write(handler, b'{"resourceType":"Bundle","type":"searchset","entry":[' + entry)
            for _ in range(self.size // len(entry)):  # bounded by the size asked for
                self._write(handler, b"," + entry)
            self._write(handler, b"]}")

    def _write(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        with self._lock:
            self.bytes_sent += len(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[list[HostileFhir]]:
    servers: list[HostileFhir] = []
    yield servers
    for server in servers:
        server.close()


def start(servers: list[HostileFhir], mode: str, **options: Any) -> HostileFhir:
    server = HostileFhir(mode, **options)
    servers.append(server)
    return server


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """Open mode (no issuers): loopback FHIR servers may be named. One worker, whose RSS is the process's."""
    live = start_live_service(tmp_path_factory.mktemp("fetch-bounds"), {
        "MSCC_ALERT_FHIR_TOTAL_SECONDS": str(TOTAL_SECONDS),
        "MSCC_ALERT_LOG_FORMAT": "json",
    })
    yield live
    stop_live_service(live)


def missing(keys: list[str], fhir_server: str, token: str = "tok-bounds") -> JSON:
    """A request whose prefetch lacks `keys`, with `fhirServer` to fetch them from."""
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])
    for key in keys:
        del body["prefetch"][key]
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "mscc-alert"}
    return body


def post(live: LiveService, body: JSON, timeout: float = 60) -> requests.Response:
    return requests.post(live.url(SERVICE_PATH), json=body, timeout=timeout)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def diagnostics(response: requests.Response) -> str:
    assert response.status_code == 412, response.text[:500]
    issue = response.json()["issue"][0]
    assert issue["code"] == "incomplete"
    return str(issue["diagnostics"])


# --- bytes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [["observations"], ["observations", "conditions", "procedures", "encounters"]],
                         ids=["one-key", "four-keys"])
def test_a_100_mib_answer_stops_at_the_budget_and_rss_stays_within_twice_it(
    service: LiveService, hostile: list[HostileFhir], keys: list[str]
) -> None:
    pid = service.process.pid
    assert post(service, fb.hook_request(fb.patient())).status_code == 200  # warm: code and value sets loaded
    huge = start(hostile, "huge")
    peak_before = status_kib(pid, "VmHWM")
    started = time.monotonic()
    response = post(service, missing(keys, huge.base_url))
    elapsed = time.monotonic() - started
    growth = (status_kib(pid, "VmHWM") - peak_before) * 1024

    assert "could not be fetched" in diagnostics(response)
    assert growth <= 2 * BUDGET, f"peak RSS grew {growth / MIB:.0f} MiB for a {BUDGET / MIB:.0f} MiB budget"
    # One budget for the call, whatever the number of keys: the service stopped reading near it.
    time.sleep(0.5)  # the server notices the closed connections
    assert huge.bytes_sent < 4 * BUDGET + len(keys) * 4 * MIB, huge.bytes_sent
    assert elapsed < TOTAL_SECONDS + 10
    print(f"\n{len(keys)} key(s): peak RSS +{growth / MIB:.1f} MiB, {elapsed:.2f} s, "
          f"{huge.bytes_sent / MIB:.0f} MiB sent by the server")


# --- time --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["trickle", "trickle-head"])
def test_a_trickling_server_is_cut_off_at_the_time_budget(
    service: LiveService, hostile: list[HostileFhir], mode: str
) -> None:
    trickle = start(hostile, mode, interval=0.2)  # 200 bytes take 40 s
    started = time.monotonic()
    response = post(service, missing(["patient"], trickle.base_url))
    elapsed = time.monotonic() - started
    assert "could not be fetched" in diagnostics(response)
    assert elapsed < TOTAL_SECONDS + 3, elapsed
    print(f"\n{mode}: 412 after {elapsed:.2f} s ({TOTAL_SECONDS:g} s budget)")


# --- isolation ---------------------------------------------------------------------------------------------


def test_calls_stuck_on_a_slow_server_do_not_delay_a_prefetch_only_call(
    service: LiveService, hostile: list[HostileFhir]
) -> None:
    slow = start(hostile, "slow", delay=3.0)
    stuck = 40
    with ThreadPoolExecutor(stuck) as pool:
        calls = [pool.submit(post, service, missing(["observations"], slow.base_url)) for _ in range(stuck)]
        deadline = time.monotonic() + 10
        while slow.requests < 4 and time.monotonic() < deadline:  # fetches are in flight
            time.sleep(0.05)
        assert slow.requests >= 4
        latencies = []
        for _ in range(3):
            started = time.monotonic()
            response = post(service, fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()]))
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
            assert [c["indicator"] for c in response.json()["cards"]] == ["warning"]
        statuses = [call.result(timeout=60).status_code for call in calls]
    # Generous on a loaded machine; before, such a call waited behind the fetches for ~30 s.
    assert max(latencies) < 2.0, latencies
    assert set(statuses) <= {200, 412}
    # At most MSCC_ALERT_FHIR_MAX_CALLS_PER_SERVER (4) calls fetched from it at once, each key once.
    assert slow.requests <= stuck
    print(f"\nprefetch-only latency behind {stuck} stuck calls: {[round(x, 3) for x in latencies]} s; "
          f"{statuses.count(200)} fetch calls answered, {statuses.count(412)} got 412")


def test_requests_to_one_server_are_bounded_per_call_and_per_server(
    service: LiveService, hostile: list[HostileFhir]
) -> None:
    slow = start(hostile, "slow", delay=0.5)
    every_key_but_patient = list(fb.PREFETCH_KEYS[1:])
    assert post(service, missing(every_key_but_patient, slow.base_url)).status_code == 200
    assert (slow.requests, slow.most_in_flight) == (9, 4)  # nine searches, four at a time
    with ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(post, service, missing(every_key_but_patient, slow.base_url)) for _ in range(8)]
        assert {call.result(timeout=60).status_code for call in calls} == {200}
    # Four calls per server (MSCC_ALERT_FHIR_MAX_CALLS_PER_SERVER) of four keys each.
    assert slow.most_in_flight <= 16, slow.most_in_flight


# --- what the client is told -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_failure_reads_the_same_to_the_client(
    service: LiveService, hostile: list[HostileFhir], httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/status500/Patient/" + fb.PATIENT_ID).respond_with_data("no", status=500)
    httpserver.expect_request("/status401/Patient/" + fb.PATIENT_ID).respond_with_data("no", status=401)
    httpserver.expect_request("/html/Patient/" + fb.PATIENT_ID).respond_with_data("<html>", status=200)
    servers = [
        f"http://127.0.0.1:{closed_port()}/fhir",  # refused
        start(hostile, "slow", delay=TOTAL_SECONDS + 2).base_url,  # times out
        httpserver.url_for("/status500"),
        httpserver.url_for("/status401"),
        httpserver.url_for("/html"),
    ]
    texts = {diagnostics(post(service, missing(["patient"], server))) for server in servers}
    assert texts == {"Could not obtain data the rules need:\n- prefetch key 'patient': not provided in prefetch, "
                     "and it could not be fetched from fhirServer"}


# --- the FHIR servers a client may name --------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP384R1()), "ec-fetch-1", "ES384")


@pytest.fixture(scope="module")
def fhir_and_jwks(signer: Signer) -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request(JWKS_PATH).respond_with_json({"keys": [signer.public_jwk()]})
    for path in ("/fhir", "/fhirevil", "/fhir/r4"):
        server.expect_request(f"{path}/Patient/{fb.PATIENT_ID}").respond_with_json(fb.patient())
    server.start()
    yield server
    server.clear()
    server.stop()


PREFETCH_ONLY_ISSUER = "https://prefetch-only.example.org"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, fhir_and_jwks: HTTPServer) -> Iterator[LiveService]:
    jwks_url = fhir_and_jwks.url_for(JWKS_PATH)
    live = start_live_service(tmp_path_factory.mktemp("fetch-allowlist"), {
        "MSCC_ALERT_TRUSTED_ISSUERS": json.dumps({
            ISSUER: {"jwks_url": jwks_url, "fhir_servers": [fhir_and_jwks.url_for("/fhir")]},
            PREFETCH_ONLY_ISSUER: jwks_url,
        }),
        "MSCC_ALERT_LOG_FORMAT": "json",
    })
    yield live
    stop_live_service(live)


def fhir_requests(server: HTTPServer, path: str) -> int:
    return sum(1 for request, _ in server.log if request.path.startswith(path + "/"))


@pytest.mark.parametrize(
    ("issuer", "path", "allowed"),
    [
        (ISSUER, "/fhir", True),
        (ISSUER, "/fhir/r4", True),
        (ISSUER, "/fhirevil", False),
        (PREFETCH_ONLY_ISSUER, "/fhir", False),  # an issuer given by its JWKS URL alone names no FHIR server
    ],
)
def test_only_the_issuers_fhir_servers_are_contacted(
    secured: LiveService, fhir_and_jwks: HTTPServer, signer: Signer, issuer: str, path: str, allowed: bool
) -> None:
    token = f"access-{issuer[-12:]}-{path.strip('/')}"
    before = fhir_requests(fhir_and_jwks, path)
    jwt = signer.token(secured.url(SERVICE_PATH), iss=issuer)
    response = requests.post(secured.url(SERVICE_PATH), json=missing(["patient"], fhir_and_jwks.url_for(path), token),
                             headers={"Authorization": f"Bearer {jwt}"}, timeout=60)
    contacted = fhir_requests(fhir_and_jwks, path) - before
    if allowed:
        assert response.status_code == 200, response.text
        assert contacted == 1
    else:
        assert response.status_code == 412, response.text
        issue = response.json()["issue"][0]
        assert "not a FHIR server this client may name" in issue["diagnostics"]
        assert "fhirServer" in issue["expression"]
        assert contacted == 0
        assert not any(token in str(r.headers) for r, _ in fhir_and_jwks.log)


# --- the fetch budget is held in the worker's in-flight budget ---------------------------------------------


def padded_request(size: int) -> JSON:
    """A complete prefetch of about `size` bytes (irrelevant vital signs): a call that fetches nothing."""
    vital = fb.observation(fb.concept(fb.HEART_RATE), category="vital-signs", valueQuantity={"value": 70})
    count = size // len(json.dumps(vital))
    return fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()],
                           observations=[{**vital, "id": f"v{i}"} for i in range(count)])


def test_a_fetching_call_holds_its_byte_budget_in_the_inflight_budget(
    tmp_path: Path, hostile: list[HostileFhir]
) -> None:
    """In-flight budget 40 MiB, fetch budget 32 MiB: while a call fetches from a slow server, a 12 MB prefetch
    call does not fit beside it and queues (logged as queued_ms); a small one still fits and does not."""
    live = start_live_service(tmp_path, {
        "MSCC_ALERT_MAX_INFLIGHT_BODY_BYTES": str(40 * MIB),
        "MSCC_ALERT_FHIR_TOTAL_SECONDS": "8",
        "MSCC_ALERT_LOG_FORMAT": "json",
    })
    try:
        slow = start(hostile, "slow", delay=3.0)
        large, small = json.dumps(padded_request(12 * MIB)), json.dumps(padded_request(64 * 1024))
        headers = {"Content-Type": "application/json"}
        with ThreadPoolExecutor(1) as pool:
            fetching = pool.submit(post, live, missing(["observations"], slow.base_url))
            deadline = time.monotonic() + 10
            while slow.requests < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            small_answer = requests.post(live.url(SERVICE_PATH), data=small, headers=headers, timeout=60)
            large_answer = requests.post(live.url(SERVICE_PATH), data=large, headers=headers, timeout=60)
            assert fetching.result(timeout=60).status_code == 200
        assert (small_answer.status_code, large_answer.status_code) == (200, 200)
        time.sleep(0.5)  # the log line is written after the response
        records = [json.loads(line) for line in live.logs().splitlines() if line.startswith("{")]
        requests_logged = [r for r in records if r.get("message") == "request" and r.get("status") == 200]
        queued = [r.get("queued_ms", 0) for r in requests_logged if "fetched_keys" not in r]
        assert len(queued) == 2
        print(f"\nqueued_ms beside a fetching call: small {queued[0]}, 12 MB {queued[1]}")
        assert queued[0] < 500, queued  # the small call fitted beside the fetch
        assert queued[1] >= 1000, queued  # the large one waited for the fetch to give its budget back
    finally:
        stop_live_service(live)
