"""Prefetch templates and the key states of CDS Hooks 2.0 (cds-hooks.md §1.5, §5.3).

    key absent                      -> fetch from fhirServer (Bearer token if given; open servers get none)
    key null                        -> the client has no data: never re-fetched
    OperationOutcome, or a Bundle
      holding OperationOutcome(s),
      or not a FHIR resource        -> not provided: fetch if possible
    Bundle with a `next` link       -> incomplete: fetch the whole search
    key we did not declare          -> ignored (and logged by name)

If data the rules need can be neither read nor fetched, the answer is 412 naming the keys and why:
never 200 with no cards for data we did not see.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgspec

from cds_hooks.errors import PreconditionFailed
from cds_hooks.fhir_client import FetchLimits, FhirClient, FhirFetchError
from cds_hooks.hook_request import HookRequest
from fhir_mapping.intake import Document, read_document
from fhir_mapping.terminology import ICD10CM, LOINC, SNOMED, Terminology

DICOM = "http://dicom.nema.org/resources/ontology/DCM"


def _codes(terminology: Terminology, value_sets: list[str], systems: tuple[str, ...]) -> str:
    pairs = dict.fromkeys(
        f"{system}|{code}" for vs in value_sets for system, code in terminology.codes(vs, systems)
    )
    return ",".join(pairs)


def build_templates(terminology: Terminology) -> dict[str, str]:
    """Templates inside the 2.0 query subset: reads, type searches, reference and token params, no today().
    Observations and imaging are filtered by the codes the rules read: never every Observation."""
    patient = "{{context.patientId}}"
    observation_codes = _codes(
        terminology,
        ["observation-codes", "spinal-pain", "neuro-red-flags", "bone-metastasis"],
        (LOINC, SNOMED),
    )
    imaging_codes = _codes(terminology, ["spine-imaging"], (LOINC, SNOMED, "http://www.ama-assn.org/go/cpt"))
    procedure_codes = _codes(terminology, ["spine-imaging", "breast-cancer-supporting", "end-of-life"],
                             (LOINC, SNOMED, "http://www.ama-assn.org/go/cpt"))
    # Encounter.reasonCode is pain evidence too (clinical.md §1.2); EHRs code reasons in SNOMED or ICD-10-CM.
    reason_codes = _codes(terminology, ["spinal-pain", "neuro-red-flags"], (SNOMED, ICD10CM))
    return {
        "patient": f"Patient/{patient}",
        "conditions": f"Condition?patient={patient}",
        "medicationStatements": f"MedicationStatement?patient={patient}",
        "medicationRequests": f"MedicationRequest?patient={patient}",
        "observations": f"Observation?patient={patient}&code={observation_codes}",
        "serviceRequests": f"ServiceRequest?patient={patient}&code={imaging_codes}",
        "diagnosticReports": f"DiagnosticReport?patient={patient}&code={imaging_codes}",
        "imagingStudies": f"ImagingStudy?patient={patient}&modality={DICOM}|MR,{DICOM}|CT",
        "procedures": f"Procedure?patient={patient}&code={procedure_codes}",
        "encounters": f"Encounter?patient={patient}&reason-code={reason_codes}",
    }


def fill(template: str, patient_id: str) -> str:
    return template.replace("{{context.patientId}}", quote(patient_id, safe=""))


@dataclass(slots=True)
class Gathered:
    documents: list[Document] = field(default_factory=list)
    from_prefetch: list[str] = field(default_factory=list)
    null_keys: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)


def gather(
    request: HookRequest[Any], templates: Mapping[str, str], limits: FetchLimits, terminology: Terminology
) -> Gathered:
    gathered = Gathered()
    prefetch = request.prefetch or {}
    to_fetch: dict[str, str] = {}  # key -> why it must be fetched
    for key in templates:
        if key not in prefetch:
            to_fetch[key] = "not provided in prefetch"
            continue
        raw = prefetch[key]
        # null, as decoded with values split, or as raw JSON (msgspec.Raw holds the value's exact span)
        if raw is None or (isinstance(raw, msgspec.Raw) and len(raw) == 4 and bytes(raw) == b"null"):
            gathered.null_keys.append(key)
            continue
        document = read_document(raw, terminology)  # read once here; the intake takes what it picked
        if document.problem:
            to_fetch[key] = f"prefetch value unusable: {document.problem}"
        else:
            gathered.documents.append(document)
            gathered.from_prefetch.append(key)
    if to_fetch:
        _fetch_missing(request, templates, to_fetch, limits, gathered, terminology)
    return gathered


def _ignored_note(request: HookRequest[Any], templates: Mapping[str, str]) -> str:
    undeclared = sorted(k for k in request.prefetch or {} if k not in templates)
    if not undeclared:
        return ""
    return (f" (ignored prefetch keys this service does not declare: {', '.join(undeclared)}; "
            f"it declares: {', '.join(templates)})")


def _fetch_missing(request: HookRequest[Any], templates: Mapping[str, str], to_fetch: dict[str, str],
                   limits: FetchLimits, gathered: Gathered, terminology: Terminology) -> None:
    if request.fhirServer is None:
        raise PreconditionFailed(
            "Data the rules need is missing and no fhirServer was given to fetch it: "
            + "; ".join(f"prefetch key '{k}': {why}" for k, why in to_fetch.items())
            + _ignored_note(request, templates),
            expression=[f"prefetch.{k}" for k in to_fetch],
        )
    server = request.fhirServer
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    patient_id = request.context.patientId

    def fetch(key: str) -> tuple[str, list[bytes] | FhirFetchError]:
        query = fill(templates[key], patient_id)
        with FhirClient(server, token, limits) as client:
            try:
                return key, client.fetch(query)
            except FhirFetchError as exc:
                if "?" not in query:
                    return key, exc  # a read (the Patient): nothing to fall back to
                if exc.status == 400 and "&" in query:
                    # A simple server may refuse our code/modality filter; we filter the answer ourselves.
                    try:
                        return key, client.fetch(query.split("&", 1)[0])
                    except FhirFetchError as retry:
                        return key, retry
                return key, exc

    with ThreadPoolExecutor(max_workers=min(4, len(to_fetch))) as pool:
        outcomes = dict(pool.map(fetch, list(to_fetch)))
    answered = any(not isinstance(outcome, FhirFetchError) for outcome in outcomes.values())
    failures: dict[str, str] = {}
    for key, outcome in outcomes.items():
        if isinstance(outcome, FhirFetchError):
            unsupported = outcome.status == 404 and "?" in templates[key]
            if unsupported and answered:
                # The server answers searches but does not offer this resource type: no such data to miss.
                gathered.fetched.append(key)
                continue
            failures[key] = f"{to_fetch[key]}, and fetching it from fhirServer failed: {outcome}"
        else:
            # A fetched page's next link was followed by the client: only the prefetch's is a problem.
            gathered.documents.extend(read_document(page, terminology) for page in outcome)
            gathered.fetched.append(key)
    if failures:
        raise PreconditionFailed(
            "Could not obtain data the rules need: "
            + "; ".join(f"prefetch key '{k}': {why}" for k, why in failures.items())
            + _ignored_note(request, templates),
            expression=[f"prefetch.{k}" for k in failures],
            fetch_failures=len(failures),
        )
