"""JWT authentication of the running service (`mscc-alert serve`), end to end over loopback HTTP.

A trusted issuer's JWK Set (an EC P-384 and an RSA key generated here) is served by pytest-httpserver; the
service is started with MSCC_ALERT_TRUSTED_ISSUERS pointing at it. Every refusal must be the same short
401 OperationOutcome whatever check failed; the JSON log line of each request says which check it was, so
each test also proves it was refused for the intended reason and not for an unrelated one.

The verifier's own rules are unit-tested in test_jwt_auth.py; this module tests the wiring: which routes
are protected, which audience each route checks, settings, the CLI's secure defaults, and the 401 body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# PyJWT imports the OpenSSL backend lazily, on the first ECDSA signature. On CPython 3.11 an import that a
# garbage collection interrupts (a finaliser importing in the same thread) can fail with KeyError inside
# importlib's module lock, which made the first signature in a module flaky: import it up front.
import cryptography.hazmat.backends.openssl.backend  # noqa: F401
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from cds_hooks.services.registry import SERVICES
from tests.conftest import SERVICE_ID, TEST_DATA, LiveService, free_port, start_live_service, stop_live_service
from tests.scenarios import fhir_builders as fb

pytestmark = pytest.mark.e2e  # starts servers or subprocesses

ISSUER = "https://ehr.example.org/fhir"
PUBLIC_BASE_URL = "https://cds.example.org/mscc"
JWKS_PATH = "/jwks.json"
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"/cds-services/{SERVICE_ID}/feedback"
SANDBOX_EXCHANGE_LOG = TEST_DATA / "cds-hooks-examples" / "observed-client-requests" / "http-exchange-log.json"
WARNING_BANNER = "AUTHENTICATION IS OFF"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- tokens ----------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Signer:
    """A CDS client's signing key, as listed in its JWK Set under `kid`."""

    key: PrivateKey
    kid: str
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.key, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, aud: str | list[str], **overrides: Any) -> str:
        """A valid CDS client JWT for `aud` (5 minutes' lifetime); `overrides` replace or add claims."""
        return jwt.encode(
            claims(aud, **overrides), self.key, algorithm=self.alg, headers={"typ": "JWT", "kid": self.kid}
        )


def claims(aud: str | list[str], **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": ISSUER, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    payload.update(overrides)
    return payload


def hand_made_token(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """For tokens PyJWT refuses to make: alg none, HMAC keyed with a public key."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def ec_signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP384R1()), "ec-p384-1", "ES384")


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1", "RS384")


@pytest.fixture(scope="module")
def jwks_server(ec_signer: Signer, rsa_signer: Signer) -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request(JWKS_PATH).respond_with_json({"keys": [ec_signer.public_jwk(), rsa_signer.public_jwk()]})
    server.start()
    yield server
    server.clear()
    server.stop()


def trusted_issuer_env(jwks_server: HTTPServer) -> dict[str, str]:
    return {"MSCC_ALERT_TRUSTED_ISSUERS": json.dumps({ISSUER: jwks_server.url_for(JWKS_PATH)})}


# --- the service and its log -----------------------------------------------------------------------------


def log_records(service: LiveService) -> list[dict[str, Any]]:
    """The JSON lines of the service's log (MSCC_ALERT_LOG_FORMAT=json), in order."""
    records = []
    for line in service.logs().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def request_records(service: LiveService) -> list[dict[str, Any]]:
    return [r for r in log_records(service) if r.get("message") == "request"]


# Requests sent to each service on logged routes: the n-th request line in its log is the n-th request.
_sent: dict[str, int] = {}
UNLOGGED = ("/healthz", "/metrics")


def send(
    service: LiveService, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> requests.Response:
    """One request; every request to a logged route must go through here (see `send_logged`)."""
    response = service.session.request(method, service.url(path), data=data, headers=headers, timeout=60)
    if path.partition("?")[0] not in UNLOGGED:
        _sent[service.base_url] = _sent.get(service.base_url, 0) + 1
    return response


def send_logged(
    service: LiveService, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[requests.Response, dict[str, Any]]:
    """The response and the service's log line for it. The line is written once the response has gone, so
    it may lag a little: wait for it (this is not a timing assertion)."""
    response = send(service, method, path, data=data, headers=headers)
    count = _sent[service.base_url]
    deadline = time.monotonic() + 10
    while True:
        records = request_records(service)
        if len(records) >= count:
            return response, records[count - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"request line {count} is not in the log:\n{service.logs()[-3000:]}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, jwks_server: HTTPServer) -> Iterator[LiveService]:
    service = start_live_service(
        tmp_path_factory.mktemp("auth"),
        {
            **trusted_issuer_env(jwks_server),
            "MSCC_ALERT_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "MSCC_ALERT_LOG_FORMAT": "json",
        },
    )
    yield service
    stop_live_service(service)


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str

    def body(self) -> bytes | None:
        if self.method == "GET":
            return None
        if self.path == SERVICE_PATH:
            return json.dumps(fb.hook_request(fb.patient())).encode()
        item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:05:31Z"}
        return json.dumps({"feedback": [item]}).encode()


DISCOVERY = Route("discovery", "GET", "/cds-services")
SERVICE = Route("service", "POST", SERVICE_PATH)
FEEDBACK = Route("feedback", "POST", FEEDBACK_PATH)
ROUTES = [DISCOVERY, SERVICE, FEEDBACK]


def call(
    service: LiveService, route: Route, token: str | None, headers: dict[str, str] | None = None
) -> requests.Response:
    return send(service, route.method, route.path, data=route.body(), headers=auth_headers(token, headers))


def call_logged(
    service: LiveService, route: Route, token: str | None, headers: dict[str, str] | None = None
) -> tuple[requests.Response, dict[str, Any]]:
    return send_logged(service, route.method, route.path, data=route.body(), headers=auth_headers(token, headers))


def auth_headers(token: str | None, headers: dict[str, str] | None = None) -> dict[str, str]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return sent


# --- refusals ---------------------------------------------------------------------------------------------

# Words that would tell an attacker which check failed.
REVEALING = (
    "expired",
    "exp",
    "audience",
    "aud",
    "issuer",
    'iss"',
    "replay",
    "jti",
    "signature",
    "algorithm",
    "alg",
    "hs256",
    "none",
    "kid",
    "jwks",
    "jku",
    "bearer",
    "claim",
)


def assert_bare_401(response: requests.Response, token: str | None, reference: bytes) -> None:
    assert response.status_code == 401, response.text[:300]
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [issue["code"] for issue in outcome["issue"]] == ["login"]
    assert len(response.content) < 300
    text = response.text.lower()
    for word in REVEALING:
        assert word not in text, f"401 body says {word!r}: {response.text}"
    if token:
        for part in [token, *token.split(".")]:
            if len(part) >= 8:
                assert part not in response.text
    # The same bytes whatever failed: nothing to tell the refusals apart.
    assert response.content == reference


@pytest.fixture(scope="module")
def reference_401(secured: LiveService) -> bytes:
    response = call(secured, DISCOVERY, None)
    assert response.status_code == 401
    return response.content


def other_route(route: Route) -> Route:
    return {DISCOVERY: SERVICE, SERVICE: FEEDBACK, FEEDBACK: DISCOVERY}[route]


BadToken = Callable[[Signer, LiveService, Route], str | None]

BAD_TOKENS: dict[str, tuple[BadToken, str]] = {
    "no token": (lambda s, svc, r: None, "no-token"),
    "expired": (
        lambda s, svc, r: s.token(svc.url(r.path), iat=int(time.time()) - 420, exp=int(time.time()) - 120),
        "expired",
    ),
    # The aud of another of our own endpoints: a token for discovery must not open the service, and so on.
    "wrong aud": (lambda s, svc, r: s.token(svc.url(other_route(r).path)), "bad-audience"),
    "unknown issuer": (
        lambda s, svc, r: s.token(svc.url(r.path), iss="https://intruder.example.net"),
        "unknown-issuer",
    ),
    "alg none": (
        lambda s, svc, r: hand_made_token(
            {"alg": "none", "typ": "JWT", "kid": s.kid}, claims(svc.url(r.path)), lambda _: b""
        ),
        "alg-not-allowed",
    ),
    # The classic key-confusion attack: HMAC keyed with the issuer's public key, which anyone can fetch.
    "HS256 with the public key": (
        lambda s, svc, r: hand_made_token(
            {"alg": "HS256", "typ": "JWT", "kid": s.kid},
            claims(svc.url(r.path)),
            lambda data: hmac.new(s.public_pem(), data, hashlib.sha256).digest(),
        ),
        "alg-not-allowed",
    ),
}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_bad_token_is_a_bare_401(
    secured: LiveService, ec_signer: Signer, reference_401: bytes, route: Route, kind: str
) -> None:
    make, reason = BAD_TOKENS[kind]
    token = make(ec_signer, secured, route)
    response, record = call_logged(secured, route, token)
    assert_bare_401(response, token, reference_401)
    assert record["status"] == 401
    assert record["reason"] == f"auth: {reason}"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_replayed_jti_is_a_bare_401(
    secured: LiveService, ec_signer: Signer, reference_401: bytes, route: Route
) -> None:
    token = ec_signer.token(secured.url(route.path))
    assert call(secured, route, token).status_code == 200
    response, record = call_logged(secured, route, token)
    assert_bare_401(response, token, reference_401)
    assert record["reason"] == "auth: replayed-jti"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_replayed_jti_with_a_fresh_signature_is_refused(
    secured: LiveService, ec_signer: Signer, reference_401: bytes, route: Route
) -> None:
    """A new token that reuses a jti already seen is a replay too, even though its bytes differ."""
    jti = str(uuid.uuid4())
    assert call(secured, route, ec_signer.token(secured.url(route.path), jti=jti)).status_code == 200
    token = ec_signer.token(secured.url(route.path), jti=jti, iat=int(time.time()) - 1)
    response, record = call_logged(secured, route, token)
    assert_bare_401(response, token, reference_401)
    assert record["reason"] == "auth: replayed-jti"


def test_key_of_another_party_is_refused(secured: LiveService, ec_signer: Signer, reference_401: bytes) -> None:
    """Right issuer, right kid, right claims, but signed with a key the issuer never published."""
    forger = Signer(ec.generate_private_key(ec.SECP384R1()), ec_signer.kid, "ES384")
    token = forger.token(secured.url(SERVICE_PATH))
    response, record = call_logged(secured, SERVICE, token)
    assert_bare_401(response, token, reference_401)
    assert record["reason"] == "auth: bad-signature"


def test_unknown_kids_do_not_flood_the_issuer(
    secured: LiveService, ec_signer: Signer, jwks_server: HTTPServer, reference_401: bytes
) -> None:
    """An unknown kid may trigger one refetch of the key set (rotation), not one per request."""
    assert call(secured, DISCOVERY, ec_signer.token(secured.url(DISCOVERY.path))).status_code == 200
    before = sum(1 for request, _ in jwks_server.log if request.path == JWKS_PATH)
    for n in range(5):
        stranger = Signer(ec.generate_private_key(ec.SECP384R1()), f"made-up-{n}", "ES384")
        token = stranger.token(secured.url(DISCOVERY.path))
        response, record = call_logged(secured, DISCOVERY, token)
        assert_bare_401(response, token, reference_401)
        assert record["reason"] == "auth: unknown-kid"
    assert sum(1 for request, _ in jwks_server.log if request.path == JWKS_PATH) - before <= 1


# --- accepted tokens --------------------------------------------------------------------------------------


def assert_route_answered(route: Route, response: requests.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    if route is DISCOVERY:
        assert [s["id"] for s in body["services"]] == [service.id for service in SERVICES]
    elif route is SERVICE:
        assert body == {"cards": []}
    else:
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["severity"] == "information"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
@pytest.mark.parametrize("signer_name", ["ec_signer", "rsa_signer"], ids=["ES384", "RS384"])
def test_valid_token_for_the_exact_url_is_accepted(
    secured: LiveService, request: pytest.FixtureRequest, route: Route, signer_name: str
) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    token = signer.token(
        secured.url(route.path), tenant="org-1234", sub="epic-client-id", nbf=int(time.time()) - 5
    )  # Epic's extra claims are tolerated
    response, record = call_logged(secured, route, token)
    assert_route_answered(route, response)
    assert record["status"] == 200
    assert (record["issuer"], record["tenant"]) == (ISSUER, "org-1234")
    assert "reason" not in record


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_audience_may_be_an_array(secured: LiveService, ec_signer: Signer, route: Route) -> None:
    token = ec_signer.token(["https://elsewhere.example.org/cds-services", secured.url(route.path)])
    assert_route_answered(route, call(secured, route, token))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_audience_at_the_public_base_url_is_accepted(secured: LiveService, ec_signer: Signer, route: Route) -> None:
    """Behind a proxy the EHR signs the URL it calls, MSCC_ALERT_PUBLIC_BASE_URL + path."""
    response, record = call_logged(secured, route, ec_signer.token(PUBLIC_BASE_URL + route.path))
    assert_route_answered(route, response)
    assert record["issuer"] == ISSUER


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_audience_at_another_base_url_is_refused(
    secured: LiveService, ec_signer: Signer, reference_401: bytes, route: Route
) -> None:
    token = ec_signer.token("https://other-cds.example.net/mscc" + route.path)
    response, record = call_logged(secured, route, token)
    assert_bare_401(response, token, reference_401)
    assert record["reason"] == "auth: bad-audience"


def test_host_header_cannot_redirect_the_audience(
    secured: LiveService, ec_signer: Signer, reference_401: bytes
) -> None:
    """A token the EHR signed for a different CDS service (its operator, or anyone who sees it, can replay
    it here) must not be accepted just because the request claims to be for that service's host."""
    token = ec_signer.token("https://other-cds.example.net/cds-services")
    response = call(secured, DISCOVERY, token, headers={"Host": "other-cds.example.net", "X-Forwarded-Proto": "https"})
    assert_bare_401(response, token, reference_401)


@pytest.fixture(scope="module")
def without_public_url(tmp_path_factory: pytest.TempPathFactory, jwks_server: HTTPServer) -> Iterator[LiveService]:
    service = start_live_service(
        tmp_path_factory.mktemp("auth-no-public-url"),
        {**trusted_issuer_env(jwks_server), "MSCC_ALERT_LOG_FORMAT": "json"},
    )
    yield service
    stop_live_service(service)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_host_header_cannot_redirect_the_audience_without_a_public_url(
    without_public_url: LiveService, ec_signer: Signer, scheme: str
) -> None:
    token = ec_signer.token(f"{scheme}://other-cds.example.net/cds-services")
    response, record = call_logged(
        without_public_url, DISCOVERY, token, headers={"Host": "other-cds.example.net", "X-Forwarded-Proto": scheme}
    )
    assert response.status_code == 401
    assert record["reason"] == "auth: bad-audience"


def test_url_by_the_socket_and_by_a_loopback_name_are_accepted_without_a_public_url(
    without_public_url: LiveService, ec_signer: Signer
) -> None:
    """In development (no public URL) the EHR may call us by the address we listen on or by `localhost`."""
    port = urlsplit(without_public_url.base_url).port
    assert_route_answered(
        DISCOVERY, call(without_public_url, DISCOVERY, ec_signer.token(f"http://127.0.0.1:{port}/cds-services"))
    )
    response = call(
        without_public_url,
        DISCOVERY,
        ec_signer.token(f"http://localhost:{port}/cds-services"),
        headers={"Host": f"localhost:{port}"},
    )
    assert_route_answered(DISCOVERY, response)


def test_401_names_the_bearer_scheme(secured: LiveService) -> None:
    response = call(secured, SERVICE, None)
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_no_open_mode_warning_when_issuers_are_configured(secured: LiveService) -> None:
    assert call(secured, DISCOVERY, None).status_code == 401
    assert WARNING_BANNER not in secured.logs()
    assert any(r.get("auth") == "jwt" for r in log_records(secured))


def test_health_and_metrics_need_no_token(secured: LiveService) -> None:
    """Probes and scrapers carry no CDS client JWT; neither endpoint returns patient data."""
    assert secured.session.get(secured.url("/healthz"), timeout=10).status_code == 200
    assert secured.session.get(secured.url("/metrics"), timeout=10).status_code == 200


# --- the CDS Hooks sandbox key (development setting) ------------------------------------------------------


def sandbox_exchange() -> list[dict[str, Any]]:
    exchange: list[dict[str, Any]] = json.loads(SANDBOX_EXCHANGE_LOG.read_text())
    return exchange


def test_sandbox_key_is_trusted_without_a_fetch(tmp_path: Path) -> None:
    """MSCC_ALERT_TRUST_SANDBOX=true preloads the public sandbox key: the recorded sandbox token gets as far
    as its expiry check (so its ES384 signature verified with that key), and no JWKS server exists for it."""
    recorded = next(e for e in sandbox_exchange() if e["method"] == "GET" and e["path"] == "/cds-services")
    token = recorded["headers"]["Authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(token)["kid"] == "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
    assert jwt.decode(token, options={"verify_signature": False})["exp"] < time.time()

    service = start_live_service(tmp_path, {"MSCC_ALERT_TRUST_SANDBOX": "true", "MSCC_ALERT_LOG_FORMAT": "json"})
    try:
        reference = call(service, DISCOVERY, None).content
        response, record = call_logged(service, DISCOVERY, token)
        assert_bare_401(response, token, reference)
        assert record["reason"] == "auth: expired"
        assert WARNING_BANNER not in service.logs()
    finally:
        stop_live_service(service)


def test_sandbox_key_is_not_trusted_by_default(secured: LiveService, reference_401: bytes) -> None:
    """Without MSCC_ALERT_TRUST_SANDBOX the sandbox is just another unknown issuer."""
    recorded = next(e for e in sandbox_exchange() if e["method"] == "GET" and e["path"] == "/cds-services")
    token = recorded["headers"]["Authorization"].removeprefix("Bearer ")
    response, record = call_logged(secured, DISCOVERY, token)
    assert_bare_401(response, token, reference_401)
    assert record["reason"] == "auth: unknown-issuer"


# --- secure defaults of `mscc-alert serve` ----------------------------------------------------------------


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    env["MSCC_ALERT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    env.update(settings)
    return env


def serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "cds_hooks", "serve", "--host", host, "--port", str(port)]


def test_refuses_to_listen_beyond_loopback_without_issuers(tmp_path: Path) -> None:
    completed = subprocess.run(
        serve_command("0.0.0.0", free_port()),
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "refusing to start" in completed.stderr
    assert "MSCC_ALERT_TRUSTED_ISSUERS" in completed.stderr
    assert "MSCC_ALERT_AUTH=off" in completed.stderr


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("MSCC_ALERT_TRUSTED_ISSUERS", "not json"),
        ("MSCC_ALERT_TRUSTED_ISSUERS", json.dumps({ISSUER: "http://ehr.example.org/jwks.json"})),  # not https
        ("MSCC_ALERT_JWT_ALGORITHMS", "ES384,HS256"),
        ("MSCC_ALERT_AUTH", "maybe"),
    ],
)
def test_bad_security_settings_stop_the_start(tmp_path: Path, setting: str, value: str) -> None:
    completed = subprocess.run(
        serve_command("127.0.0.1", free_port()),
        env=clean_env(tmp_path, **{setting: value}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert setting in completed.stderr


def wait_until_serving(process: subprocess.Popen[bytes], base_url: str, log_path: Path, workers: int = 1) -> None:
    """Until every worker has finished starting and the service answers /healthz."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited ({process.returncode}):\n{log_path.read_text()}")
        try:
            started = log_path.read_text().count("Application startup complete")
            if started >= workers and requests.get(base_url + "/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"service did not start:\n{log_path.read_text()}")


def test_auth_off_starts_on_any_address_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command("0.0.0.0", port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(tmp_path, MSCC_ALERT_AUTH="off"),
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_serving(process, base_url, log_path)
        assert requests.get(base_url + "/cds-services", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    warning = [line for line in log_path.read_text().splitlines() if WARNING_BANNER in line]
    assert len(warning) == 1
    assert "WARNING" in warning[0]


def test_loopback_without_issuers_runs_open_and_says_so(tmp_path: Path) -> None:
    service = start_live_service(tmp_path, {"MSCC_ALERT_LOG_FORMAT": "json"})
    try:
        response, record = call_logged(service, SERVICE, None)
        assert response.status_code == 200
        assert "issuer" not in record
    finally:
        stop_live_service(service)
    banner = [r for r in log_records(service) if WARNING_BANNER in r["message"]]
    assert [r["level"] for r in banner] == ["WARNING"]
    # Said before the service takes its first request.
    first_request = next(i for i, r in enumerate(log_records(service)) if r.get("message") == "request")
    assert log_records(service).index(banner[0]) < first_request


# --- several worker processes ---------------------------------------------------------------------------


def discovery_200s_seen_by(session: requests.Session, base_url: str) -> float:
    """How many GET /cds-services this connection's worker answered 200 (metrics are per process)."""
    text = session.get(base_url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mscc_alert_requests_total" and sample.labels == {
                "route": "/cds-services",
                "method": "GET",
                "status": "200",
            }:
                return sample.value
    return 0.0


def test_replayed_jti_is_refused_by_every_worker(tmp_path: Path, jwks_server: HTTPServer, ec_signer: Signer) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*serve_command("127.0.0.1", port), "--workers", "4"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(tmp_path, **trusted_issuer_env(jwks_server)),
        )
    sessions: list[requests.Session] = []
    try:
        wait_until_serving(process, base_url, log_path, workers=4)
        token = {"Authorization": f"Bearer {ec_signer.token(base_url + '/cds-services')}"}
        first = requests.Session()
        sessions.append(first)
        assert first.get(base_url + "/cds-services", headers=token, timeout=30).status_code == 200
        # Keep-alive connections stay with the worker that accepted them: find one on another worker.
        for _ in range(64):
            session = requests.Session()
            sessions.append(session)
            if discovery_200s_seen_by(session, base_url) == 0:
                assert session.get(base_url + "/cds-services", headers=token, timeout=30).status_code == 401
                return
        pytest.skip("every connection reached the worker that had seen the token")
    finally:
        for session in sessions:
            session.close()
        process.terminate()
        process.wait(timeout=30)
