"""Hook-request patients as a FHIR Bulk Data export, and hook requests back from an export's patients.

An export here is what `$export` writes (HL7 Bulk Data Access IG): NDJSON, one resource type per file, each
type split over several files in shuffled order, some files gzipped, file names that say nothing true about
the type (the sweep must read `resourceType`). Patients are referenced as `Patient/<id>`.
"""

from __future__ import annotations

import gzip
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from tests.scenarios.fhir_builders import JSON, KEY_BY_RESOURCE_TYPE, PREFETCH_KEYS, hook_request

SYNTHEA_BULK = "synthea/sample-bulk-10-patients"
SYNTHEA_SPEZI = "synthea/spezifhir-mock-patients"
DATA = Path(__file__).resolve().parents[1] / "data"


def request_resources(request: JSON) -> list[JSON]:
    """Every resource a patient-view request carries: the Patient and the entries of each prefetch Bundle."""
    found: list[JSON] = []
    for value in request["prefetch"].values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            found += [e["resource"] for e in value.get("entry", []) if isinstance(e.get("resource"), dict)]
        elif value.get("resourceType") not in (None, "OperationOutcome"):
            found.append(value)
    return found


def renamed(value: Any, names: dict[str, str]) -> Any:
    """A deep copy with each patient id in `names` replaced (the Patient's id and every reference to it)."""
    text = orjson.dumps(value).decode()
    for old, new in names.items():
        text = text.replace(f'"Patient/{old}"', f'"Patient/{new}"').replace(f'"urn:uuid:{old}"', f'"Patient/{new}"')
        text = text.replace(f'"id":"{old}"', f'"id":"{new}"').replace(f'"patientId":"{old}"', f'"patientId":"{new}"')
    return orjson.loads(text)


_PATIENT_REFERENCE = re.compile(r"^(?:Patient/|urn:uuid:)([^/]+)$")


def owner(resource: JSON) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            match = _PATIENT_REFERENCE.match(ref["reference"])
            return match.group(1) if match else None
    return None


def by_patient(resources: Iterable[JSON]) -> dict[str, list[JSON]]:
    grouped: dict[str, list[JSON]] = defaultdict(list)
    for resource in resources:
        patient = owner(resource)
        if patient is not None:
            grouped[patient].append(resource)
    return grouped


def hook_request_for(patient_id: str, resources: list[JSON]) -> JSON:
    """The patient-view request an EHR would send for these resources of one patient (all ten keys)."""
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    keyed: dict[str, list[JSON]] = {key: [] for key in PREFETCH_KEYS[1:]}
    for resource in resources:
        key = KEY_BY_RESOURCE_TYPE.get(resource.get("resourceType", ""))
        if key:
            keyed[key].append(resource)
    return hook_request(patients[0] if patients else None, patient_id=patient_id, **keyed)  # type: ignore[arg-type]


def synthea_bundles() -> list[Path]:
    """The Synthea patient Bundles under tests/data (empty when that data is not there)."""
    return sorted((DATA / SYNTHEA_BULK).glob("*.json")) + sorted((DATA / SYNTHEA_SPEZI).glob("*.json"))


def synthea_patient(path: Path, new_id: str) -> list[JSON]:
    """A Synthea patient's resources with a new patient id (and resource ids made unique with it)."""
    bundle = orjson.loads(path.read_bytes())
    resources = [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
    patient_ids = [r["id"] for r in resources if r.get("resourceType") == "Patient"]
    copied = renamed(resources, {pid: new_id for pid in patient_ids})
    for resource in copied:
        if resource.get("resourceType") != "Patient" and "id" in resource:
            resource["id"] = f"{resource['id']}-{new_id}"
    return list(copied)


def write_export(folder: Path, resources: Iterable[JSON], *, files_per_type: int = 3, seed: int = 7,
                 gzip_every: int = 2, dumps: Callable[[JSON], bytes] = orjson.dumps) -> list[Path]:
    """NDJSON files as `$export` writes them, each line written by `dumps`; every `gzip_every`-th file gzipped.
    Returns the files."""
    rng = random.Random(seed)
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for resource in resources:
        by_type[resource["resourceType"]].append(dumps(resource))
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for type_index, (_kind, lines) in enumerate(sorted(by_type.items())):
        rng.shuffle(lines)
        parts = min(files_per_type, len(lines))
        for part in range(parts):
            # Names that say nothing about the type, and one that lies about it.
            name = f"{'Observation' if type_index % 4 == 1 else 'part'}-{type_index:02d}-{part}.ndjson"
            body = b"".join(line + b"\n" for line in lines[part::parts])
            if len(written) % gzip_every == gzip_every - 1:
                path = folder / f"{name}.gz"
                path.write_bytes(gzip.compress(body))
            else:
                path = folder / name
                path.write_bytes(body)
            written.append(path)
    return written


def iter_ndjson(folder: Path) -> Iterator[bytes]:
    for path in sorted(folder.iterdir()):
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        yield from (line for line in data.split(b"\n") if line.strip())
