"""HTTP for the Bulk Data client.

Rules every request here keeps:
- https only, plain http to loopback aside (`https_or_loopback`), checked on every URL and every redirect hop;
- the bearer token goes only to the export server's origin (exact scheme, host and port) and to the origins
  configured in `MSCC_ALERT_BULK_TOKEN_ORIGINS`: redirects are followed by hand so each hop is judged anew;
- a 401 with a token attached gets one retry with a fresh token (it may have expired during a long export);
- error messages name what was being fetched and the HTTP status, never a URL, a token or a resource.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests
import urllib3.exceptions

from cds_hooks.protocol.fhir_client import BearerAuth  # also keeps .netrc credentials out
from cds_hooks.settings import Settings, https_or_loopback

__all__ = [
    "BulkExportError",
    "Origin",
    "TransientError",
    "Transport",
    "failure_message",
    "origin",
    "outcome_codes",
    "outcome_text",
    "read_bounded",
    "retry_after_seconds",
    "sleep_until",
]

_log = logging.getLogger("mscc_alert.bulk")

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
_CHUNK_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class BulkExportError(Exception):
    """The export could not be obtained; `str()` is safe to print: no URL, token or resource in it."""


class TransientError(BulkExportError):
    """A failure worth retrying (network, timeout, 429, 5xx that the server calls transient)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def origin(url: str) -> Origin:
    """The exact origin: no equating `localhost` with `127.0.0.1`, default ports made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, -1)


class TokenSource:
    """What `Transport` needs from SMART Backend Services (cds_hooks/bulk/auth.py)."""

    def access_token(self) -> str:
        raise NotImplementedError

    def invalidate(self, token: str) -> None:
        """`token` was refused: drop it, unless another thread has replaced it already."""
        raise NotImplementedError


class Transport:
    """Keep-alive sessions to the export and file servers for the whole export."""

    def __init__(self, settings: Settings, token_origins: Sequence[str]) -> None:
        self._timeout = (settings.bulk_connect_timeout, settings.bulk_read_timeout)
        self._token_source: TokenSource | None = None
        self._token_origins = frozenset(origin(o) for o in token_origins)
        self._local = threading.local()  # a session per thread: files download in parallel
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def use_token_source(self, token_source: TokenSource | None) -> None:
        self._token_source = token_source

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()

    def sends_token_to(self, url: str) -> bool:
        return self._token_source is not None and origin(url) in self._token_origins

    def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        with_token: bool = True,
        stream: bool = True,
    ) -> requests.Response:
        """One request (redirects followed by hand). Network failures raise `TransientError`."""
        retried_401 = False
        for _ in range(_MAX_REDIRECTS + 1):
            if not https_or_loopback(url):
                raise BulkExportError(f"refusing the {what}: its URL is not https (plain http only to loopback)")
            token = None
            if with_token and self._token_source is not None and origin(url) in self._token_origins:
                token = self._token_source.access_token()
            try:
                response = self.session.request(
                    method, url, params=params, headers=dict(headers or {}), auth=BearerAuth(token),
                    timeout=self._timeout, stream=stream, allow_redirects=False,
                )
            except requests.Timeout:
                raise TransientError(f"the {what} timed out") from None
            except requests.RequestException:
                # `from None`: the chained exception would print the URL in a traceback.
                raise TransientError(f"the {what} could not reach the server") from None
            if response.status_code == 401 and token is not None and not retried_401 and self._token_source:
                response.close()
                retried_401 = True
                self._token_source.invalidate(token)
                continue
            location = response.headers.get("Location")
            if response.status_code in _REDIRECTS and location:
                response.close()
                url = urljoin(url, location)
                params = None  # the Location carries its own query
                if response.status_code == 303:
                    method = "GET"
                continue
            return response
        raise BulkExportError(f"the {what} was redirected more than {_MAX_REDIRECTS} times")


def read_bounded(response: requests.Response, max_bytes: int, what: str) -> bytes:
    """The decoded body, refused as soon as it passes `max_bytes` (never read whole first)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := response.raw.read(_CHUNK_BYTES, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise BulkExportError(f"the {what} is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
        raise TransientError(f"the {what} was cut off") from None
    return b"".join(chunks)


def retry_after_seconds(response: requests.Response, now: Callable[[], datetime] = lambda: datetime.now(UTC)
                        ) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None if absent or unreadable."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


def outcome_text(body: bytes, limit: int = 300) -> str:
    """The diagnostics of an OperationOutcome body, one line, bounded; '' when it is not one.

    Shown to the person running the command (never logged): servers put the reason here."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(document, dict) or document.get("resourceType") != "OperationOutcome":
        return ""
    texts: list[str] = []
    for issue in document.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        for text in (issue.get("diagnostics"), details.get("text") if isinstance(details, dict) else None):
            if isinstance(text, str) and text.strip() and text.strip() not in texts:
                texts.append(text.strip())
    joined = _CONTROL.sub(" ", "; ".join(texts))
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def failure_message(what: str, status: int, body: bytes) -> str:
    diagnostics = outcome_text(body)
    return f"{what} failed (HTTP {status})" + (f": {diagnostics}" if diagnostics else "")


def outcome_codes(body: bytes) -> set[str]:
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return set()
    if not isinstance(document, dict) or document.get("resourceType") != "OperationOutcome":
        return set()
    return {i["code"] for i in document.get("issue") or [] if isinstance(i, dict) and isinstance(i.get("code"), str)}


def sleep_until(seconds: float, deadline: float) -> None:
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))
