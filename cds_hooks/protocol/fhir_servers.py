"""Which FHIR servers a client may name as `fhirServer`.

The prefetch fallback GETs from `fhirServer` and sends it the client's `fhirAuthorization.access_token`, so a
`fhirServer` the service does not know would make it a proxy into the hospital network that also hands out
tokens. The servers a client may name are therefore configured: per trusted JWT issuer, or, when the service
runs open (no issuers, development), by MSCC_ALERT_FHIR_SERVERS, else loopback only.

A configured base URL matches a `fhirServer` with exactly the same scheme, host and port and a path equal to
the base path or below it at a segment boundary: `https://x/fhir` matches `https://x/fhir` and
`https://x/fhir/r4`, never `https://x/fhirevil`. CDS Hooks 2.0 requires TLS for production data, so a
configured server must be https unless it is on loopback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["FhirServerPolicy", "ServerUrl", "configured_server", "is_loopback_host", "parse_server_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name: labels of letters, digits, '-' and '_' (seen in internal names), dot-separated.
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?")
# host[:port] with nothing else: parsers disagree on oddities such as "[::1]]:1" (urlsplit reads port 1).
_NETLOC = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\[\]:@]+)(?::[0-9]{1,5})?")
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")  # whitespace, control characters, backslash (parsers disagree on it)


@dataclass(frozen=True, slots=True)
class ServerUrl:
    """A FHIR base URL, normalised: lower-case host (IPv6 without brackets), explicit port, path without a
    trailing slash ("" for the root)."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def within(self, base: ServerUrl) -> bool:
        """This URL is `base` or below it (same origin; path at a segment boundary)."""
        return self.origin == base.origin and (self.path == base.path or self.path.startswith(base.path + "/"))


def parse_server_url(url: str) -> ServerUrl:
    """Parse a FHIR base URL; ValueError says what is wrong in words fit for a client (no URL echoed)."""
    if _UNSAFE.search(url):
        raise ValueError("must not contain whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a non-numeric port or one over 65535
    except ValueError:
        raise ValueError("is not a valid URL (bad port or IPv6 address)") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("must be an absolute http(s) URL")
    if "?" in url or "#" in url:
        raise ValueError("must be a base URL, without a query or a fragment")
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials (user@host)")
    if not _NETLOC.fullmatch(parts.netloc):
        raise ValueError("is not a valid URL (bad host, IPv6 address or port)")
    host = _host(parts.netloc, parts.hostname)
    segments = parts.path.split("/")
    if any(unquote(segment) in (".", "..") for segment in segments):
        raise ValueError("must not contain '.' or '..' path segments")
    return ServerUrl(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme], parts.path.rstrip("/"))


def _host(netloc: str, hostname: str | None) -> str:
    if not hostname:
        raise ValueError("must name a host")
    if netloc.startswith("["):
        try:
            return ipaddress.IPv6Address(hostname).compressed
        except ValueError:
            raise ValueError("is not a valid URL (bad IPv6 address)") from None
    try:
        return str(ipaddress.IPv4Address(hostname))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(hostname):
        raise ValueError("must name a valid host")
    return hostname.rstrip(".")


def is_loopback_host(host: str) -> bool:
    """`localhost`, or a loopback address (IPv6 with or without its URL brackets)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def configured_server(url: str) -> ServerUrl:
    """A base URL from the configuration: https, or http on loopback."""
    server = parse_server_url(url)
    if server.scheme != "https" and not is_loopback_host(server.host):
        raise ValueError("must be https (http only on loopback)")
    return server


class FhirServerPolicy:
    """The FHIR servers each client may name. `issuer` None means the service runs open."""

    def __init__(self, by_issuer: Mapping[str, Iterable[ServerUrl]], open_servers: Iterable[ServerUrl] | None) -> None:
        """`open_servers`: the list for open mode; None means any loopback server (the development default)."""
        self._by_issuer = {issuer: tuple(servers) for issuer, servers in by_issuer.items()}
        self._open = None if open_servers is None else tuple(open_servers)

    def allows(self, issuer: str | None, server: ServerUrl) -> bool:
        if issuer is None:
            if self._open is None:
                return is_loopback_host(server.host)
            return any(server.within(base) for base in self._open)
        return any(server.within(base) for base in self._by_issuer.get(issuer, ()))
