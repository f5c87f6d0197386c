"""Write the example hook requests, dated relative to today, and say which card each one gives.

    .venv/bin/python -m examples.generate            # writes examples/generated/*.json (git ignores that folder)
    .venv/bin/python -m examples.generate --out DIR

"New" back pain means an onset within the last 42 days, so a request written once would stop firing after six
weeks: the requests are generated, with every date relative to the moment you run this. Run it again whenever you
come back to the examples. It needs only the service's own install (`pip install -e .`), never the test extras.

The Synthea example is a real Synthea patient (tests/data/synthea/sample-bulk-10-patients, a woman born 1963 with
hypertension and knee osteoarthritis, no cancer) with two Conditions added in Synthea's own shape: breast cancer
diagnosed three years ago, and low back pain that began ten days ago.
"""

from __future__ import annotations

import argparse
import copy
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from examples.fhir_builders import (
    ANASTROZOLE_SCD,
    BREAST_CANCER_ICD,
    BREAST_CANCER_SNOMED,
    DIFFICULTY_WALKING,
    MRI_LUMBAR_CPT,
    MRI_WHOLE_SPINE_WO_LOINC,
    PATIENT_ID,
    URINARY_RETENTION,
    XRAY_LUMBAR_CPT,
    back_pain,
    breast_cancer,
    concept,
    draft_order,
    finding,
    hook_request,
    hook_request_from_bundle,
    iso_datetime,
    medication_request,
    order_hook_request,
    patient,
    searchset,
    snomed,
)

HERE = Path(__file__).parent
ROOT = HERE.parent
OUT = HERE / "generated"
FHIR_SERVER = "http://127.0.0.1:8090/fhir"  # where examples/fhir_server.py serves fhir-server-bundle.json
FHIR_TOKEN = "example-token"
SYNTHEA_PATIENT = ROOT / "tests/data/synthea/sample-bulk-10-patients/6a4160eb-a793-2f86-2302-378626f46cce.json"


def _warning_record() -> dict[str, list[dict[str, Any]]]:
    return {
        "conditions": [breast_cancer(BREAST_CANCER_SNOMED, BREAST_CANCER_ICD), back_pain(onset_days_ago=9)],
        "medicationRequests": [medication_request(ANASTROZOLE_SCD, authored_days_ago=200)],
    }


def _synthea_request(path: Path) -> dict[str, Any]:
    """The Synthea patient as a patient-view request, with breast cancer and new back pain added as Synthea
    writes Conditions (a copy of one of the patient's own Conditions, with a new code and dates)."""
    bundle = orjson.loads(path.read_bytes())
    body = hook_request_from_bundle(bundle)
    conditions = body["prefetch"]["conditions"]["entry"]
    template = conditions[0]["resource"]

    def synthea_condition(suffix: str, code: dict[str, Any], onset_days_ago: float) -> dict[str, Any]:
        added = copy.deepcopy(template)
        added["id"] = f"{template['id'][:-len(suffix)]}{suffix}"
        added["clinicalStatus"]["coding"][0]["code"] = "active"
        added["code"] = concept(code, text=code["display"])
        added["onsetDateTime"] = added["recordedDate"] = iso_datetime(onset_days_ago)
        for key in ("abatementDateTime", "encounter"):
            added.pop(key, None)
        return added

    for added in (
        synthea_condition("bc01", snomed("254837009", "Malignant neoplasm of breast (disorder)"), 3 * 365),
        synthea_condition("lbp1", snomed("279039007", "Low back pain (finding)"), 10),
    ):
        conditions.append({"fullUrl": f"urn:uuid:{added['id']}", "resource": added})
    body["prefetch"]["conditions"]["total"] = len(conditions)
    return body


def examples() -> dict[str, dict[str, Any]]:
    warning = _warning_record()
    critical = {
        **warning,
        "conditions": [*warning["conditions"], finding(DIFFICULTY_WALKING, onset_days_ago=2),
                       finding(URINARY_RETENTION, onset_days_ago=1)],
    }
    without_prefetch = hook_request(patient())
    without_prefetch.pop("prefetch")
    without_prefetch["fhirServer"] = FHIR_SERVER
    without_prefetch["fhirAuthorization"] = {
        "access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/*.read", "subject": "mscc-alert", "patient": PATIENT_ID,
    }
    null_keys = hook_request(patient(), **{key: None for key in (
        "medicationStatements", "medicationRequests", "observations", "serviceRequests", "diagnosticReports",
        "imagingStudies", "procedures")}, conditions=[breast_cancer(BREAST_CANCER_SNOMED)])
    written = {
        "patient-view-warning": hook_request(patient(), **warning),
        "patient-view-critical": hook_request(patient(), **critical),
        "patient-view-null-keys": null_keys,
        "patient-view-fhir-server": without_prefetch,
        # What examples/fhir_server.py serves for the fhir-server example: the critical patient's record.
        "fhir-server-bundle": searchset([patient(), *critical["conditions"], *critical["medicationRequests"]]),
    }
    # The order hooks: the same records, with the drafted scan. The lumbar MRI has the shape the CDS Hooks
    # sandbox's imaging view sends (CPT, intent plan, a SNOMED CT reason).
    low_back_pain = snomed("279039007", "Low back pain (finding)")
    written["order-select-lumbar-xray"] = order_hook_request(
        "order-select", patient(), [draft_order(XRAY_LUMBAR_CPT, order_id="draft-xray-1", reason=low_back_pain)],
        **warning)
    written["order-select-lumbar-mri"] = order_hook_request(
        "order-select", patient(), [draft_order(MRI_LUMBAR_CPT, order_id="example-request-id", intent="plan",
                                                reason=low_back_pain)], **critical)
    written["order-sign-whole-spine-mri-stat"] = order_hook_request(
        "order-sign", patient(), [draft_order(MRI_WHOLE_SPINE_WO_LOINC, order_id="draft-mri-1", priority="stat",
                                              reason=low_back_pain)], **critical)
    if SYNTHEA_PATIENT.exists():  # tests/data is in every clone; not in an installed wheel
        written["patient-view-synthea"] = _synthea_request(SYNTHEA_PATIENT)
    return written


def _answer(body: dict[str, Any]) -> str:
    """What the service answers, evaluated in-process exactly as `mscc-alert evaluate` does."""
    from cds_hooks.services.registry import registry_from_settings
    from cds_hooks.settings import Settings
    from fhir_mapping.terminology import load_terminology

    services = registry_from_settings(Settings(database_url="memory://"), load_terminology(), open_mode=True)
    service = services.for_hook(body["hook"])
    assert service is not None, body["hook"]
    cards = service.evaluate(service.decode(orjson.dumps(body)), datetime.now(UTC)).cards
    return ", ".join(f"a {card['indicator']} card" for card in cards) or "no card"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder to write to (default: examples/generated, which git ignores)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written = examples()
    for name, body in written.items():
        (out / f"{name}.json").write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    shown = out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out
    print(f"wrote {len(written)} files to {shown}/, dated relative to now:")
    for name, body in written.items():
        if name == "fhir-server-bundle":
            print(f"  {name}.json: what examples/fhir_server.py serves for patient-view-fhir-server.json")
        elif name == "patient-view-fhir-server":
            print(f"  {name}.json: no prefetch; first start the example FHIR server in another terminal:\n"
                  f"      .venv/bin/python -m examples.fhir_server --token {FHIR_TOKEN}\n"
                  "    then the service fetches the record from it and answers with a critical card")
        else:
            print(f"  {name}.json: {_answer(body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
