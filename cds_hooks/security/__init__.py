"""Authentication of CDS clients (the JWT in `Authorization: Bearer <JWT>`).

Production: trust each EHR's issuer with its JWKS URL::

    verifier = JwtVerifier({"https://ehr.example.org/fhir": "https://ehr.example.org/jwks.json"})
    client = verifier.verify(request.headers.get("Authorization"), audience=str(request.url))

Development against the public CDS Hooks sandbox, with no network fetch (its private key is public, so this
authenticates nobody)::

    cache = JwksCache()
    cache.preload(SANDBOX_JWKS_URL, sandbox_jwks())
    verifier = JwtVerifier({SANDBOX_ISSUER: SANDBOX_JWKS_URL}, jwks=cache)

Any AuthenticationError answers 401 with a generic message; log `str(error)` (a reason, never the token).
"""

from __future__ import annotations

from cds_hooks.security.jwks import (
    SANDBOX_ISSUER,
    SANDBOX_JWKS_URL,
    AuthenticationError,
    JwksCache,
    SigningKey,
    sandbox_jwks,
)
from cds_hooks.security.jwt_auth import JwtVerifier, VerifiedClient

__all__ = [
    "SANDBOX_ISSUER",
    "SANDBOX_JWKS_URL",
    "AuthenticationError",
    "JwksCache",
    "JwtVerifier",
    "SigningKey",
    "VerifiedClient",
    "sandbox_jwks",
]
