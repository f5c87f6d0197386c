"""CDS client JWT verification with real keys, real signatures and a real JWKS endpoint on loopback.

Keys are generated per module with `cryptography`; tokens are signed with PyJWT, or hand-crafted where PyJWT
refuses to make them (alg "none", HMAC with a public key as the secret). The verifier's clock is fixed, so
time rules are tested without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pytest_httpserver import HTTPServer

from cds_hooks.security import (
    SANDBOX_ISSUER,
    SANDBOX_JWKS_URL,
    AuthenticationError,
    JwksCache,
    JwtVerifier,
    VerifiedClient,
    sandbox_jwks,
)

NOW = 1_800_000_000.0
ISSUER = "https://ehr.example.org/fhir"
AUDIENCE = "https://cds.example.org/cds-services/breast-cancer-back-pain"
JWKS_PATH = "/jwks.json"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class FakeClock:
    """Stands in for both time.time (verifier) and time.monotonic (JWKS cache)."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Keys:
    ec384: ec.EllipticCurvePrivateKey
    rsa: rsa.RSAPrivateKey
    ec256: ec.EllipticCurvePrivateKey
    attacker: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        ec384=ec.generate_private_key(ec.SECP384R1()),
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec256=ec.generate_private_key(ec.SECP256R1()),
        attacker=ec.generate_private_key(ec.SECP384R1()),
    )


def public_jwk(key: PrivateKey, kid: str, alg: str | None = None, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig", **extra})
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def standard_jwks(keys: Keys) -> dict[str, Any]:
    # The RSA key declares no alg, like many production key sets (Epic's format is not public).
    return {
        "keys": [
            public_jwk(keys.ec384, "ec-1", "ES384"),
            public_jwk(keys.rsa, "rsa-1"),
            public_jwk(keys.ec256, "ec256-1", "ES256"),
        ]
    }


def make_token(
    key: PrivateKey,
    kid: str = "ec-1",
    alg: str = "ES384",
    drop: tuple[str, ...] = (),
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    for name in drop:
        payload.pop(name)
    header = {"typ": "JWT", "kid": kid, **(headers or {})}
    return jwt.encode(payload, key, algorithm=alg, headers=header)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def standard_payload() -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "iat": int(NOW), "exp": int(NOW) + 300, "jti": str(uuid.uuid4())}


def refused(verifier: JwtVerifier, token: str, reason: str, audience: str = AUDIENCE) -> None:
    """The token is refused for `reason`, and the error gives nothing of the token away."""
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(f"Bearer {token}", audience)
    assert str(caught.value) == reason
    assert_token_not_in(caught.value, token)


def assert_token_not_in(error: AuthenticationError, token: str) -> None:
    text = f"{error} {error!r} {error.args!r} {error.__cause__!r} {error.__context__!r}"
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in text


def jwks_requests(server: HTTPServer, path: str = JWKS_PATH) -> int:
    return sum(1 for request, _ in server.log if request.path == path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jwks_url(httpserver: HTTPServer, keys: Keys) -> str:
    httpserver.expect_request(JWKS_PATH).respond_with_json(standard_jwks(keys))
    return httpserver.url_for(JWKS_PATH)


@pytest.fixture
def make_verifier(jwks_url: str, clock: FakeClock) -> Callable[..., JwtVerifier]:
    def build(**kwargs: Any) -> JwtVerifier:
        kwargs.setdefault("trusted_issuers", {ISSUER: jwks_url})
        kwargs.setdefault("jwks", JwksCache(clock=clock, timeout=2.0))
        return JwtVerifier(clock=clock, **kwargs)

    return build


@pytest.fixture
def verifier(make_verifier: Callable[..., JwtVerifier]) -> JwtVerifier:
    return make_verifier()


@pytest.fixture
def other_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


class NoNetworkSession(requests.Session):
    """Fails the test on any request: preloaded key sets must never be fetched."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        raise AssertionError(f"unexpected network request: {args[:2]!r}")


# --- accepted tokens ---------------------------------------------------------------------------------------


def test_valid_es384_token_is_accepted(verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer) -> None:
    token = make_token(keys.ec384, jti="jti-es384", tenant="org-42")
    client = verifier.verify(f"Bearer {token}", AUDIENCE)
    assert client == VerifiedClient(ISSUER, "org-42", "jti-es384", None, int(NOW) + 300)
    assert jwks_requests(httpserver) == 1


def test_valid_rs384_token_is_accepted(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.rsa, kid="rsa-1", alg="RS384")
    client = verifier.verify(f"Bearer {token}", AUDIENCE)
    assert client.issuer == ISSUER
    assert client.tenant is None


def test_bearer_scheme_is_case_insensitive(verifier: JwtVerifier, keys: Keys) -> None:
    assert verifier.verify(f"bearer {make_token(keys.ec384)}", AUDIENCE).issuer == ISSUER
    assert verifier.verify(f"BEARER  {make_token(keys.ec384)}", AUDIENCE).issuer == ISSUER


def test_keys_are_cached_across_requests(verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer) -> None:
    for _ in range(3):
        verifier.verify(f"Bearer {make_token(keys.ec384)}", AUDIENCE)
    assert jwks_requests(httpserver) == 1


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt"])
def test_typ_is_compared_case_insensitively(verifier: JwtVerifier, keys: Keys, typ: str) -> None:
    token = make_token(keys.ec384, headers={"typ": typ})
    assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER


# --- the Authorization header ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header_is_refused(verifier: JwtVerifier, header: str | None) -> None:
    with pytest.raises(AuthenticationError, match=r"^no-token$"):
        verifier.verify(header, AUDIENCE)


def test_other_schemes_are_refused(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.ec384)
    for header in [f"Basic {token}", f"Token {token}", token]:
        with pytest.raises(AuthenticationError) as caught:
            verifier.verify(header, AUDIENCE)
        assert str(caught.value) == "not-bearer"
        assert_token_not_in(caught.value, token)


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer not-a-jwt", "Bearer a.b.c", "Bearer e30.e30", "Bearer abc def", "Bearer ....."],
)
def test_garbage_is_refused_as_malformed(verifier: JwtVerifier, header: str) -> None:
    with pytest.raises(AuthenticationError, match=r"^malformed$"):
        verifier.verify(header, AUDIENCE)


def test_payload_that_is_not_an_object_is_malformed(verifier: JwtVerifier, keys: Keys) -> None:
    header = {"alg": "ES384", "typ": "JWT", "kid": "ec-1"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(b'[1, 2]')}"
    token = f"{signing_input}.{b64url(b'x' * 96)}"
    refused(verifier, token, "malformed")


# --- JOSE header rules -------------------------------------------------------------------------------------


def test_missing_typ_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.ec384, headers={"typ": None})  # PyJWT drops an empty typ
    assert "typ" not in jwt.get_unverified_header(token)
    refused(verifier, token, "bad-typ")


def test_wrong_typ_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, headers={"typ": "at+jwt"}), "bad-typ")


def test_missing_kid_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    token = jwt.encode(standard_payload(), keys.ec384, algorithm="ES384", headers={"typ": "JWT"})
    refused(verifier, token, "no-kid")


def test_critical_header_extensions_are_refused(verifier: JwtVerifier, keys: Keys) -> None:
    # PyJWT itself refuses extensions it does not know; "b64" it knows, and we do not use it.
    refused(verifier, make_token(keys.ec384, headers={"crit": ["exp"], "exp": 1}), "malformed")
    es384 = ECAlgorithm(ECAlgorithm.SHA384)
    token = hand_made_token(
        {"alg": "ES384", "typ": "JWT", "kid": "ec-1", "crit": ["b64"], "b64": True},
        standard_payload(),
        lambda data: es384.sign(data, keys.ec384),
    )
    refused(verifier, token, "unsupported-crit")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(verifier: JwtVerifier, keys: Keys, alg: str, httpserver: HTTPServer) -> None:
    token = hand_made_token({"alg": alg, "typ": "JWT", "kid": "ec-1"}, standard_payload(), lambda _: b"")
    refused(verifier, token, "alg-not-allowed")
    assert jwks_requests(httpserver) == 0


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def test_hs256_signed_with_the_public_key_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    # The classic confusion attack: the public key, which anyone can fetch, used as an HMAC secret.
    for key in (keys.rsa, keys.ec384):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kid = "rsa-1" if key is keys.rsa else "ec-1"
        token = hand_made_token({"alg": "HS256", "typ": "JWT", "kid": kid}, standard_payload(), hs256(pem))
        refused(verifier, token, "alg-not-allowed")


def test_hs256_with_a_random_secret_is_refused(verifier: JwtVerifier) -> None:
    token = jwt.encode(
        standard_payload(), "a-secret-at-least-32-bytes-long!!", algorithm="HS256", headers={"kid": "ec-1"}
    )
    refused(verifier, token, "alg-not-allowed")


@pytest.mark.parametrize("algorithms", [("ES384", "HS256"), ("none",), ("HS512",), ("RS384", "EdDSA"), ()])
def test_symmetric_none_or_unknown_algorithms_cannot_be_configured(
    algorithms: tuple[str, ...], jwks_url: str
) -> None:
    with pytest.raises(ValueError):
        JwtVerifier({ISSUER: jwks_url}, algorithms=algorithms)


def test_es256_is_refused_by_default_and_accepted_when_configured(
    make_verifier: Callable[..., JwtVerifier], keys: Keys
) -> None:
    refused(make_verifier(), make_token(keys.ec256, kid="ec256-1", alg="ES256"), "alg-not-allowed")
    configured = make_verifier(algorithms=("ES256", "ES384", "RS384"))
    token = make_token(keys.ec256, kid="ec256-1", alg="ES256")
    assert configured.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER


def test_alg_must_fit_the_key(verifier: JwtVerifier, keys: Keys) -> None:
    # An allowed alg naming the RSA key but signed with an EC key: the key decides, not the header.
    token = make_token(keys.ec384, kid="rsa-1", alg="ES384")
    refused(verifier, token, "alg-key-mismatch")
    token = make_token(keys.rsa, kid="ec-1", alg="RS384")
    refused(verifier, token, "alg-key-mismatch")


def test_signature_by_another_key_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.attacker, kid="ec-1"), "bad-signature")


def test_tampered_payload_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    header, _, signature = make_token(keys.ec384, aud="https://elsewhere.example/cds-services").split(".")
    forged_payload = b64url(json.dumps(standard_payload()).encode())
    refused(verifier, f"{header}.{forged_payload}.{signature}", "bad-signature")


# --- issuer, jku and keys ----------------------------------------------------------------------------------


def test_unknown_issuer_is_refused_without_fetching(
    verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer
) -> None:
    refused(verifier, make_token(keys.ec384, iss="https://attacker.example"), "unknown-issuer")
    refused(verifier, make_token(keys.ec384, drop=("iss",)), "unknown-issuer")
    assert jwks_requests(httpserver) == 0


def test_jku_pointing_elsewhere_is_refused_and_never_fetched(
    verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer, other_server: HTTPServer
) -> None:
    other_server.expect_request(JWKS_PATH).respond_with_json({"keys": [public_jwk(keys.attacker, "ec-1")]})
    token = make_token(keys.attacker, headers={"jku": other_server.url_for(JWKS_PATH)})
    refused(verifier, token, "jku-not-trusted")
    assert other_server.log == []
    assert jwks_requests(httpserver) == 0


def test_jku_equal_to_the_configured_url_is_accepted(
    verifier: JwtVerifier, keys: Keys, jwks_url: str
) -> None:
    shouted = jwks_url.replace("http://localhost", "HTTP://LOCALHOST")
    for jku in (jwks_url, shouted):
        token = make_token(keys.ec384, headers={"jku": jku})
        assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER


def test_jku_differing_in_path_is_refused(verifier: JwtVerifier, keys: Keys, jwks_url: str) -> None:
    refused(verifier, make_token(keys.ec384, headers={"jku": jwks_url + "?x=1"}), "jku-not-trusted")
    refused(verifier, make_token(keys.ec384, headers={"jku": jwks_url.upper()}), "jku-not-trusted")


def test_unknown_kid_refetches_once_then_rate_limits(
    verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer, clock: FakeClock
) -> None:
    verifier.verify(f"Bearer {make_token(keys.ec384)}", AUDIENCE)
    assert jwks_requests(httpserver) == 1

    # The client rotates to a new key after the rate-limit window.
    rotated = ec.generate_private_key(ec.SECP384R1())
    httpserver.clear_all_handlers()
    jwks = standard_jwks(keys)
    jwks["keys"].append(public_jwk(rotated, "ec-2", "ES384"))
    httpserver.expect_request(JWKS_PATH).respond_with_json(jwks)
    clock.now += 61
    assert verifier.verify(f"Bearer {make_token(rotated, kid='ec-2')}", AUDIENCE).issuer == ISSUER
    assert jwks_requests(httpserver) == 2

    # A made-up kid within the window costs no request, also when repeated.
    for kid in ("made-up-1", "made-up-2"):
        refused(verifier, make_token(keys.attacker, kid=kid), "unknown-kid")
    assert jwks_requests(httpserver) == 2
    # Known keys keep working meanwhile.
    assert verifier.verify(f"Bearer {make_token(keys.ec384)}", AUDIENCE).issuer == ISSUER

    clock.now += 61
    refused(verifier, make_token(keys.attacker, kid="made-up-3"), "unknown-kid")
    assert jwks_requests(httpserver) == 3


def test_key_set_is_refreshed_after_ttl_and_kept_if_refresh_fails(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, httpserver: HTTPServer, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks=JwksCache(clock=clock, ttl=600, min_refresh_interval=60))
    verifier.verify(f"Bearer {make_token(keys.ec384)}", AUDIENCE)
    httpserver.clear_all_handlers()
    httpserver.expect_request(JWKS_PATH).respond_with_data("down", status=503)
    clock.now += 601
    token = make_token(keys.ec384, iat=int(clock.now), exp=int(clock.now) + 300)
    # The stale key answers at once; the refresh runs behind it, fails, and the key keeps working.
    assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER
    eventually(lambda: jwks_requests(httpserver) == 2)
    time.sleep(0.2)  # let the failed refresh be recorded
    token = make_token(keys.ec384, iat=int(clock.now), exp=int(clock.now) + 300)
    assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER
    assert jwks_requests(httpserver) == 2  # and a failed refresh is not retried before its backoff


def test_key_removed_from_the_set_stops_working_after_refresh(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, httpserver: HTTPServer, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks=JwksCache(clock=clock, ttl=600))
    verifier.verify(f"Bearer {make_token(keys.rsa, kid='rsa-1', alg='RS384')}", AUDIENCE)
    httpserver.clear_all_handlers()
    only_ec = {"keys": [public_jwk(keys.ec384, "ec-1", "ES384")]}
    httpserver.expect_request(JWKS_PATH).respond_with_json(only_ec)
    clock.now += 601

    def removed_key_refused() -> bool:
        token = make_token(keys.rsa, kid="rsa-1", alg="RS384", iat=int(clock.now), exp=int(clock.now) + 300)
        try:
            verifier.verify(f"Bearer {token}", AUDIENCE)  # the stale set answers until the refresh lands
        except AuthenticationError as error:
            assert str(error) == "unknown-kid"
            return True
        return False

    eventually(removed_key_refused)
    assert jwks_requests(httpserver) == 2


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll `condition` (bounded in time) for work the JWKS cache does in a background thread."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_jwks_server_down_is_an_authentication_error(clock: FakeClock, keys: Keys) -> None:
    url = f"http://127.0.0.1:{free_port()}{JWKS_PATH}"
    verifier = JwtVerifier({ISSUER: url}, jwks=JwksCache(clock=clock, timeout=2.0), clock=clock)
    refused(verifier, make_token(keys.ec384), "jwks-unavailable")


@pytest.mark.parametrize(
    ("body", "status"),
    [("oops", 500), ("<html>not json</html>", 200), ('{"no": "keys"}', 200), ("x" * 300_000, 200)],
)
def test_bad_jwks_responses_are_authentication_errors(
    verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer, body: str, status: int
) -> None:
    httpserver.clear_all_handlers()
    httpserver.expect_request(JWKS_PATH).respond_with_data(body, status=status)
    refused(verifier, make_token(keys.ec384), "jwks-unavailable")
    # A failing server is not asked again within the rate-limit window.
    refused(verifier, make_token(keys.ec384), "jwks-unavailable")
    assert jwks_requests(httpserver) == 1


def test_redirects_are_not_followed(verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer) -> None:
    httpserver.clear_all_handlers()
    httpserver.expect_request(JWKS_PATH).respond_with_data(
        "", status=302, headers={"Location": httpserver.url_for("/moved.json")}
    )
    httpserver.expect_request("/moved.json").respond_with_json(standard_jwks(keys))
    refused(verifier, make_token(keys.ec384), "jwks-unavailable")
    assert jwks_requests(httpserver, "/moved.json") == 0


@pytest.mark.parametrize(
    ("kid", "jwk_extra"),
    [
        ("enc-1", {"use": "enc"}),
        ("ops-1", {"key_ops": ["encrypt"]}),
        ("wrong-alg", {"alg": "RS384"}),
    ],
)
def test_keys_not_meant_for_signatures_are_ignored(
    verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer, kid: str, jwk_extra: dict[str, Any]
) -> None:
    httpserver.clear_all_handlers()
    jwk = public_jwk(keys.ec384, kid, "ES384")
    jwk.update(jwk_extra)
    httpserver.expect_request(JWKS_PATH).respond_with_json({"keys": [jwk]})
    refused(verifier, make_token(keys.ec384, kid=kid), "unknown-kid")


def test_published_private_and_symmetric_keys_are_ignored(
    verifier: JwtVerifier, keys: Keys, httpserver: HTTPServer
) -> None:
    httpserver.clear_all_handlers()
    private = ECAlgorithm.to_jwk(keys.ec384, as_dict=True) | {"kid": "leaked", "alg": "ES384"}
    oct_key = {"kty": "oct", "kid": "oct-1", "k": b64url(b"0123456789abcdef0123456789abcdef")}
    httpserver.expect_request(JWKS_PATH).respond_with_json({"keys": [private, oct_key, "junk"]})
    refused(verifier, make_token(keys.ec384, kid="leaked"), "unknown-kid")


def test_preloaded_key_set_is_never_fetched(keys: Keys, clock: FakeClock) -> None:
    cache = JwksCache(session=NoNetworkSession(), clock=clock)
    cache.preload("https://ehr.example.org/jwks", {"keys": [public_jwk(keys.ec384, "ec-1", "ES384")]})
    verifier = JwtVerifier({ISSUER: "https://ehr.example.org/jwks"}, jwks=cache, clock=clock)
    assert verifier.verify(f"Bearer {make_token(keys.ec384)}", AUDIENCE).issuer == ISSUER
    refused(verifier, make_token(keys.attacker, kid="other"), "unknown-kid")


def test_preloading_an_unusable_key_set_fails_fast() -> None:
    cache = JwksCache(session=NoNetworkSession())
    with pytest.raises(ValueError):
        cache.preload("https://ehr.example.org/jwks", {"keys": [{"kty": "oct", "kid": "x", "k": "AAAA"}]})


# --- time claims -------------------------------------------------------------------------------------------


def test_expired_token_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, iat=int(NOW) - 400, exp=int(NOW) - 31), "expired")


def test_expiry_within_leeway_is_accepted(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.ec384, iat=int(NOW) - 300, exp=int(NOW) - 20)
    assert verifier.verify(f"Bearer {token}", AUDIENCE).expires_at == int(NOW) - 20


def test_iat_in_the_future_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, iat=int(NOW) + 120, exp=int(NOW) + 400), "iat-in-future")
    token = make_token(keys.ec384, iat=int(NOW) + 20, exp=int(NOW) + 300)  # clock skew within leeway
    assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER


def test_lifetime_longer_than_allowed_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, exp=int(NOW) + 3601), "lifetime-too-long")
    token = make_token(keys.ec384, exp=int(NOW) + 3600)
    assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER


def test_exp_before_iat_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, iat=int(NOW), exp=int(NOW) - 5), "exp-before-iat")


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_exp_and_iat_are_required(verifier: JwtVerifier, keys: Keys, claim: str) -> None:
    refused(verifier, make_token(keys.ec384, drop=(claim,)), f"bad-{claim}")


@pytest.mark.parametrize("value", ["1800000300", True, math.nan, math.inf, None])
def test_exp_must_be_a_finite_number(verifier: JwtVerifier, keys: Keys, value: Any) -> None:
    refused(verifier, make_token(keys.ec384, exp=value), "bad-exp")


# --- audience ----------------------------------------------------------------------------------------------


def test_wrong_audience_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, aud="https://cds.example.org/cds-services"), "bad-audience")
    refused(verifier, make_token(keys.ec384, aud=["https://other.example/a", 7]), "bad-audience")
    refused(verifier, make_token(keys.ec384, drop=("aud",)), "bad-audience")


def test_audience_list_containing_ours_is_accepted(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.ec384, aud=["https://other.example/cds-services", AUDIENCE])
    assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == ISSUER


def test_trailing_slash_on_either_side_is_accepted(verifier: JwtVerifier, keys: Keys) -> None:
    assert verifier.verify(f"Bearer {make_token(keys.ec384, aud=AUDIENCE + '/')}", AUDIENCE).issuer
    assert verifier.verify(f"Bearer {make_token(keys.ec384)}", AUDIENCE + "/").issuer


def test_any_of_several_configured_audiences_matches(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.ec384, aud="https://public.example.org/cds-services/breast-cancer-back-pain")
    audiences = [AUDIENCE, "https://public.example.org/cds-services/breast-cancer-back-pain"]
    assert verifier.verify(f"Bearer {token}", audiences).issuer == ISSUER


# --- jti replay --------------------------------------------------------------------------------------------


def test_replayed_jti_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.ec384, jti="once")
    verifier.verify(f"Bearer {token}", AUDIENCE)
    refused(verifier, token, "replayed-jti")
    # A new token reusing the jti is a replay too; another jti is fine.
    refused(verifier, make_token(keys.ec384, jti="once"), "replayed-jti")
    assert verifier.verify(f"Bearer {make_token(keys.ec384, jti='twice')}", AUDIENCE).jti == "twice"


def test_jti_is_scoped_per_issuer(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, jwks_url: str
) -> None:
    other_issuer = "https://other-ehr.example.org/fhir"
    verifier = make_verifier(trusted_issuers={ISSUER: jwks_url, other_issuer: jwks_url})
    verifier.verify(f"Bearer {make_token(keys.ec384, jti='shared')}", AUDIENCE)
    token = make_token(keys.ec384, jti="shared", iss=other_issuer)
    assert verifier.verify(f"Bearer {token}", AUDIENCE).issuer == other_issuer


def test_refused_token_does_not_burn_its_jti(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, jti="j", aud="https://elsewhere.example"), "bad-audience")
    assert verifier.verify(f"Bearer {make_token(keys.ec384, jti='j')}", AUDIENCE).jti == "j"


def test_missing_jti_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, drop=("jti",)), "missing-jti")
    refused(verifier, make_token(keys.ec384, jti=""), "missing-jti")


def test_concurrent_replays_let_exactly_one_through(verifier: JwtVerifier, keys: Keys) -> None:
    verifier.verify(f"Bearer {make_token(keys.ec384)}", AUDIENCE)  # warm the key cache
    token = make_token(keys.ec384)
    start = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        start.wait()
        try:
            verifier.verify(f"Bearer {token}", AUDIENCE)
            result = "ok"
        except AuthenticationError as error:
            result = str(error)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["replayed-jti"] * 7


def test_replay_cache_is_bounded_and_prunes_expired_entries(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, clock: FakeClock
) -> None:
    verifier = make_verifier(replay_cache_size=2)
    for jti in ("a", "b"):
        verifier.verify(f"Bearer {make_token(keys.ec384, jti=jti)}", AUDIENCE)
    refused(verifier, make_token(keys.ec384, jti="c"), "replayed-jti")  # full: fail closed
    clock.now += 300 + 30  # "a" and "b" expire at exp + leeway
    token = make_token(keys.ec384, jti="c", iat=int(clock.now), exp=int(clock.now) + 300)
    assert verifier.verify(f"Bearer {token}", AUDIENCE).jti == "c"


# --- Epic-style tokens -------------------------------------------------------------------------------------


def test_epic_style_token_with_sub_and_nbf_is_accepted(
    verifier: JwtVerifier, keys: Keys, jwks_url: str
) -> None:
    token = make_token(
        keys.rsa,
        kid="rsa-1",
        alg="RS384",
        headers={"jku": jwks_url},
        sub="epic-client-id",
        nbf=int(NOW) - 300,
        custom_claim="unknown claims are tolerated",
    )
    client = verifier.verify(f"Bearer {token}", AUDIENCE)
    assert client.subject == "epic-client-id"


def test_nbf_in_the_future_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    token = make_token(keys.rsa, kid="rsa-1", alg="RS384", nbf=int(NOW) + 120, exp=int(NOW) + 400)
    refused(verifier, token, "nbf-in-future")


def test_non_string_sub_or_tenant_is_refused(verifier: JwtVerifier, keys: Keys) -> None:
    refused(verifier, make_token(keys.ec384, sub=42), "bad-sub")
    refused(verifier, make_token(keys.ec384, tenant={"id": 1}), "bad-tenant")


# --- the real sandbox ---------------------------------------------------------------------------------------


def sandbox_tokens(data_dir: Path) -> list[str]:
    """Bearer tokens the real CDS Hooks sandbox sent (recorded in the captured exchange log, tests/data)."""
    log_path = data_dir / "cds-hooks-examples/observed-client-requests/http-exchange-log.json"
    log = json.loads(log_path.read_text())
    return [e["headers"]["Authorization"].split()[1] for e in log if "Authorization" in e["headers"]]


def sandbox_verifier(clock: Callable[[], float]) -> JwtVerifier:
    cache = JwksCache(session=NoNetworkSession())
    cache.preload(SANDBOX_JWKS_URL, sandbox_jwks())
    return JwtVerifier({SANDBOX_ISSUER: SANDBOX_JWKS_URL}, jwks=cache, clock=clock)


def test_real_sandbox_tokens_verify_against_the_sandbox_key(data_dir: Path) -> None:
    tokens = sandbox_tokens(data_dir)
    assert len(tokens) >= 2
    for token in tokens:
        claims = jwt.decode(token, options={"verify_signature": False})
        verifier = sandbox_verifier(FakeClock(claims["iat"]))
        client = verifier.verify(f"Bearer {token}", claims["aud"])
        assert client == VerifiedClient(SANDBOX_ISSUER, None, claims["jti"], None, claims["exp"])
        refused(verifier, token, "replayed-jti", claims["aud"])


def test_real_sandbox_token_is_refused_when_expired_or_for_another_endpoint(data_dir: Path) -> None:
    token = sandbox_tokens(data_dir)[0]
    claims = jwt.decode(token, options={"verify_signature": False})
    refused(sandbox_verifier(FakeClock(claims["exp"] + 31)), token, "expired")
    refused(sandbox_verifier(FakeClock(claims["iat"])), token, "bad-audience", "https://cds.example.org/x")


def test_sandbox_jwks_matches_the_sandbox_repository_copy(data_dir: Path) -> None:
    shared = json.loads((data_dir / "cds-hooks-examples/sandbox-jwks/jwks.json").read_text())
    assert sandbox_jwks() == shared
    sandbox_jwks()["keys"].clear()  # callers get a copy
    assert sandbox_jwks() == shared
