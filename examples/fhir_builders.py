"""Factories for FHIR R4 JSON shaped the way EHRs send it, and for CDS Hooks patient-view requests.

Every date is relative to *now* (``days_ago``), so scenarios never go stale. Codes come from
docs/clinical-rules.md, which ships only codes verified in a public source; the constant names say what each is.
The factories return plain dicts (the wire format), never models, because the point of the scenario tests
is to send what an EHR sends, including the sloppy variants (undotted ICD codes, integer SNOMED codes,
dateTimes without a timezone, partial dates).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

JSON = dict[str, Any]

PATIENT_ID = "scenario-patient-1"
OTHER_PATIENT_ID = "someone-else-2"

# --- code systems (docs/clinical-rules.md §2, "System URIs") -------------------------------------------------------
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"  # the wrong-but-common URI of §3.23
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE_SECTION = "http://terminology.hl7.org/CodeSystem/v2-0074"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"

PREFETCH_KEYS = (
    "patient",
    "conditions",
    "medicationStatements",
    "medicationRequests",
    "observations",
    "serviceRequests",
    "diagnosticReports",
    "imagingStudies",
    "procedures",
    "encounters",
)
KEY_BY_RESOURCE_TYPE = {
    "Condition": "conditions",
    "MedicationStatement": "medicationStatements",
    "MedicationRequest": "medicationRequests",
    "Observation": "observations",
    "ServiceRequest": "serviceRequests",
    "DiagnosticReport": "diagnosticReports",
    "ImagingStudy": "imagingStudies",
    "Procedure": "procedures",
    "Encounter": "encounters",
}

_ids = itertools.count(1)


# --- dates -----------------------------------------------------------------------------------------------
def now() -> datetime:
    return datetime.now(UTC)


def days_ago(days: float) -> datetime:
    """A UTC instant `days` before now (negative = in the future)."""
    return now() - timedelta(days=days)


def iso_datetime(days: float) -> str:
    """FHIR dateTime with a timezone, `days` ago: '2026-11-11T06:00:00+00:00'."""
    return days_ago(days).isoformat(timespec="seconds")


def iso_date(days: float) -> str:
    """FHIR date (no time), `days` ago: '2026-11-11'."""
    return days_ago(days).date().isoformat()


def years_before_today(years: int, extra_days: int = 0) -> date:
    """The calendar date `years` years (and `extra_days` days) before today; 29 Feb falls back to 28 Feb."""
    today = now().date()
    try:
        anniversary = today.replace(year=today.year - years)
    except ValueError:
        anniversary = today.replace(year=today.year - years, day=28)
    return anniversary - timedelta(days=extra_days)


# --- datatypes -------------------------------------------------------------------------------------------
def coding(system: str, code: str | int, display: str | None = None) -> JSON:
    """A Coding. `code` may be an int on purpose: some EHRs send SNOMED codes as JSON numbers."""
    result: JSON = {"system": system, "code": code}
    if display is not None:
        result["display"] = display
    return result


def snomed(code: str | int, display: str | None = None) -> JSON:
    return coding(SNOMED, code, display)


def icd10cm(code: str, display: str | None = None) -> JSON:
    return coding(ICD10CM, code, display)


def loinc(code: str, display: str | None = None) -> JSON:
    return coding(LOINC, code, display)


def rxnorm(code: str, display: str | None = None) -> JSON:
    return coding(RXNORM, code, display)


def concept(*codings: JSON, text: str | None = None) -> JSON:
    """A CodeableConcept; with no codings and only `text` it is the text-only shape of §3.11."""
    result: JSON = {}
    if codings:
        result["coding"] = list(codings)
    if text is not None:
        result["text"] = text
    return result


def reference(patient_id: str = PATIENT_ID) -> JSON:
    return {"reference": f"Patient/{patient_id}"}


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


# --- Patient ---------------------------------------------------------------------------------------------
def patient(
    *,
    age_years: int = 62,
    gender: str = "female",
    birth_date: str | None = None,
    deceased: bool | str | None = None,
    patient_id: str = PATIENT_ID,
) -> JSON:
    """A Patient. `deceased` True/False -> deceasedBoolean, a string -> deceasedDateTime.

    The birthday is 100 days past, so the age in whole years is `age_years` whatever the service's clock
    or timezone does at midnight.
    """
    result: JSON = {
        "resourceType": "Patient",
        "id": patient_id,
        "gender": gender,
        "birthDate": birth_date or years_before_today(age_years, extra_days=100).isoformat(),
    }
    if isinstance(deceased, bool):
        result["deceasedBoolean"] = deceased
    elif isinstance(deceased, str):
        result["deceasedDateTime"] = deceased
    return result


# --- Condition -------------------------------------------------------------------------------------------
def condition(
    code: JSON | str,
    *,
    clinical_status: str | None = "active",
    verification_status: str | None = "confirmed",
    category: str | None = "problem-list-item",
    onset_days_ago: float | None = None,
    recorded_days_ago: float | None = None,
    abatement_days_ago: float | None = None,
    patient_id: str = PATIENT_ID,
    **extra: Any,
) -> JSON:
    """A Condition with US Core categories and the terminology.hl7.org status CodeableConcepts.

    `onset_days_ago` gives onsetDateTime, `recorded_days_ago` recordedDate, `abatement_days_ago`
    abatementDateTime. Other onset shapes (onsetPeriod, onsetAge, a bare date, a partial date, a dateTime
    without timezone) go in `extra` with their FHIR names, which are merged in last. A `code` that is a
    string is sent as such: that is the malformed shape some tests need.
    """
    result: JSON = {"resourceType": "Condition", "id": _id("condition")}
    if clinical_status is not None:
        result["clinicalStatus"] = concept(coding(CONDITION_CLINICAL, clinical_status))
    if verification_status is not None:
        result["verificationStatus"] = concept(coding(CONDITION_VER_STATUS, verification_status))
    if category is not None:
        result["category"] = [concept(coding(CONDITION_CATEGORY, category))]
    result["code"] = code
    result["subject"] = reference(patient_id)
    if onset_days_ago is not None:
        result["onsetDateTime"] = iso_datetime(onset_days_ago)
    if abatement_days_ago is not None:
        result["abatementDateTime"] = iso_datetime(abatement_days_ago)
    if recorded_days_ago is not None:
        result["recordedDate"] = iso_datetime(recorded_days_ago)
    result.update(extra)
    return result


# Breast cancer (table 2.1 / 2.3); onset three years back, as a typical survivor's problem list looks.
BREAST_CANCER_SNOMED = snomed("254837009", "Malignant neoplasm of breast (disorder)")
BREAST_CANCER_ICD = icd10cm("C50.911", "Malignant neoplasm of unspecified site of right female breast")


def breast_cancer(*codings: JSON, onset_days_ago: float = 3 * 365, **kwargs: Any) -> JSON:
    """A breast-cancer Condition; by default SNOMED 254837009 plus ICD-10-CM C50.911, as EHRs dual-code."""
    code = concept(*(codings or (BREAST_CANCER_SNOMED, BREAST_CANCER_ICD)))
    kwargs.setdefault("recorded_days_ago", onset_days_ago)
    return condition(code, onset_days_ago=onset_days_ago, **kwargs)


# Spinal pain (table 2.5).
LOW_BACK_PAIN = (
    snomed("279039007", "Low back pain (finding)"),
    icd10cm("M54.50", "Low back pain, unspecified"),
)
THORACIC_PAIN = (snomed("279038004", "Thoracic back pain"), icd10cm("M54.6", "Pain in thoracic spine"))
NECK_PAIN = (snomed("81680005", "Neck pain (finding)"), icd10cm("M54.2", "Cervicalgia"))
CHRONIC_LOW_BACK_PAIN = (snomed("278860009", "Chronic low back pain (finding)"),)


def back_pain(
    *codings: JSON, onset_days_ago: float | None = 10, recorded_days_ago: float | None = None, **kwargs: Any
) -> JSON:
    """A spinal-pain Condition (default: low back pain, onset 10 days ago, recorded the same day)."""
    code = concept(*(codings or LOW_BACK_PAIN))
    if recorded_days_ago is None:
        recorded_days_ago = onset_days_ago
    kwargs.setdefault("category", "encounter-diagnosis")
    return condition(code, onset_days_ago=onset_days_ago, recorded_days_ago=recorded_days_ago, **kwargs)


# Neurological features (table 2.6) and cord compression / cauda equina.
DIFFICULTY_WALKING = icd10cm("R26.2", "Difficulty in walking, not elsewhere classified")
URINARY_RETENTION = icd10cm("R33.9", "Retention of urine, unspecified")
MUSCLE_WEAKNESS = snomed("26544005", "Muscle weakness (finding)")
GENERIC_WEAKNESS = icd10cm("R53.1", "Weakness")
CORD_COMPRESSION = icd10cm("G95.20", "Unspecified cord compression")
CAUDA_EQUINA_ICD = icd10cm("G83.4", "Cauda equina syndrome")
CAUDA_EQUINA_SNOMED = snomed("192970008", "Cauda equina syndrome (disorder)")
SADDLE_NUMBNESS = snomed("449813001", "Numbness of saddle area")
LUMBAR_RADICULOPATHY = icd10cm("M54.16", "Radiculopathy, lumbar region")


def finding(*codings: JSON, onset_days_ago: float | None = 3, **kwargs: Any) -> JSON:
    """Any other coded Condition (a neurological feature, metastasis, hospice...), recent by default."""
    kwargs.setdefault("category", "encounter-diagnosis")
    kwargs.setdefault("recorded_days_ago", onset_days_ago)
    return condition(concept(*codings), onset_days_ago=onset_days_ago, **kwargs)


# --- medications (table 2.9) -----------------------------------------------------------------------------
FULVESTRANT = rxnorm("282357", "fulvestrant")
PALBOCICLIB = rxnorm("1601374", "palbociclib")
VERZENIO_100_SBD = rxnorm("1946840", "Verzenio 100 MG Oral Tablet")
LETROZOLE = rxnorm("72965", "letrozole")
ANASTROZOLE_SCD = rxnorm("199224", "anastrozole 1 MG Oral Tablet")
TAMOXIFEN = rxnorm("10324", "tamoxifen")
DOCETAXEL = rxnorm("72962", "docetaxel")


def medication_statement(
    medication: JSON, *, status: str = "active", effective_days_ago: float = 60, patient_id: str = PATIENT_ID
) -> JSON:
    """A MedicationStatement with an RxNorm medicationCodeableConcept."""
    return {
        "resourceType": "MedicationStatement",
        "id": _id("medstatement"),
        "status": status,
        "medicationCodeableConcept": concept(medication, text=medication.get("display")),
        "subject": reference(patient_id),
        "effectiveDateTime": iso_datetime(effective_days_ago),
        "dateAsserted": iso_datetime(min(effective_days_ago, 1)),
    }


def medication_request(
    medication: JSON, *, status: str = "active", authored_days_ago: float = 60, patient_id: str = PATIENT_ID
) -> JSON:
    """A MedicationRequest (intent order) with an RxNorm medicationCodeableConcept."""
    return {
        "resourceType": "MedicationRequest",
        "id": _id("medrequest"),
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": concept(medication, text=medication.get("display")),
        "subject": reference(patient_id),
        "authoredOn": iso_datetime(authored_days_ago),
    }


# --- observations (§3.12) --------------------------------------------------------------------------------
SYMPTOM = loinc("75325-1", "Symptom")
PAIN_PRIMARY_LOCATION = loinc("38204-4", "Pain primary location")
BACKACHE = snomed("161891005", "Backache (finding)")
ABSENT = snomed("2667000", "Absent")
PRESENT = snomed("52101004", "Present")
SPINE_SITE = snomed("421060004", "Spine")
HEART_RATE = loinc("8867-4", "Heart rate")


def observation(
    code: JSON,
    *,
    status: str = "final",
    category: str = "survey",
    effective_days_ago: float | None = 7,
    patient_id: str = PATIENT_ID,
    **value: Any,
) -> JSON:
    """An Observation; pass the value under its FHIR name: valueCodeableConcept=..., valueBoolean=False."""
    result: JSON = {
        "resourceType": "Observation",
        "id": _id("observation"),
        "status": status,
        "category": [concept(coding(OBSERVATION_CATEGORY, category))],
        "code": code,
        "subject": reference(patient_id),
    }
    if effective_days_ago is not None:
        result["effectiveDateTime"] = iso_datetime(effective_days_ago)
    result.update(value)
    return result


def symptom_observation(symptom: JSON = BACKACHE, **kwargs: Any) -> JSON:
    """LOINC 75325-1 Symptom whose value is the SNOMED finding: the symptom is present."""
    return observation(concept(SYMPTOM), valueCodeableConcept=concept(symptom), **kwargs)


def heart_rate(bpm: int, *, effective_days_ago: float) -> JSON:
    """An irrelevant vital sign, for bulk."""
    return observation(
        concept(HEART_RATE),
        category="vital-signs",
        effective_days_ago=effective_days_ago,
        valueQuantity={"value": bpm, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    )


# --- imaging (table 2.10) --------------------------------------------------------------------------------
MRI_WHOLE_SPINE_LOINC = loinc("42698-1", "MR Cervical and thoracic and lumbar spine")
MRI_WHOLE_SPINE_SNOMED = snomed(
    "411611000119102", "MRI of cervical, thoracic and lumbar spine without contrast"
)
MRI_THORACIC_LUMBAR_SNOMED = snomed("411571000119106", "MRI of thoracic and lumbar spine without contrast")
MRI_LUMBAR_SNOMED = snomed("241648005", "MRI of lumbar spine")
CT_WHOLE_SPINE_SNOMED = snomed("429875006", "CT of whole spine")
BONE_SCAN_LOINC = loinc("39818-0", "NM Whole body Bone Views")
PET_WHOLE_BODY_LOINC = loinc("44139-4", "PET whole body")
XRAY_WHOLE_SPINE_SNOMED = snomed("1367647005", "Plain X-ray of entire vertebral column")
WHOLE_SPINE_ORDER_CODES = frozenset(
    {
        (LOINC, "42698-1"),
        (LOINC, "30854-4"),
        (LOINC, "30855-1"),
        (LOINC, "91561-1"),
        (LOINC, "38061-8"),
        (SNOMED, "411611000119102"),
        (SNOMED, "495741000119105"),
    }
)


def service_request(
    code: JSON, *, status: str = "active", authored_days_ago: float = 1, patient_id: str = PATIENT_ID
) -> JSON:
    """An imaging order (intent order)."""
    return {
        "resourceType": "ServiceRequest",
        "id": _id("servicerequest"),
        "status": status,
        "intent": "order",
        "code": concept(code, text=code.get("display")),
        "subject": reference(patient_id),
        "authoredOn": iso_datetime(authored_days_ago),
    }


def diagnostic_report(
    code: JSON, *, status: str = "final", effective_days_ago: float = 1, patient_id: str = PATIENT_ID
) -> JSON:
    """A radiology DiagnosticReport."""
    return {
        "resourceType": "DiagnosticReport",
        "id": _id("diagnosticreport"),
        "status": status,
        "category": [concept(coding(DIAGNOSTIC_SERVICE_SECTION, "RAD", "Radiology"))],
        "code": concept(code, text=code.get("display")),
        "subject": reference(patient_id),
        "effectiveDateTime": iso_datetime(effective_days_ago),
        "issued": iso_datetime(effective_days_ago),
    }


def imaging_study(
    procedure_code: JSON,
    *,
    modality: str = "MR",
    status: str = "available",
    started_days_ago: float = 1,
    patient_id: str = PATIENT_ID,
) -> JSON:
    """An ImagingStudy whose procedureCode says what was imaged."""
    return {
        "resourceType": "ImagingStudy",
        "id": _id("imagingstudy"),
        "status": status,
        "modality": [coding(DICOM_DCM, modality)],
        "subject": reference(patient_id),
        "started": iso_datetime(started_days_ago),
        "procedureCode": [concept(procedure_code, text=procedure_code.get("display"))],
        "description": procedure_code.get("display"),
    }


def procedure(
    code: JSON, *, status: str = "completed", performed_days_ago: float = 1, patient_id: str = PATIENT_ID
) -> JSON:
    """A Procedure (imaging, breast surgery, hospice care...)."""
    return {
        "resourceType": "Procedure",
        "id": _id("procedure"),
        "status": status,
        "code": concept(code, text=code.get("display")),
        "subject": reference(patient_id),
        "performedDateTime": iso_datetime(performed_days_ago),
    }


# --- Bundles and the hook request ------------------------------------------------------------------------
def encounter(*reasons: JSON, status: str = "finished", days_ago: float = 5, patient_id: str = PATIENT_ID) -> JSON:
    """An ambulatory Encounter whose reasonCode is given (pain documented only as the visit reason)."""
    return {
        "resourceType": "Encounter",
        "id": _id("encounter"),
        "status": status,
        "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory"),
        "subject": reference(patient_id),
        "period": {"start": iso_datetime(days_ago), "end": iso_datetime(days_ago)},
        "reasonCode": [concept(r) if "coding" not in r and "text" not in r else r for r in reasons],
    }


def searchset(resources: Iterable[JSON]) -> JSON:
    """A FHIR searchset Bundle, as a FHIR server answers a prefetch query."""
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": resource,
            "search": {"mode": "match"},
        }
        for resource in resources
    ]
    bundle: JSON = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "total": len(entries),
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def hook_request(
    patient_resource: JSON | None,
    *,
    patient_id: str | None = None,
    **resources_by_key: list[JSON] | JSON | None,
) -> JSON:
    """A CDS Hooks 2.0 patient-view request that fills all ten prefetch keys.

    For each key other than `patient`: a list becomes a searchset Bundle, a dict is sent as it is (a ready
    Bundle or an OperationOutcome), an explicit None is sent as JSON null ("no data"), and a key not given
    becomes an empty searchset Bundle (what the CDS Hooks sandbox sends for an empty search). No
    `fhirServer` is sent, so a service that ignored a key would have to answer 412, never fetch.
    """
    unknown = set(resources_by_key) - set(PREFETCH_KEYS[1:])
    if unknown:
        raise TypeError(f"not a prefetch key: {sorted(unknown)}")
    if patient_id is None:
        patient_id = patient_resource["id"] if patient_resource else PATIENT_ID
    prefetch: JSON = {"patient": patient_resource}
    for key in PREFETCH_KEYS[1:]:
        value = resources_by_key.get(key, [])
        prefetch[key] = searchset(value) if isinstance(value, list) else value
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/scenario-clinician", "patientId": patient_id},
        "prefetch": prefetch,
    }


def hook_request_from_bundle(bundle: Mapping[str, Any]) -> JSON:
    """Split an exported patient Bundle (Synthea collection/transaction) into the ten prefetch keys.

    The Patient goes to `patient`; the eight searched types go to their keys; every other resource type is
    dropped, as the service's prefetch queries would never return it.
    """
    patients: list[JSON] = []
    by_key: dict[str, list[JSON]] = {key: [] for key in KEY_BY_RESOURCE_TYPE.values()}
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            patients.append(resource)
        elif resource["resourceType"] in KEY_BY_RESOURCE_TYPE:
            by_key[KEY_BY_RESOURCE_TYPE[resource["resourceType"]]].append(resource)
    if len(patients) != 1:
        raise ValueError(f"expected one Patient in the Bundle, found {len(patients)}")
    return hook_request(patients[0], **by_key)  # type: ignore[arg-type]


# --- order-select / order-sign: draft orders (CDS Hooks 2.0) -----------------------------------------------
CPT = "http://www.ama-assn.org/go/cpt"
# The CPT codes and displays as the CDS Hooks sandbox's imaging view sends them (docs/clinical-rules.md §2.10).
MRI_LUMBAR_CPT = coding(CPT, "72148", "Magnetic resonance (eg, proton) imaging, spinal canal and contents, lumbar; "
                        "without contrast material")
MRI_THORACIC_CPT = coding(CPT, "72146", "Magnetic resonance (eg, proton) imaging, spinal canal and contents, "
                          "thoracic; without contrast material")
MRI_CERVICAL_CPT = coding(CPT, "72141", "Magnetic resonance (eg, proton) imaging, spinal canal and contents, "
                          "cervical; without contrast material")
CT_THORACIC_CPT = coding(CPT, "72128", "Computed tomography, thoracic spine; without contrast material")
BONE_SCAN_CPT = coding(CPT, "78306", "Bone and/or joint imaging; whole body")
PET_CT_WHOLE_BODY_CPT = coding(CPT, "78816", "Positron emission tomography (PET) with concurrently acquired "
                               "computed tomography (CT) for attenuation correction and anatomical localization "
                               "imaging; whole body")
XRAY_LUMBAR_CPT = coding(CPT, "72100", "Radiologic examination, spine, lumbosacral; 2 or 3 views")
MRI_WHOLE_SPINE_WO_LOINC = loinc("30854-4", "MR Cervical and thoracic and lumbar spine WO contrast")
# A lab order, not imaging: LOINC 2000-8 Calcium [Moles/volume] in Serum or Plasma.
CALCIUM_LAB_LOINC = loinc("2000-8", "Calcium [Moles/volume] in Serum or Plasma")


def draft_order(
    code: JSON, *, priority: str | None = None, order_id: str | None = None, patient_id: str = PATIENT_ID,
    intent: str = "order", reason: JSON | None = None,
) -> JSON:
    """A draft ServiceRequest as an EHR holds it while the order is written (status draft)."""
    result: JSON = {
        "resourceType": "ServiceRequest",
        "id": order_id or _id("draft-order"),
        "status": "draft",
        "intent": intent,
        "code": concept(code, text=code.get("display")),
        "subject": reference(patient_id),
        "requester": {"reference": "Practitioner/scenario-clinician"},
    }
    if priority is not None:
        result["priority"] = priority
    if reason is not None:
        result["reasonCode"] = [concept(reason, text=reason.get("display"))]
    return result


def draft_medication(medication: JSON, *, patient_id: str = PATIENT_ID) -> JSON:
    """A draft MedicationRequest: part of the order session, never judged."""
    result = medication_request(medication, patient_id=patient_id, authored_days_ago=0)
    result["status"] = "draft"
    return result


def draft_orders(*resources: JSON) -> JSON:
    """context.draftOrders: a Bundle of the draft orders (CDS Hooks 2.0 uses a collection-like Bundle)."""
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def order_hook_request(
    hook: str, patient_resource: JSON | None, drafts: Iterable[JSON], *, selections: Iterable[str] | None = None,
    **resources_by_key: list[JSON] | JSON | None,
) -> JSON:
    """An order-select or order-sign request: the patient-view prefetch, plus draftOrders (and selections)."""
    request = hook_request(patient_resource, **resources_by_key)
    orders = list(drafts)
    request["hook"] = hook
    request["context"]["draftOrders"] = draft_orders(*orders)
    if hook == "order-select":
        chosen = list(selections) if selections is not None else [f"ServiceRequest/{orders[0]['id']}"]
        request["context"]["selections"] = chosen
    return request
