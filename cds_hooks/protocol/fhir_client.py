"""FHIR-server client for prefetch keys the CDS client left out (CDS Hooks 2.0 §Prefetch).

The service must then "programmatically retrieve" the data from `fhirServer` with the
`fhirAuthorization` bearer token. Every way this can go wrong becomes one `FhirFetchError` with a short
`reason`, so the caller can answer 412 or degrade without reading `requests` internals.

Safety rules this module keeps:
- the access token is sent only to the exact scheme+host+port of `base_url` (next links elsewhere are refused,
  `localhost` and `127.0.0.1` included: they can be different listeners; redirects are not followed; a `.netrc`
  or a session-wide `Authorization` header never replaces it);
- error messages and tracebacks name the resource type only, never a URL (the query holds the patient id)
  nor the token;
- a response is read as a stream against one `FetchBudget` of bytes and seconds shared by every key and page
  of a hook call, and is never parsed before it is known to be within it;
- a search is never silently truncated: hitting a limit is an error, because a partial chart could hide
  the evidence the rules look for.
"""

from __future__ import annotations

import contextlib
import mmap
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import msgspec
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.utils import requote_uri

__all__ = ["BearerAuth", "FetchBudget", "FetchFailure", "FetchLimits", "FhirClient", "FhirFetchError"]

FetchFailure = Literal[
    "unauthorized",
    "forbidden",
    "not-found",
    "server-error",
    "unreachable",
    "timeout",
    "invalid-response",
    "page-limit",
    "too-large",
    "foreign-next-link",
]

_STATUS_REASONS: dict[int, FetchFailure] = {401: "unauthorized", 403: "forbidden", 404: "not-found"}
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_CHUNK_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class FetchLimits:
    connect_timeout: float = 2.0  # seconds
    read_timeout: float = 5.0  # seconds without a byte arriving
    max_pages: int = 20  # pages per search, the first one included
    total_seconds: float = 10.0  # wall-clock budget for one hook call's fetches, parsing included
    max_bytes: int = 32 * 1024 * 1024  # decoded body bytes for one hook call, every key and page included


class FetchBudget:
    """What one hook call may spend on FHIR fetches: bytes and wall-clock seconds, shared by all its keys and
    pages (thread-safe). Bytes are counted as they arrive, never given back."""

    def __init__(self, max_bytes: int, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self._bytes_left = max_bytes
        self._lock = threading.Lock()

    @classmethod
    def of(cls, limits: FetchLimits) -> FetchBudget:
        return cls(limits.max_bytes, limits.total_seconds)

    @property
    def bytes_left(self) -> int:
        return self._bytes_left

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def take(self, size: int) -> bool:
        """Spend `size` bytes; False (and the budget is spent for every key) if they are not there."""
        with self._lock:
            if size > self._bytes_left:
                self._bytes_left = -1
                return False
            self._bytes_left -= size
            return True


class FhirFetchError(Exception):
    """The FHIR server could not supply the data; `str()` is safe to log (never a URL, an id or a token), but
    it names network detail (status, timeout): clients are told only that the data could not be fetched."""

    def __init__(self, reason: FetchFailure, status: int | None = None, resource_type: str | None = None):
        self.reason: FetchFailure = reason
        self.status = status
        self.resource_type = resource_type
        message = f"FHIR fetch failed: {reason}"
        if status is not None:
            message += f" (HTTP {status})"
        if resource_type is not None:
            message += f" for {resource_type}"
        super().__init__(message)


class BearerAuth(AuthBase):
    """Sets exactly our Authorization header, or none.

    Passing an auth object also stops requests from falling back to `.netrc` credentials, which would
    otherwise replace the bearer token (or add Basic credentials to an open server).
    """

    def __init__(self, token: str | None) -> None:
        self._header = None if token is None else f"Bearer {token}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._header is None:
            r.headers.pop("Authorization", None)
        else:
            r.headers["Authorization"] = self._header
        return r

    def __repr__(self) -> str:
        return "<BearerAuth>"


def _origin(url: str) -> tuple[str, str, int]:
    """Exact scheme, host and port: `localhost`, `127.0.0.1` and `[::1]` are three origins, because on one
    port they can be three listeners."""
    parts = urlsplit(url)
    if "@" in parts.netloc:  # credentials of its own: never a next link of ours
        raise ValueError("userinfo in URL")
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme, -1)  # ValueError on a malformed port
    return scheme, (parts.hostname or "").lower(), port


class _Watchdog:
    """Shuts down the sockets of one client when told to: the read timeout restarts with every byte, so a server
    that drips its status line and headers would otherwise hold a fetch as long as it likes. Thread-safe."""

    def __init__(self) -> None:
        self.fired = False
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            if self.fired:
                _shut(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut(sock)

    def reset(self) -> None:
        with self._lock:
            self.fired = False


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose connections register their socket with a watchdog as they connect."""

    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__(max_retries=0)
        self._watchdog = watchdog
        self._classes: dict[type, type] = {}

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool: Any = super().get_connection_with_tls_context(*args, **kwargs)  # an urllib3 HTTP(S)ConnectionPool
        base = type(pool).ConnectionCls
        if base not in self._classes:
            watchdog = self._watchdog

            class Watched(base):  # type: ignore[valid-type, misc]
                def connect(self) -> None:
                    super().connect()
                    watchdog.track(self.sock)

            self._classes[base] = Watched
        pool.ConnectionCls = self._classes[base]
        return pool


class _PageLink(msgspec.Struct, gc=False):
    relation: str | None = None
    url: str | None = None


class _PageHead(msgspec.Struct, gc=False):
    """What the client reads of a page: its type and links. Entries are skipped by the decoder, not built."""

    resourceType: str = ""
    link: list[_PageLink] | None = None


_head_decoder = msgspec.json.Decoder(_PageHead)


def _classify(relative_url: str) -> tuple[str, str, bool]:
    """(resource type, resourceType the answer must have, whether it is a search) for the prefetch query
    subset: instance reads `Type/id` and type-level searches `Type?...`."""
    # Only a leading slash is forgiven: "Patient/" is an empty id, not a search of every patient.
    segments = relative_url.partition("?")[0].lstrip("/").split("/")
    if not _RESOURCE_TYPE.fullmatch(segments[0]):
        raise ValueError("relative_url must start with a FHIR resource type")
    if len(segments) == 1:
        return segments[0], "Bundle", True
    if len(segments) == 2 and _FHIR_ID.fullmatch(segments[1]) and segments[1].strip("."):
        return segments[0], segments[0], False
    raise ValueError("relative_url must be an instance read 'Type/id' or a type-level search 'Type?...'")


class FhirClient:
    """Fetches prefetch-template URLs from one FHIR server, reusing one `requests.Session` (keep-alive).

    Not safe for concurrent use from several threads if the session is not.
    """

    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        limits: FetchLimits = FetchLimits(),
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("base_url must be an http(s) URL with a host and no query or fragment")
        if limits.max_pages < 1 or limits.max_bytes < 1:
            raise ValueError("max_pages and max_bytes must be positive")
        # A trailing slash makes both string joining and urljoin keep the last path segment ("/fhir").
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._origin = _origin(self._base)
        self._auth = BearerAuth(access_token)
        self._limits = limits
        self._owns_session = session is None
        self._session = requests.Session() if session is None else session
        self._watchdog = _Watchdog()
        if self._owns_session:  # a caller's session is left as it is (and not watched)
            for scheme in ("http://", "https://"):
                self._session.mount(scheme, _WatchedAdapter(self._watchdog))

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch(self, relative_url: str, budget: FetchBudget | None = None) -> list[bytes]:
        """Run one filled prefetch template; return the raw body of each page, in order (see `pages`)."""
        return [bytes(page) for page in self.pages(relative_url, budget)]

    def pages(self, relative_url: str, budget: FetchBudget | None = None) -> Iterator[memoryview]:
        """Run one filled prefetch template and yield the raw body of each page as it arrives, so a caller can
        read a page and drop it before the next one is fetched.

        A read gives one body; a search gives one per page, following `Bundle.link[relation=next]`.
        `budget` (default: a fresh one from the limits) bounds bytes and time, and may be shared by several
        fetches. Raises `FhirFetchError` on any failure and `ValueError` for a URL outside the prefetch subset.
        """
        resource_type, expected, is_search = _classify(relative_url)
        budget = budget or FetchBudget.of(self._limits)
        url = self._base + relative_url.lstrip("/")
        seen = {requote_uri(url)}
        count = 0
        while True:
            status, body = self._get(url, budget, resource_type)
            next_link = _check_page(body, status, expected, resource_type, is_search)
            count += 1
            yield body
            del body
            if next_link is None:
                return
            url = urljoin(self._base, next_link)  # FHIR: relative URLs are relative to the service base
            try:
                same_origin = _origin(url) == self._origin
            except ValueError:
                same_origin = False
            if not same_origin:
                raise FhirFetchError("foreign-next-link", None, resource_type)
            if requote_uri(url) in seen or count >= self._limits.max_pages:
                raise FhirFetchError("page-limit", None, resource_type)
            seen.add(requote_uri(url))

    def _get(self, url: str, budget: FetchBudget, resource_type: str) -> tuple[int, memoryview]:
        remaining = budget.seconds_left()
        if remaining <= 0:
            raise FhirFetchError("timeout", None, resource_type)
        timeout = (min(self._limits.connect_timeout, remaining), min(self._limits.read_timeout, remaining))
        self._watchdog.reset()
        alarm = threading.Timer(remaining, self._watchdog.fire)
        alarm.daemon = True
        alarm.start()
        try:
            return self._request(url, timeout, budget, resource_type)
        except FhirFetchError as exc:
            if self._watchdog.fired:  # the socket was shut at the deadline: whatever broke, it is a timeout
                raise FhirFetchError("timeout", exc.status, resource_type) from None
            raise
        finally:
            alarm.cancel()

    def _request(self, url: str, timeout: tuple[float, float], budget: FetchBudget,
                 resource_type: str) -> tuple[int, memoryview]:
        # `from None` throughout: the chained requests/urllib3 exception would print the URL in tracebacks.
        try:
            response = self._session.get(
                url,
                headers={"Accept": "application/fhir+json"},
                auth=self._auth,
                timeout=timeout,
                stream=True,
                allow_redirects=False,  # a redirect may lead anywhere; the token must stay on base_url
            )
        except requests.Timeout:
            raise FhirFetchError("timeout", None, resource_type) from None
        except (requests.RequestException, ValueError):  # ValueError: a URL urllib3 cannot parse
            raise FhirFetchError("unreachable", None, resource_type) from None
        with response:
            status = response.status_code
            if not 200 <= status < 300:
                raise FhirFetchError(_STATUS_REASONS.get(status, "server-error"), status, resource_type)
            return status, _read_body(response, budget, resource_type)


def _read_body(response: requests.Response, budget: FetchBudget, resource_type: str) -> memoryview:
    """Stream the decoded body into one buffer, giving up as soon as the budget is crossed rather than after
    the download (a declared length beyond it is refused before a byte is read).

    The buffer is an anonymous mapping as large as what is left of the budget: its pages cost memory only once
    written, and it never grows by copies (a growing bytearray briefly holds the body twice).

    `read1` returns whatever has arrived, so a server dripping bytes just under the read timeout still
    meets the deadline check; `stream()`/`read(n)` would block until n bytes came.
    """
    status = response.status_code
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > budget.bytes_left:
        budget.take(int(declared))  # spends the budget: the other keys of the call stop too
        raise FhirFetchError("too-large", status, resource_type)
    if budget.bytes_left <= 0:
        raise FhirFetchError("too-large", status, resource_type)
    body = mmap.mmap(-1, budget.bytes_left)
    size = 0
    try:
        while chunk := response.raw.read1(_CHUNK_BYTES, decode_content=True):
            if not budget.take(len(chunk)):
                raise FhirFetchError("too-large", status, resource_type)
            if budget.seconds_left() <= 0:
                raise FhirFetchError("timeout", status, resource_type)
            body[size:size + len(chunk)] = chunk  # within the mapping: the budget had room for it
            size += len(chunk)
    except urllib3.exceptions.ReadTimeoutError:
        raise FhirFetchError("timeout", status, resource_type) from None
    except urllib3.exceptions.DecodeError:
        raise FhirFetchError("invalid-response", status, resource_type) from None
    except urllib3.exceptions.HTTPError:  # connection dropped mid-body
        raise FhirFetchError("unreachable", status, resource_type) from None
    return memoryview(body)[:size]  # unmapped once the last view of it is gone


def _check_page(body: memoryview, status: int, expected: str, resource_type: str, is_search: bool) -> str | None:
    """Check the page is the resource type asked for (an OperationOutcome never is, so a 2xx carrying one is
    rejected too) and return its next link, reading nothing else: entries are left for the caller."""
    try:
        head = _head_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise FhirFetchError("invalid-response", status, resource_type) from None
    if head.resourceType != expected:
        raise FhirFetchError("invalid-response", status, resource_type)
    if not is_search:
        return None
    for link in head.link or ():
        if link.relation == "next":
            if not link.url:
                raise FhirFetchError("invalid-response", status, resource_type)
            return link.url
    return None
