"""Verification of the JWT a CDS client sends as `Authorization: Bearer <JWT>` (CDS Hooks 2.0, "Trusting CDS
Clients", and the validation steps of cds-hooks.org/best-practices).

Order of checks: token shape and JOSE header, trusted issuer, `jku`, key, signature, claims, and last the
replay cache, so that a refused token never burns its `jti`.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidKeyError,
    InvalidSignatureError,
    PyJWTError,
)
from jwt.types import Options

from cds_hooks.security.jwks import AuthenticationError, JwksCache, check_jwks_url

__all__ = ["AuthenticationError", "JwtVerifier", "ReplayCache", "VerifiedClient"]

# The spec forbids `none` and symmetric algorithms; everything asymmetric that PyJWT verifies with EC/RSA keys
# may be configured (ES384 and RS384 are the spec's RECOMMENDED pair).
_ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ReplayCache(Protocol):
    """Remembers (iss, jti) pairs until their token expires. Several workers must share one (a database)."""

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        """Record `key`; False if it was already recorded (a replay) or cannot be recorded (fail closed).

        `key` must be remembered while `now < expires_at` for any later `now`: only an entry with
        `expires_at <= now` may be forgotten."""
        ...


@dataclass(frozen=True, slots=True)
class VerifiedClient:
    """Who called: safe to log (`issuer`, `tenant`, `jti`), never the token itself."""

    issuer: str
    tenant: str | None
    jti: str
    subject: str | None
    expires_at: int


class JwtVerifier:
    """Verifies CDS client JWTs against per-issuer JWKS URLs. Thread-safe."""

    def __init__(
        self,
        trusted_issuers: Mapping[str, str],
        algorithms: Collection[str] = ("ES384", "RS384"),
        leeway_seconds: int = 30,
        max_lifetime_seconds: int = 3600,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
        *,
        replay_cache_size: int = 100_000,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        """`trusted_issuers` maps each allowed `iss` to the JWKS URL its keys are taken from."""
        if isinstance(algorithms, str):
            raise ValueError("algorithms must be a collection of names, not one string")
        refused = sorted(set(algorithms) - _ASYMMETRIC_ALGORITHMS)
        if refused:
            raise ValueError(f"algorithms not allowed for CDS client JWTs: {refused}")
        if not algorithms:
            raise ValueError("at least one algorithm must be allowed")
        for issuer, url in trusted_issuers.items():
            if not issuer:
                raise ValueError("a trusted issuer needs a non-empty name")
            try:
                check_jwks_url(url)
            except ValueError as exc:
                raise ValueError(f"trusted issuer {issuer!r}: {exc}") from None
        if leeway_seconds < 0 or max_lifetime_seconds <= 0:
            raise ValueError("leeway_seconds must be >= 0 and max_lifetime_seconds > 0")
        self._issuers = dict(trusted_issuers)
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway_seconds
        self._max_lifetime = max_lifetime_seconds
        self._jwks = jwks if jwks is not None else JwksCache()
        self._clock = clock
        self._replay: ReplayCache = replay_cache if replay_cache is not None else _ReplayCache(replay_cache_size)

    def verify(self, authorization_header: str | None, audience: str | Collection[str]) -> VerifiedClient:
        """Authenticate one request. `audience` is the exact URL invoked (or the URLs it is known by).

        Raises AuthenticationError, whose message is a short reason and never contains the token.
        """
        audiences = _audience_set(audience)
        token = _bearer_token(authorization_header)
        header, unverified = _unverified_parts(token)

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthenticationError("alg-not-allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper().removeprefix("APPLICATION/") != "JWT":
            raise AuthenticationError("bad-typ")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("no-kid")
        if "crit" in header:  # no extension is understood here, so none may be critical (RFC 7515 §4.1.11)
            raise AuthenticationError("unsupported-crit")

        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self._issuers:
            raise AuthenticationError("unknown-issuer")
        jwks_url = self._issuers[issuer]
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or not _same_url(jku, jwks_url)):
            raise AuthenticationError("jku-not-trusted")

        signing_key = self._jwks.signing_key(jwks_url, kid)
        if alg not in signing_key.algorithms:
            raise AuthenticationError("alg-key-mismatch")
        claims = _verified_claims(token, signing_key.key, alg)
        # One instant for the expiry check and the replay cache: with two readings, a cache could forget the
        # jti between them (it prunes at its `now`) while the token still passed as unexpired at the first.
        now = self._clock()
        client, valid_until = self._check_claims(claims, issuer, audiences, now)
        # The token is accepted while now < exp + leeway, so its jti is kept until then, rounded up to a whole
        # second: no replay inside the last (fractional) second of its life, whatever store keeps it.
        if not self._replay.add((issuer, client.jti), math.ceil(valid_until), now):
            raise AuthenticationError("replayed-jti")
        return client

    def _check_claims(
        self, claims: Mapping[str, Any], issuer: str, audiences: frozenset[str], now: float
    ) -> tuple[VerifiedClient, float]:
        """The verified client and the instant until which its token is valid (exp + leeway)."""
        if claims.get("iss") != issuer:
            raise AuthenticationError("unknown-issuer")
        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        if now >= exp + self._leeway:
            raise AuthenticationError("expired")
        if iat > now + self._leeway:
            raise AuthenticationError("iat-in-future")
        if exp < iat:
            raise AuthenticationError("exp-before-iat")
        if exp - iat > self._max_lifetime:
            raise AuthenticationError("lifetime-too-long")
        if "nbf" in claims and _numeric_date(claims, "nbf") > now + self._leeway:
            raise AuthenticationError("nbf-in-future")

        aud = claims.get("aud")
        aud_values = [aud] if isinstance(aud, str) else aud
        if not isinstance(aud_values, list) or not any(
            isinstance(value, str) and value.rstrip("/") in audiences for value in aud_values
        ):
            raise AuthenticationError("bad-audience")

        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise AuthenticationError("missing-jti")
        tenant = _optional_string(claims, "tenant")
        subject = _optional_string(claims, "sub")
        return VerifiedClient(issuer, tenant, jti, subject, math.floor(exp)), exp + self._leeway


class _ReplayCache:
    """Seen (iss, jti) pairs until their token expires; bounded, so a full cache refuses (fails closed)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError("replay_cache_size must be > 0")
        self._max_entries = max_entries
        self._expiry: dict[tuple[str, str], float] = {}
        self._by_expiry: list[tuple[float, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        """Record `key`; False if it is already recorded (a replay) or there is no room."""
        with self._lock:
            while self._by_expiry and self._by_expiry[0][0] <= now:
                _, old = heapq.heappop(self._by_expiry)
                del self._expiry[old]
            if key in self._expiry or len(self._expiry) >= self._max_entries:
                return False
            self._expiry[key] = expires_at
            heapq.heappush(self._by_expiry, (expires_at, key))
            return True


def _audience_set(audience: str | Collection[str]) -> frozenset[str]:
    values = [audience] if isinstance(audience, str) else list(audience)
    if not values or not all(values):
        raise ValueError("an audience URL is required")
    # The spec says the exact URL invoked; EHR configuration varies on the trailing slash.
    return frozenset(value.rstrip("/") for value in values)


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header or not authorization_header.strip():
        raise AuthenticationError("no-token")
    parts = authorization_header.split()
    if parts[0].lower() != "bearer":
        raise AuthenticationError("not-bearer")
    if len(parts) != 2:
        raise AuthenticationError("malformed")
    return parts[1]


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload before the signature is checked: only to choose the issuer's key."""
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except PyJWTError:
        raise AuthenticationError("malformed") from None
    return header, payload


def _verified_claims(token: str, key: Any, alg: str) -> dict[str, Any]:
    # Only the signature is PyJWT's job: time claims are checked against our clock, `aud` with our rules.
    options: Options = {
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
        "enforce_minimum_key_length": True,
    }
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[alg], options=options)
    except InvalidSignatureError:
        raise AuthenticationError("bad-signature") from None
    except (InvalidAlgorithmError, InvalidKeyError):
        raise AuthenticationError("alg-key-mismatch") from None
    except DecodeError:
        raise AuthenticationError("malformed") from None
    except PyJWTError:
        raise AuthenticationError("invalid-token") from None
    return claims


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    # bool is an int, and Python's json accepts NaN/Infinity, which would defeat every comparison.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthenticationError(f"bad-{name}")
    return float(value)


def _optional_string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise AuthenticationError(f"bad-{name}")
    return value


def _same_url(a: str, b: str) -> bool:
    try:
        return _normalise_url(a) == _normalise_url(b)
    except ValueError:  # e.g. a port that is not a number
        return False


def _normalise_url(url: str) -> str:
    """Scheme and host in lower case, default port dropped, empty path as "/"; everything else as given."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    netloc = (f"{userinfo}@" if userinfo else "") + host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, parts.fragment))
