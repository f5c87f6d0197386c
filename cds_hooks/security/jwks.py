"""JWK Set retrieval and caching for CDS client keys.

A CDS client publishes its public keys as a JWK Set (RFC 7517). Keys are only ever taken from the JWKS URL
configured for a trusted issuer, never from a URL found in a token. A key set can also be preloaded (the
public CDS Hooks sandbox key, for development) and is then never fetched.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

__all__ = [
    "SANDBOX_ISSUER",
    "SANDBOX_JWKS_URL",
    "AuthenticationError",
    "JwksCache",
    "SigningKey",
    "check_jwks_url",
    "sandbox_jwks",
]

logger = logging.getLogger(__name__)

SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JWKS_URL = "https://sandbox.cds-hooks.org/.well-known/jwks.json"

# The public CDS Hooks sandbox key set, copied from shared/data/cds-hooks-examples/sandbox-jwks/jwks.json
# (cds-hooks/sandbox build/.well-known/jwks.json, served at SANDBOX_JWKS_URL; kid and alg match the sandbox's
# src/retrieve-data-helpers/jwt-generator.js). Its private key is published in the sandbox repository, so
# trusting it proves nothing about the caller: development only.
_SANDBOX_JWKS: dict[str, Any] = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
            "x": "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB",
            "y": "Sm3mLE-n1zYNla_aiE3cb3nZsL51RbC7ysw3q8aJLxGm-hx79RPMYpITDjp7kgzy",
            "alg": "ES384",
        }
    ]
}

# A JWK Set is a few kilobytes; anything much larger is not a key set we want to parse.
_MAX_JWKS_BYTES = 256 * 1024
_MIN_RSA_BITS = 2048
_EC_CURVE_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


class AuthenticationError(Exception):
    """The caller could not be authenticated.

    `str(error)` is a short internal reason for the log, such as "expired", "unknown-issuer", "bad-audience",
    "replayed-jti", "bad-signature", "alg-not-allowed", "no-token", "unknown-kid", "jku-not-trusted",
    "jwks-unavailable" or "malformed". It never contains the token. Clients get a generic 401 whatever it is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A client's public verification key and the JWS algorithms it may verify."""

    kid: str
    key: EllipticCurvePublicKey | RSAPublicKey
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class _KeySet:
    keys: Mapping[str, SigningKey]
    fetched_at: float
    preloaded: bool


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def check_jwks_url(url: str) -> None:
    """Raise ValueError unless `url` may be configured as an issuer's JWKS URL.

    It must be https, or http to a loopback host (tests, development). The URL is parsed and its host compared
    exactly: a prefix test would let `http://localhost.evil.example/` or `http://localhost@10.0.0.5/` through.
    Credentials in the URL are refused (requests would send them as Basic auth to whoever answers).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError:
        raise ValueError("JWKS URL is not a valid URL") from None
    if "@" in parts.netloc:
        raise ValueError("JWKS URL must not carry credentials (user@host)")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("JWKS URL needs a host")
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and host in _LOOPBACK_HOSTS):
        return
    raise ValueError("JWKS URL must be https (or http to localhost, 127.0.0.1 or [::1] for tests)")


def sandbox_jwks() -> dict[str, Any]:
    """The public CDS Hooks sandbox key set (a fresh copy; trust it in development only)."""
    return copy.deepcopy(_SANDBOX_JWKS)


class JwksCache:
    """Signing keys per JWKS URL, fetched with `requests` and cached.

    An unknown kid triggers a refetch (key rotation), at most once per `min_refresh_interval` per URL so
    that a flood of made-up kids cannot turn into a flood of requests. A cached set is refreshed after `ttl`;
    if that refresh fails, the keys already known keep working. Thread-safe.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        timeout: float = 3.0,
        min_refresh_interval: float = 60.0,
        ttl: float = 3600.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout
        self._min_refresh_interval = min_refresh_interval
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._sets: dict[str, _KeySet] = {}
        self._last_fetch: dict[str, float] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}

    def preload(self, jwks_url: str, jwks: Mapping[str, Any]) -> None:
        """Use `jwks` as the key set of `jwks_url` from now on; the URL is never fetched.

        Raises ValueError if `jwks` holds no usable signing key: this is configuration, so fail at startup.
        """
        keys = _parse_jwks(jwks, jwks_url)
        if not keys:
            raise ValueError("preloaded JWK Set has no usable signing key")
        with self._lock:
            self._sets[jwks_url] = _KeySet(keys, self._clock(), preloaded=True)

    def signing_key(self, jwks_url: str, kid: str) -> SigningKey:
        """The key `kid` from the key set at `jwks_url`.

        Raises AuthenticationError("unknown-kid") or AuthenticationError("jwks-unavailable").
        """
        with self._lock:
            cached = self._sets.get(jwks_url)
            if cached is not None and cached.preloaded:
                return _lookup(cached.keys, kid)
            if cached is not None and kid in cached.keys and not self._expired(cached):
                return cached.keys[kid]
            fetch_lock = self._fetch_locks.setdefault(jwks_url, threading.Lock())

        # One fetch per URL at a time; whoever waited re-reads the cache the winner just filled.
        with fetch_lock:
            with self._lock:
                cached = self._sets.get(jwks_url)
                if cached is not None and kid in cached.keys and not self._expired(cached):
                    return cached.keys[kid]
                now = self._clock()
                last = self._last_fetch.get(jwks_url)
                if last is not None and now - last < self._min_refresh_interval:
                    return _stale_or_raise(cached, kid)
                self._last_fetch[jwks_url] = now
            try:
                keys = _parse_jwks(self._fetch(jwks_url), jwks_url)
            except AuthenticationError:
                return _stale_or_raise(cached, kid)
            with self._lock:
                self._sets[jwks_url] = _KeySet(keys, now, preloaded=False)
        return _lookup(keys, kid)

    def _expired(self, key_set: _KeySet) -> bool:
        return self._clock() - key_set.fetched_at >= self._ttl

    def _fetch(self, jwks_url: str) -> Any:
        try:
            # No redirects: the key set must come from the URL configured for the issuer.
            with self._session.get(
                jwks_url,
                timeout=self._timeout,
                headers={"Accept": "application/json"},
                allow_redirects=False,
                stream=True,
            ) as response:
                if response.status_code != 200:
                    logger.warning("JWKS fetch from %s answered HTTP %d", jwks_url, response.status_code)
                    raise AuthenticationError("jwks-unavailable")
                body = bytearray()
                for chunk in response.iter_content(chunk_size=16384):
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        logger.warning("JWKS from %s is larger than %d bytes", jwks_url, _MAX_JWKS_BYTES)
                        raise AuthenticationError("jwks-unavailable")
            return json.loads(body)
        except requests.RequestException as exc:
            logger.warning("JWKS fetch from %s failed: %s", jwks_url, type(exc).__name__)
            raise AuthenticationError("jwks-unavailable") from exc
        except ValueError as exc:  # JSON or character decoding
            logger.warning("JWKS from %s is not JSON", jwks_url)
            raise AuthenticationError("jwks-unavailable") from exc


def _lookup(keys: Mapping[str, SigningKey], kid: str) -> SigningKey:
    try:
        return keys[kid]
    except KeyError:
        raise AuthenticationError("unknown-kid") from None


def _stale_or_raise(cached: _KeySet | None, kid: str) -> SigningKey:
    if cached is None:
        raise AuthenticationError("jwks-unavailable")
    return _lookup(cached.keys, kid)


def _parse_jwks(jwks: Any, source: str) -> dict[str, SigningKey]:
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        logger.warning("JWKS from %s is not a JWK Set", source)
        raise AuthenticationError("jwks-unavailable")
    keys: dict[str, SigningKey] = {}
    for jwk in jwks["keys"]:
        key = _signing_key(jwk, source)
        if key is not None:
            keys.setdefault(key.kid, key)  # kids are unique per the spec; keep the first if not
    return keys


def _signing_key(jwk: Any, source: str) -> SigningKey | None:
    """A usable verification key from one JWK, or None for keys we must not or cannot use."""
    if not isinstance(jwk, Mapping):
        return None
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if _PRIVATE_MEMBERS & jwk.keys():
        # A published private key means anyone can sign as this client.
        logger.warning("JWKS from %s publishes private key material for kid %s; key ignored", source, kid)
        return None
    try:
        if jwk.get("kty") == "EC":
            ec_key = ECAlgorithm.from_jwk(dict(jwk))
            curve_alg = _EC_CURVE_ALGORITHMS.get(jwk.get("crv", ""))
            if not isinstance(ec_key, EllipticCurvePublicKey) or curve_alg is None:
                return None
            return _with_declared_alg(kid, ec_key, frozenset({curve_alg}), jwk.get("alg"))
        if jwk.get("kty") == "RSA":
            rsa_key = RSAAlgorithm.from_jwk(dict(jwk))
            if not isinstance(rsa_key, RSAPublicKey) or rsa_key.key_size < _MIN_RSA_BITS:
                return None
            return _with_declared_alg(kid, rsa_key, _RSA_ALGORITHMS, jwk.get("alg"))
    except (InvalidKeyError, ValueError, TypeError):
        logger.warning("JWKS from %s has an unreadable key for kid %s; key ignored", source, kid)
    return None  # symmetric ("oct"), OKP and unknown key types are never client signing keys here


def _with_declared_alg(
    kid: str, key: EllipticCurvePublicKey | RSAPublicKey, possible: frozenset[str], declared: Any
) -> SigningKey | None:
    # A key that declares its algorithm verifies only that one (RFC 7517 §4.4).
    if declared is None:
        return SigningKey(kid, key, possible)
    if declared in possible:
        return SigningKey(kid, key, frozenset({declared}))
    return None
