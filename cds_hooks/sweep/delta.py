"""`mscc-alert sweep KICKOFF_URL --since T`: the delta export says whom to look at; each of them is judged on
the whole record, fetched from the FHIR server the way the hook fetches it.

A `_since` export holds only what changed (HL7 Bulk Data Access IG): a patient whose new back pain is in it but
whose breast cancer was recorded years ago has no history in it, and would get no card from it alone. So:

1. the delta is screened with the sweep's own relevance screen (`screen_chunk`): a patient with at least one
   relevant resource in it, besides the Patient itself, has a relevant change (the candidates of a full sweep);
2. beyond `MSCC_ALERT_SWEEP_SINCE_MAX_PATIENTS` of them the sweep stops before fetching any: never a silently
   partial worklist;
3. each changed patient is evaluated by the patient-view service on a hook request with no prefetch and
   `fhirServer` = the kick-off URL's FHIR base: the service's prefetch templates, its bounded fetch
   (`cds_hooks.protocol.prefetch`, FetchLimits per patient) and the one decision, exactly as when a chart is
   opened. The bearer token is the Bulk client's SMART Backend Services token, sent only where the Bulk client
   would send it (the export server's origin); an open server gets none;
4. the rows are the full sweep's rows (`worklist_row`); a patient whose record could not be fetched is listed
   in `not-fetched.csv` with the reason, counted in summary.json, and makes the command exit non-zero.

Patients with no relevant change are not fetched. Logs carry counts only.
"""

from __future__ import annotations

import csv
import logging
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cds_hooks.bulk import StatusLine, download_export
from cds_hooks.bulk.auth import BackendServicesAuth, build_auth
from cds_hooks.bulk.export import check_since, fhir_base
from cds_hooks.bulk.http import BulkExportError, Transport
from cds_hooks.protocol.errors import BadRequest, PreconditionFailed
from cds_hooks.protocol.fhir_servers import FhirServerPolicy, configured_server
from cds_hooks.services.patient_view import HOOK, PatientViewService
from cds_hooks.settings import Settings, https_or_loopback
from cds_hooks.sweep.output import summarise, write_outputs
from cds_hooks.sweep.patient import who, worklist_row
from cds_hooks.sweep.reader import Chunk, export_files, plan_chunks
from cds_hooks.sweep.screen import Screening, screen_chunk
from fhir_mapping.terminology import Terminology, load_terminology

__all__ = ["NOT_FETCHED_FILE", "DeltaOptions", "TooManyChanged", "run_delta_sweep"]

_log = logging.getLogger("mscc_alert.sweep")

NOT_FETCHED_FILE = "not-fetched.csv"
NOT_FETCHED_COLUMNS = ("patientId", "mrn", "name", "reason", "action")
NOT_FETCHED_ACTION = ("Not evaluated: open the chart (the alert fires there), or run the sweep again once the "
                      "FHIR server answers")
EXIT_NOT_FETCHED = 3  # everything written, but some changed patients could not be evaluated


class TooManyChanged(Exception):
    """More changed patients than MSCC_ALERT_SWEEP_SINCE_MAX_PATIENTS: nothing fetched, nothing written."""


@dataclass(frozen=True, slots=True)
class DeltaOptions:
    kickoff_url: str
    since: str
    out: Path
    now: datetime


@dataclass(slots=True)
class Delta:
    """What the delta export held: counts (its Screening, relevant lines dropped) and who changed."""

    screening: Screening = field(default_factory=Screening)
    changed: set[str] = field(default_factory=set)
    holding_patients: list[Chunk] = field(default_factory=list)  # chunks with Patient lines, for the MRN pass
    files: int = 0
    files_ignored: int = 0


@dataclass(frozen=True, slots=True)
class Looked:
    """One changed patient: evaluated (a worklist row, or None for no card), or not, and why not."""

    patient_id: str
    row: dict[str, Any] | None = None
    not_fetched: str | None = None


def run_delta_sweep(options: DeltaOptions, settings: Settings) -> dict[str, Any]:
    """Export the delta into DIR/export, fetch and evaluate its changed patients, write DIR; return the summary.

    Raises BulkExportError (the export or the token could not be had) and TooManyChanged, both before any
    file of the worklist is written; their messages are safe to print."""
    started = time.monotonic()
    base = fhir_base(options.kickoff_url)
    if not https_or_loopback(options.kickoff_url):
        raise BulkExportError("the kick-off URL must be https (plain http only to loopback)")
    check_since(options.since)
    try:
        server = configured_server(base)
    except ValueError as exc:  # the words name no URL
        raise BulkExportError(f"the kick-off URL's FHIR base {exc}") from None
    terminology = load_terminology()
    # One transport and one token source for the export and the searches: the token obtained for the export is
    # the one the searches carry (renewed as it nears expiry), and goes where the Bulk client sends it.
    transport = Transport(settings, (options.kickoff_url, *settings.bulk_token_origins))
    try:
        auth = build_auth(settings, transport, base)
        transport.use_token_source(auth)
        folder = download_export(options.kickoff_url, options.out / "export", settings=settings,
                                 since=options.since, auth=auth)
        delta = screen_delta(folder, terminology, settings)
        limit = settings.sweep_since_max_patients
        if len(delta.changed) > limit:
            raise TooManyChanged(
                f"{len(delta.changed):,} patients have a relevant change since {options.since}; at most {limit:,} "
                f"are fetched (MSCC_ALERT_SWEEP_SINCE_MAX_PATIENTS). Nothing was fetched and no worklist written: "
                f"raise the setting, or run a full sweep (without --since)")
        _log.info("delta export: %d patients with a relevant change of %d resources; fetching their records",
                  len(delta.changed), sum(delta.screening.resources.values()))
        with_token = auth is not None and transport.sends_token_to(base)
        service = PatientViewService(terminology, settings.policy(), settings.fetch_limits(),
                                     FhirServerPolicy({}, [server]))  # this FHIR server and nothing else
        looked = look_at(sorted(delta.changed), service, base=base, auth=auth if with_token else None,
                         now=options.now, settings=settings)
    finally:
        transport.close()

    rows = [entry.row for entry in looked if entry.row is not None]
    failed = {entry.patient_id: entry.not_fetched for entry in looked if entry.not_fetched is not None}
    reasons = Counter(failed.values())
    screening = delta.screening
    summary = summarise(
        rows,
        settings.time_zone,
        engine="local",
        workers=1,
        now=options.now.isoformat(),
        since=options.since,
        files=delta.files,
        filesIgnored=delta.files_ignored,
        **screening.counts(),
        candidates=len(delta.changed),
        worklist=len(rows),
        patientsFetched=len(looked) - len(failed),
        patientsNotFetched=len(failed),
        notFetchedReasons=dict(sorted(reasons.items())),
        seconds=0.0,
    )
    summary["seconds"] = round(time.monotonic() - started, 3)
    write_outputs(options.out, rows, summary)
    write_not_fetched(options.out / NOT_FETCHED_FILE, failed, _identities(delta, failed, terminology, settings))
    _log.info("delta sweep done", extra={k: summary[k] for k in (
        "files", "lines", "candidates", "patientsFetched", "patientsNotFetched", "worklist", "seconds")})
    return summary


def screen_delta(folder: Path, terminology: Terminology, settings: Settings) -> Delta:
    """Screen every line of the delta; keep the ids of patients with a relevant change, not their lines (the
    record is fetched whole). An empty delta (nothing changed) is a valid answer."""
    files, others = export_files(folder)
    delta = Delta(files=len(files), files_ignored=len(others))
    for chunk in plan_chunks(files, settings.sweep_chunk_bytes):
        screening = screen_chunk(chunk, terminology, settings.sweep_max_line_bytes)
        delta.changed.update(screening.relevant)
        if screening.patient_lines:
            delta.holding_patients.append(chunk)
        screening.relevant.clear()
        delta.screening.merge(screening)
    return delta


def look_at(patients: list[str], service: PatientViewService, *, base: str, auth: BackendServicesAuth | None,
            now: datetime, settings: Settings) -> list[Looked]:
    """Each patient evaluated on the record fetched from `base`, `MSCC_ALERT_SWEEP_SINCE_PARALLEL` at a time."""
    progress = StatusLine()  # `fetched i/n`, on a terminal only: counts, never ids
    drawn = 0.0
    looked: list[Looked] = []
    with ThreadPoolExecutor(settings.sweep_since_parallel, thread_name_prefix="sweep-fetch") as pool:
        futures: list[Future[Looked]] = [pool.submit(look, service, patient, base=base, auth=auth, now=now)
                                         for patient in patients]
        try:
            for future in as_completed(futures):
                looked.append(future.result())
                if time.monotonic() - drawn > 0.2 or len(looked) == len(patients):
                    drawn = time.monotonic()
                    failed = sum(1 for entry in looked if entry.not_fetched)
                    progress(f"fetched {len(looked):,}/{len(patients):,} changed patients"
                             + (f", {failed:,} could not be fetched" if failed else ""))
        except BaseException:  # Ctrl-C: what runs ends within its fetch limits; the rest never starts
            for future in futures:
                future.cancel()
            raise
        finally:
            progress.end()
    return looked


def look(service: PatientViewService, patient_id: str, *, base: str, auth: BackendServicesAuth | None,
         now: datetime) -> Looked:
    """One patient through the hook: a patient-view request with no prefetch, so every key is fetched."""
    for attempt in (1, 2):
        try:
            token = auth.access_token() if auth is not None else None
        except BulkExportError as exc:  # the token endpoint failed: its message names no URL or token
            return Looked(patient_id, not_fetched=str(exc))
        body: dict[str, Any] = {"hook": HOOK, "hookInstance": str(uuid.uuid4()), "fhirServer": base,
                                "context": {"patientId": patient_id}}
        if token is not None:
            body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer"}
        try:
            request = service.decode(orjson.dumps(body))
        except BadRequest:
            return Looked(patient_id, not_fetched="the patient id is not a FHIR id")
        try:
            outcome = service.evaluate(request, now=now)
        except PreconditionFailed as exc:
            failures = _failures(exc.log_detail)
            refused = any(failure.startswith("unauthorized") for failure in failures)
            if auth is not None and token is not None and attempt == 1 and refused:
                auth.invalidate(token)  # it may have been revoked or expired early: once more with a fresh one
                continue
            return Looked(patient_id, not_fetched=", ".join(sorted(failures)) or "could not be fetched")
        except Exception as exc:  # one record that breaks the pipeline must not sink the others
            _log.error("delta sweep: evaluating a fetched record failed (%s)", type(exc).__name__)
            return Looked(patient_id, not_fetched=f"internal error ({type(exc).__name__})")
        patients = [bytes(raw) for document in outcome.gathered.documents for peek, raw in document.picked
                    if peek.resourceType == "Patient"]
        return Looked(patient_id, row=worklist_row(patient_id, outcome.evaluation, patients))
    raise AssertionError("unreachable: the second attempt returns")


def _failures(log_detail: str | None) -> set[str]:
    """`key:reason[:status]` items of the fetch's log detail -> the distinct reasons ("server-error (HTTP 500)"),
    which name no key, id or URL."""
    reasons: set[str] = set()
    for item in (log_detail or "").split(","):
        parts = item.split(":")
        if len(parts) == 1:
            if parts[0]:
                reasons.add(parts[0])
            continue
        reason = parts[1]
        reasons.add(f"{reason} (HTTP {parts[2]})" if len(parts) > 2 else reason)
    return reasons


def _identities(delta: Delta, failed: dict[str, str], terminology: Terminology,
                settings: Settings) -> dict[str, dict[str, str]]:
    """MRN and name of the patients not fetched, from their Patient resources where the delta holds them."""
    if not failed:
        return {}
    wanted = frozenset(failed)
    found: dict[str, dict[str, str]] = {}
    for chunk in delta.holding_patients:
        screening = screen_chunk(chunk, terminology, settings.sweep_max_line_bytes, patients=wanted)
        for patient, lines in screening.patients.items():
            found.setdefault(patient, who(patient, lines))
    return found


def write_not_fetched(path: Path, failed: dict[str, str], identities: dict[str, dict[str, str]]) -> None:
    """Always written by a delta sweep (a header alone: every changed patient was evaluated)."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=NOT_FETCHED_COLUMNS)
        writer.writeheader()
        for patient in sorted(failed):
            known = identities.get(patient, {})
            writer.writerow({"patientId": patient, "mrn": known.get("mrn", ""), "name": known.get("name", ""),
                             "reason": failed[patient], "action": NOT_FETCHED_ACTION})
