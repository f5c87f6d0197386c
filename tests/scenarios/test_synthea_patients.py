"""Every Synthea patient under tests/data/synthea through the service, with the outcome each must get.

Each patient Bundle is split into the nine prefetch keys by resourceType (other types are dropped, as
the service's prefetch queries would never return them). The bulk export references the patient as
`Patient/<id>`, the SpeziFHIR transaction Bundles as `urn:uuid:<id>`; in both the Patient id is the uuid.

A "no card" result alone proves little (a service that read nothing would pass), so the variants below
add a new back-pain Condition (and where needed breast cancer) to real files, built in memory, and show
that the same data then does raise the card. The data files themselves are never modified.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.scenarios.fhir_builders import (
    DIFFICULTY_WALKING,
    JSON,
    KEY_BY_RESOURCE_TYPE,
    back_pain,
    breast_cancer,
    finding,
    hook_request_from_bundle,
)
from tests.scenarios.test_clinical_scenarios import call_service, highest_indicator

BULK = "synthea/sample-bulk-10-patients"
SPEZI = "synthea/spezifhir-mock-patients"
SPEZI_PATIENT = f"{SPEZI}/Edythe31_Morar593_9c3df38a-d3b7-2198-3898-51f9153d023d.json"

# Expected highest indicator for every file, and why (checked file by file: Conditions, medications,
# procedures, Patient.deceased[x] and birthDate).
EXPECTED: dict[str, tuple[str | None, str]] = {
    f"{BULK}/129c6ac7-8d06-89de-ad63-0204a93e76c3.json": (
        None,
        "breast cancer 254837009 (onset 1989, still 'active') but deceased 1989-05-09 (§1.5.3); "
        "no spinal pain either; paclitaxel/cisplatin are tier C and infer nothing",
    ),
    f"{BULK}/3af3708d-41f1-cd80-f3dd-ec5ac76072bf.json": (
        None,
        "male, deceased 1971; seizure disorder, ankle fracture; no cancer, no spinal pain",
    ),
    f"{BULK}/63ee2253-bdd5-da55-2ad2-b4984d0ad700.json": (
        None,
        "boy born 2011 (under 18, §1.5.5); ankle fracture, sinusitis; no cancer, no spinal pain",
    ),
    f"{BULK}/6a4160eb-a793-2f86-2302-378626f46cce.json": (
        None,
        "woman born 1963; hypertension, knee osteoarthritis; no cancer, no spinal pain",
    ),
    f"{BULK}/7bc002fa-dc52-17d6-1563-fd8901826f7d.json": (
        None,
        "woman born 1978; hyperlipidaemia, contraception; no cancer, no spinal pain",
    ),
    f"{BULK}/8e1a0a7c-e308-444b-075a-3c2b1f60f881.json": (
        None,
        "man born 1960; COVID-19 with joint and muscle pain (not spinal); no cancer",
    ),
    f"{BULK}/a4a401d1-a46a-eb4a-8a38-760d5d79d6ec.json": (
        None,
        "woman born 1981; pregnancies, sleep apnoea; no cancer, no spinal pain",
    ),
    f"{BULK}/a5cb8ce9-cec6-6b23-0990-cbaf753578a4.json": (
        None,
        "woman born 1927, alive; osteoporosis with pathological fracture on alendronic acid (not a "
        "breast-cancer drug tier); no cancer, no spinal pain",
    ),
    f"{BULK}/bb6a9034-2f23-2508-d29d-35efee156dc9.json": (
        None,
        "woman born 2007; throat and ear infections; no cancer, no spinal pain",
    ),
    f"{BULK}/ca15b832-01e4-41dd-6a52-97bd3e5510cb.json": (
        None,
        "chronic low back pain 278860009 and chronic neck pain since 2014, but no cancer of any kind",
    ),
    f"{BULK}/cbc86e51-9eca-3855-76ec-c058f72c5761.json": (
        None,
        "man born 1995; allergies, atopic dermatitis; no cancer, no spinal pain",
    ),
    f"{BULK}/fb7c882a-f897-e7c5-67e0-825e7fd55d15.json": (
        None,
        "chronic low back pain 278860009 and chronic neck pain since 2020, but no cancer of any kind",
    ),
    SPEZI_PATIENT: (
        None,
        "woman born 1974, alive; cardiac arrest history; pain scores (72514-3) with no site; no cancer",
    ),
}


@cache
def _load(path: str) -> str:
    return Path(path).read_text()


def load_bundle(data_dir: Path, relative: str) -> JSON:
    """A fresh copy of a data file (the cache holds text, so tests can modify what they get)."""
    bundle: JSON = json.loads(_load(str(data_dir / relative)))
    return bundle


def add_resources(request_body: JSON, *resources: JSON) -> None:
    """Append resources to the right prefetch searchset Bundles of a built request."""
    for resource in resources:
        bundle = request_body["prefetch"][KEY_BY_RESOURCE_TYPE[resource["resourceType"]]]
        bundle.setdefault("entry", []).append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
        bundle["total"] = len(bundle["entry"])


def alive(request_body: JSON) -> None:
    """Remove Patient.deceased[x] (a what-if variant; the file is untouched)."""
    patient = copy.deepcopy(request_body["prefetch"]["patient"])
    for key in [k for k in patient if k.startswith("deceased")]:
        del patient[key]
    request_body["prefetch"]["patient"] = patient


def with_subject(resource: JSON, reference: str) -> JSON:
    resource["subject"] = {"reference": reference}
    return resource


def test_expectations_cover_every_file(data_dir: Path) -> None:
    on_disk = {
        str(path.relative_to(data_dir))
        for folder in (BULK, SPEZI)
        for path in (data_dir / folder).glob("*.json")
    }
    assert on_disk == set(EXPECTED), "every Synthea patient file needs an expected outcome here"


@pytest.mark.parametrize("relative", sorted(EXPECTED), ids=lambda p: Path(p).stem[-36:])
def test_synthea_patient(service_client: Any, data_dir: Path, relative: str) -> None:
    expected, why = EXPECTED[relative]
    request_body = hook_request_from_bundle(load_bundle(data_dir, relative))
    body = call_service(service_client, request_body)
    summaries = [card["summary"] for card in body["cards"]]
    assert highest_indicator(body) == expected, f"{why}; got {summaries}"


# --- variants that show the negatives above are not vacuous ----------------------------------------------
BC_1989 = f"{BULK}/129c6ac7-8d06-89de-ad63-0204a93e76c3.json"
CHRONIC_LBP = f"{BULK}/ca15b832-01e4-41dd-6a52-97bd3e5510cb.json"


def test_synthea_breast_cancer_alive_with_new_back_pain_gets_warning(
    service_client: Any, data_dir: Path
) -> None:
    """Synthea's own breast-cancer Condition (1989, 'active', encounter-diagnosis) counts as history, so
    the no-card result for 129c6ac7 is due to the death, not to a failure to read the file."""
    request_body = hook_request_from_bundle(load_bundle(data_dir, BC_1989))
    alive(request_body)
    add_resources(request_body, back_pain(patient_id=request_body["context"]["patientId"]))
    body = call_service(service_client, request_body)
    assert highest_indicator(body) == "warning", [card["summary"] for card in body["cards"]]


def test_synthea_chronic_back_pain_with_later_breast_cancer_stays_quiet(
    service_client: Any, data_dir: Path
) -> None:
    """§3.6: chronic low back pain since 2014 predating a breast cancer found 2 years ago is not new."""
    request_body = hook_request_from_bundle(load_bundle(data_dir, CHRONIC_LBP))
    patient_id = request_body["context"]["patientId"]
    add_resources(request_body, breast_cancer(onset_days_ago=2 * 365, patient_id=patient_id))
    body = call_service(service_client, request_body)
    assert highest_indicator(body) is None, [card["summary"] for card in body["cards"]]


def test_synthea_chronic_back_pain_breast_cancer_and_neuro_feature_is_critical(
    service_client: Any, data_dir: Path
) -> None:
    """§1.2.5: a neurological feature overrides chronicity; Synthea's 278860009 is read as spinal pain."""
    request_body = hook_request_from_bundle(load_bundle(data_dir, CHRONIC_LBP))
    patient_id = request_body["context"]["patientId"]
    add_resources(
        request_body,
        breast_cancer(onset_days_ago=2 * 365, patient_id=patient_id),
        finding(DIFFICULTY_WALKING, patient_id=patient_id),
    )
    body = call_service(service_client, request_body)
    assert highest_indicator(body) == "critical", [card["summary"] for card in body["cards"]]


def test_spezifhir_transaction_bundle(service_client: Any, data_dir: Path) -> None:
    """The SpeziFHIR patient (a transaction Bundle of 442 resources, 1.2 MB) is answered as a well-formed CDS
    response.

    Then, alive and with breast cancer and new back pain added under Synthea's `urn:uuid:` subject
    references, the same big prefetch yields the warning: urn:uuid subjects are this patient's.
    """
    bundle = load_bundle(data_dir, SPEZI_PATIENT)
    assert len(bundle["entry"]) > 400
    request_body = hook_request_from_bundle(bundle)
    body = call_service(service_client, request_body)
    assert highest_indicator(body) is None

    patient_id = request_body["context"]["patientId"]
    alive(request_body)
    add_resources(
        request_body,
        with_subject(breast_cancer(patient_id=patient_id), f"urn:uuid:{patient_id}"),
        with_subject(back_pain(patient_id=patient_id), f"urn:uuid:{patient_id}"),
    )
    body = call_service(service_client, request_body)
    assert highest_indicator(body) == "warning", [card["summary"] for card in body["cards"]]
