"""The CDS Hooks 2.0 request (docs/cds-hooks-conformance.md §1.3, §1.4), decoded straight from the raw body bytes.

msgspec decodes the envelope in one pass and splits each prefetch Bundle into its entries left as raw JSON
(fhir_mapping.intake.PrefetchBundle), so a 60 MB prefetch is never turned into Python objects here:
fhir_mapping picks out the few resources that matter. A prefetch value of any other shape (not a Bundle, a
Patient or an OperationOutcome) sends the request through a second decode that keeps every value as raw JSON,
and that decode is also the one whose errors a client sees. Unknown extra fields are tolerated, as the spec's
extensibility asks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from cds_hooks.protocol.errors import BadRequest
from cds_hooks.protocol.fhir_servers import parse_server_url
from fhir_mapping.intake import PREFETCH_VALUE_TYPES

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# FHIR `id` datatype: what `context.patientId` must be for templates like Patient/{{context.patientId}}.
FhirId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]


class FhirAuthorization(msgspec.Struct, frozen=True):
    access_token: NonEmpty
    token_type: NonEmpty = "Bearer"
    expires_in: int | float | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None


class HookContext(msgspec.Struct, frozen=True):
    """What every hook's context has; each service's context model (next to the service) extends it."""

    patientId: FhirId
    userId: str | None = None
    encounterId: str | None = None


Context = TypeVar("Context", bound=HookContext)
Value = TypeVar("Value")


class HookRequest(msgspec.Struct, Generic[Context, Value], frozen=True):
    """`prefetch` values: fhir_mapping.intake.PrefetchValue or None (sent as null); or each msgspec.Raw."""

    hook: NonEmpty
    hookInstance: NonEmpty
    context: Context
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: dict[str, Value] | None = None


# RFC 6750 b64token is narrower; visible ASCII is what an HTTP header can carry without being re-encoded or split.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")

class RequestDecoder:
    """Decodes the requests of one hook, with its context model, and checks what the spec requires of them."""

    def __init__(self, hook: str, context: type[HookContext]) -> None:
        self.hook = hook
        self._split: msgspec.json.Decoder[HookRequest[Any, Any]] = msgspec.json.Decoder(
            HookRequest[context, PREFETCH_VALUE_TYPES | None])  # type: ignore[valid-type]
        # msgspec.Raw cannot sit in a union with None
        self._raw: msgspec.json.Decoder[HookRequest[Any, Any]] = msgspec.json.Decoder(
            HookRequest[context, msgspec.Raw])  # type: ignore[valid-type]

    def decode(self, body: bytes | bytearray | memoryview) -> HookRequest[Any, Any]:
        """Raises BadRequest with a message that says exactly what is wrong and where."""
        request: HookRequest[Any, Any]
        try:
            request = self._split.decode(body)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            request = self.decode_raw(body)
        _check(request, self.hook)
        return request

    def decode_raw(self, body: bytes | bytearray | memoryview) -> HookRequest[Any, Any]:
        """Every prefetch value kept as raw JSON: the decode whose errors a client sees."""
        try:
            return self._raw.decode(body)
        except msgspec.ValidationError as exc:
            message, _, path = str(exc).partition(" - at ")
            expression = [path.strip("`").replace("$.", "", 1)] if path else None
            raise BadRequest(f"Invalid hook request: {message}", expression=expression) from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"Request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("Request body is nested too deeply to be a CDS Hooks request") from None
        except UnicodeDecodeError:
            raise BadRequest("Request body is not valid UTF-8 JSON") from None


def _check(request: HookRequest[Any, Any], expected_hook: str) -> None:
    if request.hook != expected_hook:
        raise BadRequest(
            f"This service answers the '{expected_hook}' hook, not '{request.hook}'", expression=["hook"]
        )
    if request.fhirAuthorization is not None and request.fhirServer is None:
        raise BadRequest("fhirAuthorization requires fhirServer (CDS Hooks invariant cds-r-1)",
                         expression=["fhirServer"])
    if request.fhirAuthorization is not None and request.fhirAuthorization.token_type.lower() != "bearer":
        raise BadRequest("fhirAuthorization.token_type must be 'Bearer'", expression=["fhirAuthorization.token_type"])
    if request.fhirAuthorization is not None and not _HEADER_SAFE.fullmatch(request.fhirAuthorization.access_token):
        raise BadRequest("fhirAuthorization.access_token must be visible ASCII characters only (a bearer token: "
                         "no spaces, line breaks or non-ASCII)", expression=["fhirAuthorization.access_token"])
    if request.fhirServer is not None:
        try:
            parse_server_url(request.fhirServer)
        except ValueError as exc:
            raise BadRequest(f"fhirServer {exc}", expression=["fhirServer"]) from None
    if not request.context.patientId.strip("."):
        # "Patient/.." would be a path to somewhere else on the FHIR server.
        raise BadRequest("context.patientId must be a FHIR id, not only dots", expression=["context.patientId"])
