"""FHIR-server client for prefetch keys the CDS client left out (CDS Hooks 2.0 §Prefetch).

The service must then "programmatically retrieve" the data from `fhirServer` with the
`fhirAuthorization` bearer token. Every way this can go wrong becomes one `FhirFetchError` with a short
`reason`, so the caller can answer 412 or degrade without reading `requests` internals.

Safety rules this module keeps:
- the access token is sent only to the scheme+host+port of `base_url` (next links elsewhere are refused,
  redirects are not followed, a `.netrc` or a session-wide `Authorization` header never replaces it);
- error messages and tracebacks name the resource type only, never a URL (the query holds the patient id)
  nor the token;
- a search is never silently truncated: hitting a limit is an error, because a partial chart could hide
  the evidence the rules look for.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import orjson
import requests
import urllib3.exceptions
from requests.auth import AuthBase
from requests.utils import requote_uri

__all__ = ["FetchFailure", "FetchLimits", "FhirClient", "FhirFetchError"]

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
    total_seconds: float = 10.0  # wall-clock budget for one fetch, all pages included
    max_bytes: int = 64 * 1024 * 1024  # decoded body bytes for one fetch, all pages included


class FhirFetchError(Exception):
    """The FHIR server could not supply the data; `str()` is safe to log and to show to a client."""

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


class _BearerAuth(AuthBase):
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
        return "<_BearerAuth>"


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme, -1)  # ValueError on a malformed port
    host = (parts.hostname or "").lower()
    # `localhost` is 127.0.0.1 or ::1: a server called by one of these names that writes its next links with
    # another is the same server. Other loopback addresses (127.0.0.2) can be another process: not equated.
    return scheme, "localhost" if host in _LOCALHOST_NAMES else host, port


_LOCALHOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


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
        self._auth = _BearerAuth(access_token)
        self._limits = limits
        self._owns_session = session is None
        self._session = requests.Session() if session is None else session

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch(self, relative_url: str) -> list[bytes]:
        """Run one filled prefetch template; return the raw body of each page, in order.

        A read gives one body; a search gives one per page, following `Bundle.link[relation=next]`.
        Raises `FhirFetchError` on any failure and `ValueError` for a URL outside the prefetch subset.
        """
        resource_type, expected, is_search = _classify(relative_url)
        deadline = time.monotonic() + self._limits.total_seconds
        bytes_left = self._limits.max_bytes
        url = self._base + relative_url.lstrip("/")
        seen = {requote_uri(url)}
        pages: list[bytes] = []
        while True:
            status, body = self._get(url, deadline, bytes_left, resource_type)
            bytes_left -= len(body)
            document = _parse(body, status, expected, resource_type)
            pages.append(body)
            next_link = _next_link(document, status, resource_type) if is_search else None
            if next_link is None:
                return pages
            url = urljoin(self._base, next_link)  # FHIR: relative URLs are relative to the service base
            try:
                same_origin = _origin(url) == self._origin
            except ValueError:
                same_origin = False
            if not same_origin:
                raise FhirFetchError("foreign-next-link", None, resource_type)
            if requote_uri(url) in seen or len(pages) >= self._limits.max_pages:
                raise FhirFetchError("page-limit", None, resource_type)
            seen.add(requote_uri(url))

    def _get(self, url: str, deadline: float, bytes_left: int, resource_type: str) -> tuple[int, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FhirFetchError("timeout", None, resource_type)
        timeout = (min(self._limits.connect_timeout, remaining), min(self._limits.read_timeout, remaining))
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
        except requests.RequestException:
            raise FhirFetchError("unreachable", None, resource_type) from None
        with response:
            status = response.status_code
            if not 200 <= status < 300:
                raise FhirFetchError(_STATUS_REASONS.get(status, "server-error"), status, resource_type)
            return status, _read_body(response, deadline, bytes_left, resource_type)


def _read_body(response: requests.Response, deadline: float, bytes_left: int, resource_type: str) -> bytes:
    """Stream the decoded body, giving up as soon as a limit is crossed rather than after the download.

    `read1` returns whatever has arrived, so a server dripping bytes just under the read timeout still
    meets the deadline check; `stream()`/`read(n)` would block until n bytes came.
    """
    status = response.status_code
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := response.raw.read1(_CHUNK_BYTES, decode_content=True):
            size += len(chunk)
            if size > bytes_left:
                raise FhirFetchError("too-large", status, resource_type)
            if time.monotonic() > deadline:
                raise FhirFetchError("timeout", status, resource_type)
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError:
        raise FhirFetchError("timeout", status, resource_type) from None
    except urllib3.exceptions.DecodeError:
        raise FhirFetchError("invalid-response", status, resource_type) from None
    except urllib3.exceptions.HTTPError:  # connection dropped mid-body
        raise FhirFetchError("unreachable", status, resource_type) from None
    return b"".join(chunks)


def _parse(body: bytes, status: int, expected: str, resource_type: str) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FhirFetchError("invalid-response", status, resource_type) from None
    # An OperationOutcome is never the expected type, so a 2xx carrying one is rejected here too.
    if not isinstance(document, dict) or document.get("resourceType") != expected:
        raise FhirFetchError("invalid-response", status, resource_type)
    return document


def _next_link(bundle: dict[str, Any], status: int, resource_type: str) -> str | None:
    links = bundle.get("link", [])
    if not isinstance(links, list):
        raise FhirFetchError("invalid-response", status, resource_type)
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str) or not url:
                raise FhirFetchError("invalid-response", status, resource_type)
            return url
    return None
