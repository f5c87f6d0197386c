"""Prefetch templates and the key states of CDS Hooks 2.0 (docs/cds-hooks-conformance.md §1.5, §5.3).

    key absent                      -> fetch from fhirServer (Bearer token if given; open servers get none)
    key null                        -> the client has no data: never re-fetched
    OperationOutcome, or a Bundle
      holding OperationOutcome(s),
      or not a FHIR resource        -> not provided: fetch if possible
    Bundle with a `next` link       -> incomplete: fetch the whole search
    key we did not declare          -> ignored (and logged by name)

If data the rules need can be neither read nor fetched, the answer is 412 naming the keys and why:
never 200 with no cards for data we did not see. The service fetches only from a `fhirServer` this client
may name (cds_hooks.protocol.fhir_servers); why a fetch failed (status, timeout, refused connection) goes to the log,
never to the client, so the 412 cannot be used to probe a network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import msgspec

from cds_hooks.protocol.errors import PreconditionFailed
from cds_hooks.protocol.fhir_client import FetchBudget, FetchLimits, FhirClient, FhirFetchError
from cds_hooks.protocol.fhir_servers import FhirServerPolicy, parse_server_url
from cds_hooks.protocol.requests import HookRequest
from fhir_mapping.intake import Document, read_document
from fhir_mapping.terminology import ICD10CM, LOINC, SNOMED, Terminology

DICOM = "http://dicom.nema.org/resources/ontology/DCM"
# Keys one call fetches at once: a slow key does not hold up the other nine, and a call never opens ten
# connections to a FHIR server at once.
KEYS_AT_ONCE = 4


# EHRs refuse or truncate long prefetch URLs; 2,048 characters is the common limit for a URL (browsers and
# proxies). Every template stays within it after `{{context.patientId}}` is replaced by a 64-character id and
# the whole is percent-encoded (tests/test_discovery.py).
MAX_TEMPLATE_URL = 2048


def _codes(terminology: Terminology, value_sets: list[str], systems: tuple[str, ...]) -> str:
    """The codes as bare tokens (`code=42698-1,241645008`), no `system|` prefix: a FHIR token search without a
    system matches the code in any system, so the search is a little broader and about half as long. The intake
    then keeps only what matches by system and code (fhir_mapping/intake.py), so nothing extra is used."""
    codes = dict.fromkeys(code for vs in value_sets for _, code in terminology.codes(vs, systems))
    return ",".join(codes)


def build_templates(terminology: Terminology) -> dict[str, str]:
    """Templates inside the 2.0 query subset: reads, type searches, reference and token params, no today().
    Observations and imaging are filtered by the codes the rules read: never every Observation. Each fits in
    MAX_TEMPLATE_URL once filled and percent-encoded."""
    patient = "{{context.patientId}}"
    observation_codes = _codes(
        terminology,
        ["observation-codes", "spinal-pain", "neuro-red-flags", "bone-metastasis"],
        (LOINC, SNOMED),
    )
    imaging_codes = _codes(terminology, ["spine-imaging"], (LOINC, SNOMED, "http://www.ama-assn.org/go/cpt"))
    procedure_codes = _codes(terminology, ["spine-imaging", "breast-cancer-supporting", "end-of-life"],
                             (LOINC, SNOMED, "http://www.ama-assn.org/go/cpt"))
    # Encounter.reasonCode is pain evidence too (docs/clinical-rules.md §1.2); EHRs code reasons in SNOMED or ICD-10-CM.
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
    to_fetch: dict[str, str] = field(default_factory=dict)  # key -> why it must be fetched
    # What the hook's context holds beyond the prefetch, as its service checked it (the order hooks' drafts), so
    # it is read once per call, off the event loop, before anything is fetched (cds_hooks.services.base).
    checked: Any = None


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """Where the missing keys may be fetched from: a fhirServer this client may name, and its token."""

    server: str
    origin: tuple[str, str, int]
    token: str | None


def gather(
    request: HookRequest[Any, Any], templates: Mapping[str, str], limits: FetchLimits, terminology: Terminology,
    servers: FhirServerPolicy, issuer: str | None = None,
) -> Gathered:
    """Read the prefetch and fetch what is missing, all in this thread (the CLI; the service uses the steps)."""
    gathered = read_prefetch(request, templates, terminology)
    if gathered.to_fetch:
        plan = plan_fetch(request, templates, gathered, servers, issuer)
        fetch_missing(request, templates, gathered, plan, limits, FetchBudget.of(limits), terminology)
    return gathered


def read_prefetch(request: HookRequest[Any, Any], templates: Mapping[str, str], terminology: Terminology) -> Gathered:
    gathered = Gathered()
    prefetch = request.prefetch or {}
    for key in templates:
        if key not in prefetch:
            gathered.to_fetch[key] = "not provided in prefetch"
            continue
        raw = prefetch[key]
        # null, as decoded with values split, or as raw JSON (msgspec.Raw holds the value's exact span)
        if raw is None or (isinstance(raw, msgspec.Raw) and len(raw) == 4 and bytes(raw) == b"null"):
            gathered.null_keys.append(key)
            continue
        document = read_document(raw, terminology)  # read once here; the intake takes what it picked
        if document.problem:
            gathered.to_fetch[key] = f"prefetch value unusable: {document.problem}"
        else:
            gathered.documents.append(document)
            gathered.from_prefetch.append(key)
    return gathered


def _ignored_note(request: HookRequest[Any, Any], templates: Mapping[str, str]) -> str:
    undeclared = sorted(k for k in request.prefetch or {} if k not in templates)
    if not undeclared:
        return ""
    return (f"\n- ignored prefetch keys this service does not declare: {', '.join(undeclared)} "
            f"(it declares: {', '.join(templates)})")


def _missing(to_fetch: Mapping[str, str]) -> str:
    """One line per key and its reason, under the message's first line."""
    return "".join(f"\n- prefetch key '{k}': {why}" for k, why in to_fetch.items())


def plan_fetch(request: HookRequest[Any, Any], templates: Mapping[str, str], gathered: Gathered,
               servers: FhirServerPolicy, issuer: str | None) -> FetchPlan:
    """The fetch plan, or a 412 when there is nothing this client may fetch from (nothing is contacted)."""
    expression = [f"prefetch.{k}" for k in gathered.to_fetch]
    if request.fhirServer is None:
        raise PreconditionFailed(
            "Data the rules need is missing and no fhirServer was given to fetch it:"
            + _missing(gathered.to_fetch) + _ignored_note(request, templates),
            expression=expression,
        )
    server = parse_server_url(request.fhirServer)  # checked when the request was decoded
    if not servers.allows(issuer, server):
        raise PreconditionFailed(
            "Data the rules need is missing and the fhirServer given is not a FHIR server this client may name "
            "(the servers each client may use are configured in this service), so it was not contacted:"
            + _missing(gathered.to_fetch) + _ignored_note(request, templates),
            expression=["fhirServer", *expression], log_detail="fhir-server-not-allowed",
        )
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    return FetchPlan(request.fhirServer, server.origin, token)


def not_fetched(request: HookRequest[Any, Any], templates: Mapping[str, str], keys: Mapping[str, str],
                log_detail: str) -> PreconditionFailed:
    """The 412 for keys that could not be fetched: the same words whatever went wrong (detail: the log)."""
    return PreconditionFailed(
        "Could not obtain data the rules need:"
        + "".join(f"\n- prefetch key '{k}': {why}, and it could not be fetched from fhirServer"
                  for k, why in keys.items())
        + _ignored_note(request, templates),
        expression=[f"prefetch.{k}" for k in keys], fetch_failures=len(keys), log_detail=log_detail,
    )


def _detached(document: Document) -> Document:
    """The picked resources copied out of the page, so the page itself can be freed at once."""
    return replace(document, picked=[(peek, bytes(raw)) for peek, raw in document.picked])


def _read_pages(client: FhirClient, query: str, budget: FetchBudget, terminology: Terminology) -> list[Document]:
    """Each page through the prefetch relevance filter as it arrives: only what the rules read is kept."""
    documents = []
    for page in client.pages(query, budget):
        documents.append(_detached(read_document(page, terminology)))
        del page  # before the next page is fetched
        if budget.seconds_left() <= 0:  # parsing counts in the call's time too
            raise FhirFetchError("timeout")
    return documents


KeyOutcome = tuple[str, "list[Document] | FhirFetchError"]


def _map_bounded(executor: Executor, work: Callable[[str], KeyOutcome], items: Iterable[str],
                 width: int) -> list[KeyOutcome]:
    """`work` over `items` in `executor`, at most `width` at a time; results in completion order."""
    pending: set[Future[KeyOutcome]] = set()
    results: list[KeyOutcome] = []
    for item in items:
        if len(pending) >= width:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            results += [future.result() for future in done]
        pending.add(executor.submit(work, item))
    results += [future.result() for future in wait(pending).done]
    return results


def fetch_missing(request: HookRequest[Any, Any], templates: Mapping[str, str], gathered: Gathered, plan: FetchPlan,
                  limits: FetchLimits, budget: FetchBudget, terminology: Terminology,
                  executor: Executor | None = None) -> None:
    """Fetch `gathered.to_fetch` in parallel (in `executor`, default a small pool of its own) within one budget.
    Raises PreconditionFailed if any key could not be fetched."""
    patient_id = request.context.patientId

    def fetch(key: str) -> KeyOutcome:
        query = fill(templates[key], patient_id)
        with FhirClient(plan.server, plan.token, limits) as client:
            try:
                return key, _read_pages(client, query, budget, terminology)
            except FhirFetchError as exc:
                if "?" not in query:
                    return key, exc  # a read (the Patient): nothing to fall back to
                if exc.status == 400 and "&" in query:
                    # A simple server may refuse our code/modality filter; we filter the answer ourselves.
                    try:
                        return key, _read_pages(client, query.split("&", 1)[0], budget, terminology)
                    except FhirFetchError as retry:
                        return key, retry
                return key, exc

    keys = list(gathered.to_fetch)
    if executor is None:
        with ThreadPoolExecutor(max_workers=min(KEYS_AT_ONCE, len(keys))) as pool:
            outcomes = dict(pool.map(fetch, keys))
    else:  # shared with other calls: take no more than our share of it
        outcomes = dict(_map_bounded(executor, fetch, keys, KEYS_AT_ONCE))
    answered = any(not isinstance(outcome, FhirFetchError) for outcome in outcomes.values())
    failures: dict[str, FhirFetchError] = {}
    for key in keys:  # in template order, whatever order the fetches ended in
        outcome = outcomes[key]
        if isinstance(outcome, FhirFetchError):
            unsupported = outcome.status == 404 and "?" in templates[key]
            if unsupported and answered:
                # The server answers searches but does not offer this resource type: no such data to miss.
                gathered.fetched.append(key)
                continue
            failures[key] = outcome
        else:
            gathered.documents.extend(outcome)
            gathered.fetched.append(key)
    if failures:
        detail = ",".join(f"{k}:{e.reason}" + (f":{e.status}" if e.status else "") for k, e in failures.items())
        raise not_fetched(request, templates, {k: gathered.to_fetch[k] for k in failures}, detail)
