"""A slow or failing JWKS endpoint holds up nobody else: total fetch deadline, one fetch per URL, a bound on
who waits for it, cached keys that answer during a refresh, and a short retry after a failure.

Real loopback endpoints: pytest-httpserver for well-behaved key servers, `tests.slow_http.DripServer` for one
that drips its answer a byte at a time (each byte well within the per-read timeout).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_hooks.security import AuthenticationError, JwksCache, JwtVerifier
from tests.slow_http import DripServer

# Each test runs loopback key servers that drip or stall against real deadlines: seconds each.
pytestmark = pytest.mark.e2e

ISSUER_A = "https://ehr-a.example.org/fhir"
ISSUER_B = "https://ehr-b.example.org/fhir"
AUDIENCE = "https://cds.example.org/cds-services/breast-cancer-back-pain"
JWKS_PATH = "/jwks.json"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def jwks(key: ec.EllipticCurvePrivateKey, kid: str = "k1") -> dict[str, Any]:
    return {"keys": [ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": kid, "alg": "ES384"}]}


def bearer(key: ec.EllipticCurvePrivateKey, issuer: str, kid: str = "k1") -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return "Bearer " + jwt.encode(claims, key, algorithm="ES384", headers={"typ": "JWT", "kid": kid})


def timed(call: Callable[[], Any]) -> tuple[str, float]:
    """(outcome, seconds): "ok" or the AuthenticationError reason."""
    started = time.monotonic()
    try:
        call()
        outcome = "ok"
    except AuthenticationError as error:
        outcome = str(error)
    return outcome, time.monotonic() - started


@pytest.fixture
def dripping_headers() -> Iterator[DripServer]:
    with DripServer("headers", interval=0.1) as server:
        yield server


@pytest.fixture
def dripping_body() -> Iterator[DripServer]:
    with DripServer("body", interval=0.1) as server:
        yield server


@pytest.mark.parametrize("mode", ["headers", "body"])
def test_a_dripping_jwks_fetch_ends_at_its_deadline(mode: str, request: pytest.FixtureRequest) -> None:
    server: DripServer = request.getfixturevalue(f"dripping_{mode}")
    cache = JwksCache(timeout=1.0, fetch_seconds=1.5)
    outcome, seconds = timed(lambda: cache.signing_key(server.url(), "k1"))
    assert outcome == "jwks-unavailable"
    assert 1.2 < seconds < 4.0  # 1.5 s deadline; before it, bytes kept coming faster than the read timeout
    # The fetch itself stopped (its socket was shut), not just the wait for it: the server saw the hang-up.
    deadline = time.monotonic() + 10
    while not server.hung_up and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.hung_up and server.hung_up[0] < 5.0


def test_one_fetch_per_url_and_a_bounded_number_of_waiters(
    dripping_headers: DripServer, key: ec.EllipticCurvePrivateKey
) -> None:
    cache = JwksCache(timeout=1.0, fetch_seconds=2.0, max_waiters=3)
    verifier = JwtVerifier({ISSUER_A: dripping_headers.url()}, jwks=cache)
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def junk() -> None:
        start.wait()
        result = timed(lambda: verifier.verify(bearer(key, ISSUER_A, kid=f"junk-{uuid.uuid4()}"), AUDIENCE))
        with lock:
            results.append(result)

    threads = [threading.Thread(target=junk) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 20
    assert dripping_headers.requests == 1  # twenty tokens, one fetch
    waited = [seconds for outcome, seconds in results if outcome == "jwks-unavailable"]
    refused_at_once = [seconds for outcome, seconds in results if outcome == "jwks-busy"]
    assert len(waited) == 3 and all(seconds < 5.0 for seconds in waited)
    assert len(refused_at_once) == 17 and all(seconds < 1.0 for seconds in refused_at_once)


def test_issuer_b_is_not_held_up_by_issuer_a_dripping(
    dripping_headers: DripServer, httpserver: HTTPServer, key: ec.EllipticCurvePrivateKey
) -> None:
    httpserver.expect_request(JWKS_PATH).respond_with_json(jwks(key))
    cache = JwksCache(timeout=1.0, fetch_seconds=3.0)
    verifier = JwtVerifier({ISSUER_A: dripping_headers.url(), ISSUER_B: httpserver.url_for(JWKS_PATH)}, jwks=cache)
    junk = [threading.Thread(target=timed, args=(lambda: verifier.verify(bearer(key, ISSUER_A), AUDIENCE),))
            for _ in range(10)]
    for thread in junk:
        thread.start()
    time.sleep(0.3)  # A's fetch is under way and its waiters wait
    outcome, seconds = timed(lambda: verifier.verify(bearer(key, ISSUER_B), AUDIENCE))  # B not cached yet
    assert outcome == "ok" and seconds < 1.0
    outcome, seconds = timed(lambda: verifier.verify(bearer(key, ISSUER_B), AUDIENCE))  # and cached
    assert outcome == "ok" and seconds < 0.5
    for thread in junk:
        thread.join(timeout=30)


def test_cached_keys_answer_while_a_refresh_is_slow(httpserver: HTTPServer, key: ec.EllipticCurvePrivateKey) -> None:
    clock = FakeClock()
    cache = JwksCache(timeout=5.0, fetch_seconds=5.0, ttl=600, clock=clock)
    httpserver.expect_request(JWKS_PATH).respond_with_json(jwks(key))
    url = httpserver.url_for(JWKS_PATH)
    assert cache.signing_key(url, "k1").kid == "k1"
    # The key server turns slow: its handler holds the refresh until released.
    httpserver.clear_all_handlers()
    entered, release = threading.Event(), threading.Event()

    def stall(_: Request) -> Response:
        entered.set()
        release.wait(10)
        return Response(json.dumps(jwks(key)), status=200, content_type="application/json")

    httpserver.expect_request(JWKS_PATH).respond_with_handler(stall)
    try:
        clock.now += 601  # past the TTL: the next lookup starts a refresh
        assert timed(lambda: cache.signing_key(url, "k1"))[0] == "ok"
        assert entered.wait(5), "the refresh did not start"
        lookups = [timed(lambda: cache.signing_key(url, "k1")) for _ in range(50)]
        assert {outcome for outcome, _ in lookups} == {"ok"}
        assert max(seconds for _, seconds in lookups) < 0.2
    finally:
        release.set()
        # The released refresh is logged after it is answered: let it land here, not in the next test's log.
        deadline = time.monotonic() + 5
        while len(httpserver.log) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)


def test_a_failed_fetch_is_retried_after_seconds_not_a_minute(
    httpserver: HTTPServer, key: ec.EllipticCurvePrivateKey
) -> None:
    clock = FakeClock()
    cache = JwksCache(timeout=1.0, retry_seconds=5.0, min_refresh_interval=60.0, clock=clock)
    url = httpserver.url_for(JWKS_PATH)
    httpserver.expect_request(JWKS_PATH).respond_with_data("blip", status=503)
    assert timed(lambda: cache.signing_key(url, "k1"))[0] == "jwks-unavailable"
    httpserver.clear_all_handlers()
    httpserver.expect_request(JWKS_PATH).respond_with_json(jwks(key))
    clock.now += 4.9
    assert timed(lambda: cache.signing_key(url, "k1"))[0] == "jwks-unavailable"  # within the backoff: not asked
    assert_requests(httpserver, 1)
    clock.now += 0.2
    assert timed(lambda: cache.signing_key(url, "k1"))[0] == "ok"  # 5.1 s after the blip, not 61 s
    # After a success the rate limit for unknown kids is the long one again.
    clock.now += 10
    assert timed(lambda: cache.signing_key(url, "made-up"))[0] == "unknown-kid"
    assert_requests(httpserver, 2)


def assert_requests(httpserver: HTTPServer, expected: int) -> None:
    """pytest-httpserver logs a request after answering it: wait (bounded) for the log, then check it stays."""
    def count() -> int:
        return sum(1 for request, _ in httpserver.log if request.path == JWKS_PATH)

    deadline = time.monotonic() + 5
    while count() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert count() == expected


def test_fetch_settings_are_validated() -> None:
    for bad in ({"fetch_seconds": 0}, {"timeout": 0}, {"retry_seconds": -1}, {"max_waiters": 0}):
        with pytest.raises(ValueError):
            JwksCache(**bad)  # type: ignore[arg-type]


def test_the_deadline_holds_through_an_http_proxy(dripping_headers: DripServer) -> None:
    """A configured proxy (hospital networks often have one) that drips is cut off at the deadline too."""
    session = requests.Session()
    session.trust_env = False  # only the proxy set here, whatever the environment's NO_PROXY says
    session.proxies = {"http": f"http://127.0.0.1:{dripping_headers.port}"}
    cache = JwksCache(session=session, timeout=1.0, fetch_seconds=1.5)
    outcome, seconds = timed(lambda: cache.signing_key("http://localhost:9/jwks.json", "k1"))
    assert outcome == "jwks-unavailable" and 1.2 < seconds < 4.0
    assert dripping_headers.requests == 1  # the request went to the proxy
    deadline = time.monotonic() + 10
    while not dripping_headers.hung_up and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dripping_headers.hung_up


def self_signed_localhost(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("mode", ["headers", "body"])
def test_the_deadline_holds_over_tls(tmp_path: Path, mode: Literal["headers", "body"]) -> None:
    """Production JWKS URLs are https: shutting a TLS socket under its reading thread ends the fetch too."""
    cert_path, key_path = self_signed_localhost(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    with DripServer(mode, interval=0.1, tls=context) as server:
        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE, if set, would override `verify`
        session.verify = str(cert_path)
        cache = JwksCache(session=session, timeout=1.0, fetch_seconds=1.5)
        outcome, seconds = timed(lambda: cache.signing_key(server.url(), "k1"))
        assert outcome == "jwks-unavailable" and 1.2 < seconds < 4.0
        assert server.requests == 1  # the TLS handshake and the request went through: the drip was the answer
        deadline = time.monotonic() + 10
        while not server.hung_up and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.hung_up
