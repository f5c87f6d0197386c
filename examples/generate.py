"""Write the example hook requests, with dates relative to today, and the response each one gives.

    .venv/bin/python -m examples.generate          # rewrites examples/*.json

A fixed file would stop being "new back pain" after 42 days, so the requests are generated; re-run this
before trying them. Responses carry fresh card uuids each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.scenarios.fhir_builders import (
    ANASTROZOLE_SCD,
    BREAST_CANCER_ICD,
    BREAST_CANCER_SNOMED,
    DIFFICULTY_WALKING,
    PATIENT_ID,
    URINARY_RETENTION,
    back_pain,
    breast_cancer,
    finding,
    hook_request,
    medication_request,
    patient,
    searchset,
)

HERE = Path(__file__).parent
FHIR_SERVER = "http://127.0.0.1:8090/fhir"  # examples/fhir_server.py serves the patient bundle there


def _warning_record() -> dict[str, list[dict[str, Any]]]:
    return {
        "conditions": [breast_cancer(BREAST_CANCER_SNOMED, BREAST_CANCER_ICD), back_pain(onset_days_ago=9)],
        "medicationRequests": [medication_request(ANASTROZOLE_SCD, authored_days_ago=200)],
    }


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
        "access_token": "example-token", "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/*.read", "subject": "mscc-alert", "patient": PATIENT_ID,
    }
    null_keys = hook_request(patient(), **{key: None for key in (
        "medicationStatements", "medicationRequests", "observations", "serviceRequests", "diagnosticReports",
        "imagingStudies", "procedures")}, conditions=[breast_cancer(BREAST_CANCER_SNOMED)])
    return {
        "patient-view-warning": hook_request(patient(), **warning),
        "patient-view-critical": hook_request(patient(), **critical),
        "patient-view-fhir-server": without_prefetch,
        "patient-view-null-keys": null_keys,
        # What examples/fhir_server.py serves for the fhir-server example: the critical patient's record.
        "fhir-server-bundle": searchset([patient(), *critical["conditions"], *critical["medicationRequests"]]),
    }


def main() -> None:
    from fastapi.testclient import TestClient

    from cds_hooks.app import create_app
    from cds_hooks.settings import Settings

    written = examples()
    for name, body in written.items():
        (HERE / f"{name}.json").write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    with TestClient(create_app(Settings(database_url="memory://", auth="off"))) as client:
        for name in ("patient-view-warning", "patient-view-critical", "patient-view-null-keys"):
            response = client.post("/cds-services/breast-cancer-back-pain", json=written[name])
            (HERE / f"{name}.response.json").write_bytes(
                orjson.dumps(response.json(), option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {len(written)} requests and 3 responses to {HERE}")


if __name__ == "__main__":
    main()
