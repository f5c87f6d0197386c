"""Which JWKS URLs may be configured for a trusted issuer: parsed and compared exactly, never by prefix."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cds_hooks.security import JwtVerifier
from cds_hooks.security.jwks import check_jwks_url
from cds_hooks.settings import IssuerConfig, Settings

ISSUER = "https://ehr.example.org/fhir"

REFUSED = [
    "http://localhost.evil.example/jwks.json",  # passed a prefix test on "http://localhost"
    "http://localhost@10.0.0.5/jwks.json",  # so did this: the host is 10.0.0.5
    "http://127.0.0.1.nip.io/jwks.json",
    "http://127.0.0.1@ehr.example.org/jwks.json",
    "https://user:secret@ehr.example.org/jwks.json",  # credentials would go out as Basic auth
    "https://@ehr.example.org/jwks.json",
    "http://ehr.example.org/jwks.json",  # plain http beyond loopback
    "http://10.0.0.5/jwks.json",
    "ftp://ehr.example.org/jwks.json",
    "https:///jwks.json",  # no host
    "https://ehr.example.org:99999/jwks.json",  # port out of range
    "https://ehr.example.org:https/jwks.json",
    "https://[::1/jwks.json",  # broken IPv6 literal
    "jwks.json",
]

ACCEPTED = [
    "https://ehr.example.org/jwks.json",
    "https://ehr.example.org:8443/.well-known/jwks.json",
    "HTTPS://EHR.example.org/jwks.json",
    "http://localhost:8080/jwks.json",
    "http://127.0.0.1:5000/jwks.json",
    "http://[::1]:5000/jwks.json",
    "http://LOCALHOST/jwks.json",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused_jwks_urls(url: str) -> None:
    with pytest.raises(ValueError, match="JWKS URL"):
        check_jwks_url(url)
    with pytest.raises(ValidationError, match="JWKS URL"):
        Settings(trusted_issuers=json.dumps({ISSUER: url}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JWKS URL"):
        JwtVerifier({ISSUER: url})


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted_jwks_urls(url: str) -> None:
    check_jwks_url(url)
    issuers = Settings(trusted_issuers=json.dumps({ISSUER: url})).trusted_issuers  # type: ignore[arg-type]
    assert issuers == {ISSUER: IssuerConfig(jwks_url=url)}
    JwtVerifier({ISSUER: url})
