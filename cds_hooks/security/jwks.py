"""JWK Set retrieval and caching for CDS client keys.

A CDS client publishes its public keys as a JWK Set (RFC 7517). Keys are only ever taken from the JWKS URL
configured for a trusted issuer, never from a URL found in a token. A key set can also be preloaded (the
public CDS Hooks sandbox key, for development) and is then never fetched.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.response
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError
from requests.adapters import HTTPAdapter

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

# The public CDS Hooks sandbox key set, also in tests/data/cds-hooks-examples/sandbox-jwks/jwks.json
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
    "jwks-unavailable", "jwks-busy" or "malformed". It never contains the token. Clients get a generic 401
    whatever it is.
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
    """Signing keys per JWKS URL, fetched with `requests` and cached. Thread-safe.

    Isolation (one slow or failing key server must not hold up anyone else):
    - every fetch runs in a thread of its own, at most one per URL at a time, and ends at `fetch_seconds`
      whatever the server does (a watchdog shuts the socket: per-read timeouts alone let a server that drips
      a byte a second hold a fetch for ever);
    - a key already cached never waits: when the set is older than `ttl`, the known keys keep answering while
      a refresh runs in the background;
    - only a kid that is not cached waits for a fetch, at most `fetch_seconds`, and at most `max_waiters`
      verifications per URL wait at once (the rest are refused at once), so junk tokens naming a slow issuer
      hold a handful of threads, not all of them.

    An unknown kid triggers a refetch (key rotation), at most once per `min_refresh_interval` per URL after a
    successful fetch, so that a flood of made-up kids cannot turn into a flood of requests; after a failed
    fetch the next one may start after `retry_seconds`. If a refresh fails, the keys already known keep working.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        timeout: float = 3.0,
        min_refresh_interval: float = 60.0,
        ttl: float = 3600.0,
        *,
        fetch_seconds: float = 5.0,
        retry_seconds: float = 5.0,
        max_waiters: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fetch_seconds <= 0 or timeout <= 0 or retry_seconds < 0 or max_waiters < 1:
            raise ValueError("fetch_seconds and timeout must be > 0, retry_seconds >= 0, max_waiters >= 1")
        self._session = session if session is not None else requests.Session()
        adapter = _AbortableAdapter(max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._timeout = min(timeout, fetch_seconds)
        self._fetch_seconds = fetch_seconds
        self._retry_seconds = retry_seconds
        self._max_waiters = max_waiters
        self._min_refresh_interval = min_refresh_interval
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}

    def preload(self, jwks_url: str, jwks: Mapping[str, Any]) -> None:
        """Use `jwks` as the key set of `jwks_url` from now on; the URL is never fetched.

        Raises ValueError if `jwks` holds no usable signing key: this is configuration, so fail at startup.
        """
        keys = _parse_jwks(jwks, jwks_url)
        if not keys:
            raise ValueError("preloaded JWK Set has no usable signing key")
        with self._lock:
            self._sources[jwks_url] = _Source(keys=_KeySet(keys, self._clock(), preloaded=True))

    def signing_key(self, jwks_url: str, kid: str) -> SigningKey:
        """The key `kid` from the key set at `jwks_url`.

        Raises AuthenticationError("unknown-kid"), ("jwks-unavailable") or ("jwks-busy": too many
        verifications already wait for this URL's fetch).
        """
        with self._lock:
            source = self._sources.setdefault(jwks_url, _Source())
            cached = source.keys
            if cached is not None and (cached.preloaded or kid in cached.keys):
                if not cached.preloaded and self._clock() - cached.fetched_at >= self._ttl:
                    self._start_fetch(jwks_url, source)  # stale while revalidating: nobody waits for it
                return _lookup(cached.keys, kid)
            pending = source.inflight or self._start_fetch(jwks_url, source)
            if pending is None:  # fetched (or failed) too recently to ask again
                return _stale_or_raise(cached, kid)
            if source.waiters >= self._max_waiters:
                logger.warning("JWKS %s: %d verifications already wait for its fetch; refused", jwks_url,
                               source.waiters)
                raise AuthenticationError("jwks-busy")
            source.waiters += 1
        try:
            pending.wait(self._fetch_seconds)
        finally:
            with self._lock:
                source.waiters -= 1
                cached = source.keys
        return _stale_or_raise(cached, kid)

    def _start_fetch(self, jwks_url: str, source: _Source) -> threading.Event | None:
        """Start the one fetch of `jwks_url` unless one runs or the last was too recent (holding the lock)."""
        if source.inflight is not None:
            return source.inflight
        now = self._clock()
        if source.last_attempt is not None:
            pause = self._retry_seconds if source.last_failed else self._min_refresh_interval
            expired = source.keys is not None and now - source.keys.fetched_at >= self._ttl
            if now - source.last_attempt < pause and not (expired and not source.last_failed):
                return None
        source.last_attempt = now
        done = source.inflight = threading.Event()
        threading.Thread(
            target=self._refresh, args=(jwks_url, source, done), name="jwks-fetch", daemon=True
        ).start()
        return done

    def _refresh(self, jwks_url: str, source: _Source, done: threading.Event) -> None:
        keys: dict[str, SigningKey] | None = None
        try:
            keys = _parse_jwks(self._fetch(jwks_url), jwks_url)
        except AuthenticationError:
            pass  # logged where it was raised
        except Exception:  # never leave waiters hanging on a fetch thread that died
            logger.exception("JWKS fetch from %s failed unexpectedly", jwks_url)
        finally:
            with self._lock:
                if keys is not None:
                    source.keys = _KeySet(keys, self._clock(), preloaded=False)
                source.last_failed = keys is None
                source.inflight = None
            done.set()

    def _fetch(self, jwks_url: str) -> Any:
        watchdog = _Watchdog()
        timer = threading.Timer(self._fetch_seconds, watchdog.expire)
        timer.daemon = True
        timer.start()
        _fetching.watchdog = watchdog
        try:
            # No redirects: the key set must come from the URL configured for the issuer.
            with self._session.get(
                jwks_url,
                timeout=self._timeout,
                headers={"Accept": "application/json", "Connection": "close"},
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
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if watchdog.expired:
                logger.warning("JWKS fetch from %s did not finish within %gs", jwks_url, self._fetch_seconds)
            else:
                logger.warning("JWKS fetch from %s failed: %s", jwks_url, type(exc).__name__)
            raise AuthenticationError("jwks-unavailable") from exc
        except ValueError as exc:  # JSON or character decoding
            logger.warning("JWKS from %s is not JSON", jwks_url)
            raise AuthenticationError("jwks-unavailable") from exc
        finally:
            _fetching.watchdog = None
            watchdog.finish()
            timer.cancel()


@dataclass(slots=True)
class _Source:
    """One JWKS URL: its keys, and the state of fetching them (guarded by the cache's lock)."""

    keys: _KeySet | None = None
    inflight: threading.Event | None = None  # set when the fetch under way has finished
    last_attempt: float | None = None
    last_failed: bool = False
    waiters: int = 0


class _Watchdog:
    """Shuts the sockets of one fetch when its time is up, so that the blocked read returns at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._finished = False
        self.expired = False

    def watch(self, sock: Any) -> None:
        raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
        if not isinstance(raw, socket.socket):
            return
        with self._lock:
            if self._finished:
                return
            self._sockets.append(raw)
            if self.expired:
                _shut(raw)

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            for raw in self._sockets:
                _shut(raw)

    def finish(self) -> None:
        # After this the sockets may be closed and their descriptors reused: never touch them again.
        with self._lock:
            self._finished = True
            self._sockets.clear()


def _shut(raw: socket.socket) -> None:
    # The plain-socket method also for a TLS socket: its own shutdown() would tear down the TLS state under the
    # reading thread. Shutting the descriptor makes that thread's recv return at once. OSError: already closed.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(raw, socket.SHUT_RDWR)


class _Fetching(threading.local):
    watchdog: _Watchdog | None = None


_fetching = _Fetching()


def _watch_connection(connection: Any) -> None:
    watchdog = _fetching.watchdog
    if watchdog is not None:
        watchdog.watch(connection.sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> urllib3.response.BaseHTTPResponse:  # type: ignore[override]
        # Connected by now (new or reused), and reading the status line and headers is what a slow server drips.
        _watch_connection(self)
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> urllib3.response.BaseHTTPResponse:  # type: ignore[override]
        _watch_connection(self)
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool, "https": _WatchedHTTPSPool
}


class _AbortableAdapter(HTTPAdapter):
    """requests' adapter whose connections a `_Watchdog` can shut, direct or through a proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # An HTTP(S) proxy connects through the standard pools; a SOCKS proxy has pools of its own, which are
        # kept (its fetches are then ended by their per-read timeout only; waiters still stop at the deadline).
        if type(manager) is urllib3.ProxyManager:
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


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
