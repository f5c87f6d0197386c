"""SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html): an access token by the
OAuth 2.0 client-credentials grant, authenticated by a JWT the client signs with its private key (RFC 7523).

The assertion: header `alg` (ES384 for an EC P-384 key, RS384 for RSA), `kid`, `typ: JWT`; claims `iss` = `sub`
= client id, `aud` = the token URL, `exp` within five minutes, a unique `jti`. A fresh assertion for every token
request; the token is reused until shortly before `expires_in` runs out, then replaced.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any, Literal

import jwt
import orjson
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_hooks.bulk.http import BulkExportError, TokenSource, Transport, outcome_text, read_bounded
from cds_hooks.settings import Settings, https_or_loopback

__all__ = ["BackendServicesAuth", "SigningKey", "discover_token_url", "load_signing_key"]

_log = logging.getLogger("mscc_alert.bulk")

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The IG allows at most 5 minutes; 4 leaves room for a server clock that runs ahead of ours.
_ASSERTION_SECONDS = 240
_MAX_RESPONSE_BYTES = 256 * 1024  # a token response or smart-configuration is a few hundred bytes
_MIN_RSA_BITS = 2048

SigningKey = tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, Literal["ES384", "RS384"]]


def load_signing_key(path: Path) -> SigningKey:
    """The private key and the algorithm it signs with; a clear `BulkExportError` for anything else."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise BulkExportError(f"MSCC_ALERT_BULK_PRIVATE_KEY_FILE: cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("the Bulk Data client's private key file is readable by other users: chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The message never quotes the key; cryptography's says "password" for encrypted keys.
        raise BulkExportError(f"MSCC_ALERT_BULK_PRIVATE_KEY_FILE: {path} is not an unencrypted PEM private key "
                              f"({type(exc).__name__})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise BulkExportError(f"MSCC_ALERT_BULK_PRIVATE_KEY_FILE: EC key on {key.curve.name}; ES384 needs P-384")
        return key, "ES384"
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise BulkExportError(f"MSCC_ALERT_BULK_PRIVATE_KEY_FILE: RSA key of {key.key_size} bits; "
                                  f"at least {_MIN_RSA_BITS} are needed")
        return key, "RS384"
    raise BulkExportError("MSCC_ALERT_BULK_PRIVATE_KEY_FILE: the key must be EC P-384 (ES384) or RSA (RS384)")


def discover_token_url(transport: Transport, fhir_base: str, algorithm: str) -> str:
    """`token_endpoint` from `[base]/.well-known/smart-configuration` (SMART App Launch, conformance)."""
    url = fhir_base.rstrip("/") + "/.well-known/smart-configuration"
    what = "SMART configuration request"
    response = transport.send("GET", url, what=what, headers={"Accept": "application/json"}, with_token=False)
    with response:
        if response.status_code != 200:
            raise BulkExportError(f"the {what} failed (HTTP {response.status_code}); set MSCC_ALERT_BULK_TOKEN_URL "
                                  "to the server's token endpoint")
        body = read_bounded(response, _MAX_RESPONSE_BYTES, what)
    try:
        config: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        config = None
    token_url = config.get("token_endpoint") if isinstance(config, dict) else None
    if not isinstance(token_url, str) or not https_or_loopback(token_url):
        raise BulkExportError("the server's smart-configuration has no usable https token_endpoint; set "
                              "MSCC_ALERT_BULK_TOKEN_URL")
    assert isinstance(config, dict)
    algorithms = config.get("token_endpoint_auth_signing_alg_values_supported")
    if isinstance(algorithms, list) and algorithms and algorithm not in algorithms:
        raise BulkExportError(f"the server accepts client assertions signed with {', '.join(map(str, algorithms))}"
                              f" only; the configured key signs {algorithm}")
    return token_url


class BackendServicesAuth(TokenSource):
    """Access tokens for one client at one token endpoint. Thread-safe: one token request at a time."""

    def __init__(self, *, token_url: str, client_id: str, key_id: str, key: SigningKey, scope: str,
                 settings: Settings, session: requests.Session | None = None) -> None:
        if not https_or_loopback(token_url):
            raise BulkExportError("the token endpoint must be https (plain http only to loopback)")
        self._token_url = token_url
        self._client_id = client_id
        self._key_id = key_id
        self._key, self._algorithm = key
        self._scope = scope
        self._timeout = (settings.bulk_connect_timeout, settings.bulk_read_timeout)
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": self._client_id, "sub": self._client_id, "aud": self._token_url,
                  "exp": now + _ASSERTION_SECONDS, "iat": now, "jti": secrets.token_urlsafe(24)}
        assertion: str = jwt.encode(claims, self._key, algorithm=self._algorithm,
                                    headers={"kid": self._key_id, "typ": "JWT"})
        return assertion

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def access_token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token, lifetime = self._request_token()
                # Renew a little before the server's expiry so a request never leaves with a dying token.
                self._renew_at = time.monotonic() + lifetime - min(30.0, lifetime * 0.2)
                _log.info("bulk access token obtained, valid for %.0f s", lifetime)
            return self._token

    def _request_token(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "scope": self._scope,
                "client_assertion_type": JWT_BEARER, "client_assertion": self.assertion()}
        what = "token request"
        try:
            response = self._session.post(
                self._token_url, data=form, headers={"Accept": "application/json"}, timeout=self._timeout,
                allow_redirects=False, stream=True,
            )
        except requests.RequestException:
            raise BulkExportError("the token endpoint could not be reached") from None
        with response:
            body = read_bounded(response, _MAX_RESPONSE_BYTES, what)
        try:
            answer: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict):
            raise BulkExportError(f"the token endpoint refused the client (HTTP {response.status_code}"
                                  f"{_oauth_error(answer) or _prefixed(outcome_text(body))})")
        token = answer.get("access_token")
        if not isinstance(token, str) or not token or str(answer.get("token_type", "")).lower() != "bearer":
            raise BulkExportError("the token endpoint's answer has no bearer access_token")
        expires_in = answer.get("expires_in", 300)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        return token, lifetime


def _prefixed(text: str) -> str:
    return f": {text}" if text else ""


def _oauth_error(answer: object) -> str:
    """`error` and `error_description` of an OAuth 2.0 error response (RFC 6749 §5.2), bounded."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, str):
        return ""
    description = answer.get("error_description") if isinstance(answer, dict) else None
    text = error + (f": {description}" if isinstance(description, str) else "")
    return ": " + "".join(c for c in text[:300] if c.isprintable())


def build_auth(settings: Settings, transport: Transport, fhir_base: str) -> BackendServicesAuth | None:
    """None without credentials configured (an open server); the settings validator saw all three or none."""
    if not settings.bulk_client_id:
        return None
    assert settings.bulk_private_key_file is not None and settings.bulk_key_id is not None
    key = load_signing_key(Path(os.path.expanduser(settings.bulk_private_key_file)))
    token_url = settings.bulk_token_url or discover_token_url(transport, fhir_base, key[1])
    return BackendServicesAuth(token_url=token_url, client_id=settings.bulk_client_id,
                               key_id=settings.bulk_key_id, key=key, scope=settings.bulk_scope, settings=settings,
                               session=transport.session)
