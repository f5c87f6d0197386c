"""Errors the service answers with, each rendered as a FHIR OperationOutcome.

    ServiceError                 base: an HTTP status, an OperationOutcome issue code, a message
      + BadRequest               400: body not JSON / not an object / missing or mistyped field
      + NotFound                 404: unknown service id or path
      + MethodNotAllowed         405
      + RequestTimeout           408: the body did not arrive in time
      + PayloadTooLarge          413
      + UnsupportedMediaType     415
      + PreconditionFailed       412: data the rules need is absent and cannot be obtained
      + Unauthorized             401: deliberately says nothing useful to an attacker
"""

from __future__ import annotations

from typing import Any

import orjson

# Issue types from http://hl7.org/fhir/valueset-issue-type.html
_FHIR_JSON = "application/fhir+json"


class ServiceError(Exception):
    status: int = 500
    issue_code: str = "exception"

    def __init__(self, message: str, *, expression: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression


class BadRequest(ServiceError):
    status, issue_code = 400, "invalid"


class NotFound(ServiceError):
    status, issue_code = 404, "not-found"


class MethodNotAllowed(ServiceError):
    status, issue_code = 405, "not-supported"


class RequestTimeout(ServiceError):
    status, issue_code = 408, "timeout"


class PayloadTooLarge(ServiceError):
    status, issue_code = 413, "too-costly"


class UnsupportedMediaType(ServiceError):
    status, issue_code = 415, "not-supported"


class PreconditionFailed(ServiceError):
    status, issue_code = 412, "incomplete"

    def __init__(self, message: str, *, expression: list[str] | None = None, fetch_failures: int = 0,
                 log_detail: str | None = None) -> None:
        super().__init__(message, expression=expression)
        self.fetch_failures = fetch_failures  # FHIR-server fetches that failed, for the metrics
        self.log_detail = log_detail  # why, for the log only (PHI-free: key names, reasons, statuses)


class Unauthorized(ServiceError):
    status, issue_code = 401, "login"

    def __init__(self) -> None:
        super().__init__("Authentication required: a valid CDS Hooks client JWT was not presented.")


def operation_outcome(
    issues: list[tuple[str, str, str, list[str] | None]],
) -> dict[str, Any]:
    """issues: (severity, code, diagnostics, expression or None)."""
    rendered = []
    for severity, code, diagnostics, expression in issues:
        issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
        if expression:
            issue["expression"] = expression
        rendered.append(issue)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def error_body(error: ServiceError) -> bytes:
    return orjson.dumps(operation_outcome([("error", error.issue_code, error.message, error.expression)]))


FHIR_JSON_MEDIA_TYPE = _FHIR_JSON
