"""Kick-off, status polling and cancellation (HL7 Bulk Data Access IG 2.0.0, export.md; the FHIR asynchronous
request pattern, https://hl7.org/fhir/R4/async.html)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from cds_hooks.bulk.http import (
    BulkExportError,
    TransientError,
    Transport,
    failure_message,
    outcome_codes,
    read_bounded,
    retry_after_seconds,
    sleep_until,
)
from cds_hooks.protocol.prefetch import build_templates
from cds_hooks.settings import Settings
from fhir_mapping.terminology import Terminology

__all__ = ["ExportGone", "ExportQuery", "ExportTimedOut", "cancel", "export_query", "fhir_base", "kick_off", "poll"]

_log = logging.getLogger("mscc_alert.bulk")

_MAX_OUTCOME_BYTES = 1024 * 1024
_MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # ~200,000 output entries
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
# IssueType codes of the `transient` group (https://hl7.org/fhir/R4/codesystem-issue-type.html): the IG says a
# server uses one of these for a polling failure that is not the failure of the export itself.
_TRANSIENT_ISSUES = frozenset({"transient", "lock-error", "no-store", "exception", "timeout", "incomplete",
                               "throttled"})
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


class ExportGone(BulkExportError):
    """The status URL is no longer known to the server (404/410: cancelled, expired or never there)."""


class ExportTimedOut(BulkExportError):
    """No manifest within MSCC_ALERT_BULK_EXPORT_SECONDS."""


@dataclass(frozen=True, slots=True)
class ExportQuery:
    types: tuple[str, ...]
    type_filters: tuple[str, ...]


def export_query(terminology: Terminology) -> ExportQuery:
    """`_type` and `_typeFilter` from the service's own prefetch templates: the export asks for what the hook
    asks for, so the sweep reads exactly the resources the rules read. `_typeFilter` is each template's search
    without its `patient=` parameter; types the templates do not filter (Condition, medications) come whole."""
    types: dict[str, None] = {}
    filters: list[str] = []
    for template in build_templates(terminology).values():
        path, _, query = template.partition("?")
        resource_type = path.split("/", 1)[0]
        types[resource_type] = None
        criteria = [p for p in query.split("&") if p and not p.startswith("patient=")]
        if criteria:
            filters.append(f"{resource_type}?{'&'.join(criteria)}")
    return ExportQuery(tuple(types), tuple(filters))


def fhir_base(kickoff_url: str) -> str:
    """The FHIR base of a system (`[base]/$export`), `[base]/Patient/$export` or `[base]/Group/[id]/$export`
    kick-off URL; `BulkExportError` for anything else."""
    parts = urlsplit(kickoff_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BulkExportError("the kick-off URL must be an http(s) URL")
    if parts.query or parts.fragment:
        raise BulkExportError("the kick-off URL must have no query: _type, _typeFilter and _since are set by the "
                              "sweep (--since)")
    segments = unquote(parts.path).rstrip("/").split("/")
    if segments[-1] != "$export":
        raise BulkExportError("the kick-off URL must end in $export ([base]/$export, [base]/Patient/$export or "
                              "[base]/Group/[id]/$export)")
    base = segments[:-1]
    if base and base[-1] == "Patient":
        base = base[:-1]
    elif len(base) >= 2 and base[-2] == "Group":
        if not _FHIR_ID.fullmatch(base[-1]):
            raise BulkExportError("the Group id in the kick-off URL is not a FHIR id")
        base = base[:-2]
    return f"{parts.scheme}://{parts.netloc}{'/'.join(base)}"


def check_since(since: str | None) -> None:
    if since is not None and not _INSTANT.fullmatch(since):
        raise BulkExportError("--since must be a FHIR instant with a time zone, e.g. 2026-01-31T00:00:00Z")


def kick_off(transport: Transport, url: str, query: ExportQuery, *, since: str | None, settings: Settings,
             deadline: float) -> str:
    """Start the export; return the absolute status URL from `Content-Location`."""
    params = [("_outputFormat", "application/fhir+ndjson"), ("_type", ",".join(query.types))]
    if since is not None:
        params.append(("_since", since))
    filters = list(query.type_filters) if settings.bulk_type_filter else []
    failures = 0
    while True:
        what = "kick-off request"
        # The IG allows `_typeFilter` to repeat, one search per value: no search's own commas get split.
        sent = params + [("_typeFilter", f) for f in filters]
        try:
            response = transport.send("GET", url, what=what, params=sent,
                                      headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
            with response:
                status = response.status_code
                if status == 202:
                    location = response.headers.get("Content-Location")
                    if not location:
                        raise BulkExportError("the server accepted the export but sent no Content-Location")
                    _log.info("bulk export kicked off (with _typeFilter: %s)", bool(filters))
                    return urljoin(url, location)
                body = read_bounded(response, _MAX_OUTCOME_BYTES, "kick-off response")
        except TransientError as exc:
            failures = _failed(failures, settings, exc, deadline, exc.retry_after)
            continue
        if filters and _rejects_type_filter(status, body):
            # Optional for servers and experimental in the IG; the sweep filters what comes anyway.
            _log.warning("the export server refused _typeFilter (HTTP %d); kicking off again without it", status)
            filters = []
            continue
        if status == 429 or (status in _TRANSIENT_STATUSES and _transient_outcome(body)):
            # 429: another export of ours is still running (IG: "prevent a client from beginning a new export").
            error = TransientError(failure_message("the kick-off request", status, body))
            failures = _failed(failures, settings, error, deadline, retry_after_seconds(response))
            continue
        raise BulkExportError(failure_message("the kick-off request", status, body))


def poll(transport: Transport, status_url: str, *, settings: Settings, deadline: float,
         progress: Callable[[str], None]) -> bytes:
    """Poll until the manifest (returned as the server's bytes); Retry-After honoured within the configured
    bounds, exponential backoff when the server gives none (IG: clients SHOULD back off)."""
    interval = settings.bulk_poll_min_seconds
    failures = 0
    while True:
        if time.monotonic() >= deadline:
            raise ExportTimedOut(f"the export was not complete within MSCC_ALERT_BULK_EXPORT_SECONDS "
                                  f"({settings.bulk_export_seconds:g} s); it was cancelled")
        what = "status request"
        try:
            response = transport.send("GET", status_url, what=what, headers={"Accept": "application/json"})
            with response:
                status = response.status_code
                if status == 200:
                    return read_bounded(response, _MAX_MANIFEST_BYTES, "export manifest")
                if status == 202:
                    failures = 0
                    if text := response.headers.get("X-Progress"):
                        progress(text)
                    hinted = retry_after_seconds(response)
                    wait = interval if hinted is None else hinted
                    interval = min(interval * 2, settings.bulk_poll_max_seconds)
                    sleep_until(_clamp(wait, settings), deadline)
                    continue
                body = read_bounded(response, _MAX_OUTCOME_BYTES, "status response")
                hinted = retry_after_seconds(response)
        except TransientError as exc:
            failures = _failed(failures, settings, exc, deadline, exc.retry_after)
            continue
        if status in (404, 410):
            raise ExportGone(failure_message("the status request", status, body) + ": the export is gone (cancelled or "
                             "expired)")
        if status == 429 or (status in _TRANSIENT_STATUSES and _transient_outcome(body)):
            failures = _failed(failures, settings, TransientError(failure_message("the status request", status, body)),
                               deadline, hinted)
            continue
        raise BulkExportError(failure_message("the export" if status >= 500 else "the status request", status, body))


def cancel(transport: Transport, status_url: str) -> bool:
    """DELETE the status URL (IG: cancels a running export; after completion, frees the server's files)."""
    try:
        response = transport.send("DELETE", status_url, what="cancel request")
    except BulkExportError:
        return False
    with response:
        return 200 <= response.status_code < 300


def _rejects_type_filter(status: int, body: bytes) -> bool:
    if status == 414:  # the filters make a long URL; some servers cap it
        return True
    return status in (400, 422, 501) and b"typefilter" in body.lower()


def _transient_outcome(body: bytes) -> bool:
    """A 5xx with no OperationOutcome is the infrastructure (a proxy): retry. One with an OperationOutcome is
    the export failing, unless its issue code says transient."""
    codes = outcome_codes(body)
    return not codes or bool(codes & _TRANSIENT_ISSUES)


def _failed(failures: int, settings: Settings, error: TransientError, deadline: float,
            retry_after: float | None) -> int:
    failures += 1
    if failures > settings.bulk_retries:
        raise BulkExportError(f"{error} (gave up after {failures} attempts, MSCC_ALERT_BULK_RETRIES)")
    backoff = settings.bulk_poll_min_seconds * 2 ** (failures - 1)
    _log.warning("bulk export: transient failure, retry %d of %d", failures, settings.bulk_retries)
    sleep_until(_clamp(backoff if retry_after is None else retry_after, settings), deadline)
    return failures


def _clamp(seconds: float, settings: Settings) -> float:
    return min(max(seconds, settings.bulk_poll_min_seconds), settings.bulk_poll_max_seconds)


def files_of(manifest: object, key: str) -> Sequence[dict[str, object]]:
    """The `output` or `error` items of a manifest that have a string url (others are reported as invalid)."""
    items = manifest.get(key) if isinstance(manifest, dict) else None
    if items is None and key != "output":
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in items):
        raise BulkExportError(f"the export manifest's `{key}` is not a list of file items with a url")
    return items
