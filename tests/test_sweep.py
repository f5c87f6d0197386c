"""`mscc-alert sweep` gives every patient of a Bulk export the answer the hook gives that patient.

Every clinical scenario of the suite becomes a patient (ids renamed per scenario, "someone else's" resources
going to a patient of their own), buried among Synthea patients copied with new ids, written as a Bulk
export: several shuffled files per type, some gzipped, file names that lie. Each patient is also sent to the
hook as a patient-view request holding exactly that patient's resources. The worklist must hold exactly the
patients the hook gives a card, with the same indicator, kind and card, on both engines.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from cds_hooks.protocol.fhir_client import FetchLimits
from cds_hooks.services.patient_view import PatientViewService
from cds_hooks.settings import Settings
from cds_hooks.sweep.run import SweepOptions, run_sweep
from fhir_mapping.terminology import load_terminology
from tests.scenarios import bulk_export as bulk
from tests.scenarios import fhir_builders as fb
from tests.scenarios.fhir_builders import JSON, OTHER_PATIENT_ID, PATIENT_ID
from tests.scenarios.test_clinical_scenarios import SCENARIOS, assert_valid_cds_response, call_service

SYNTHEA_COPIES = 3  # each Synthea patient appears this many times, each time with new ids
MR = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}


@dataclass
class Population:
    export: Path
    now: datetime
    resources: list[JSON]
    expected: dict[str, tuple[str, str, JSON]]  # patient id -> (indicator, kind, card) the hook gives
    scenario_ids: list[str]


def _named(resources: list[JSON], index: int) -> None:
    """Give a scenario's Patient an MRN and a name (worklist columns; the rules never read them)."""
    for resource in resources:
        if resource["resourceType"] == "Patient":
            resource["identifier"] = [{"type": {"coding": [MR]}, "value": f"MRN-{index:05d}"}]
            resource["name"] = [{"use": "official", "family": f"O'Test <{index}>", "given": ["Ann"]}]


def _hook_answer(service_client: Any, service: PatientViewService, request: JSON) -> tuple[str, str, JSON] | None:
    body = call_service(service_client, request)  # over the real ASGI app, with the CDS Hooks card rules
    evaluation = service.evaluate(service.decode(orjson.dumps(request))).evaluation
    if not body["cards"]:
        assert not evaluation.cards
        return None
    assert len(body["cards"]) == 1 and evaluation.decision.kind is not None
    card = body["cards"][0]
    assert (card["indicator"], card["summary"]) == (evaluation.cards[0]["indicator"], evaluation.cards[0]["summary"])
    return card["indicator"], evaluation.decision.kind, card


@pytest.fixture(scope="module")
def population(service_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Population:
    synthea = bulk.synthea_bundles()
    if not synthea:
        pytest.skip("Synthea test data not found under tests/data/synthea: the parity export buries the scenario "
                    "patients among copies of those patients")
    service = PatientViewService(load_terminology(), Settings().policy(), FetchLimits())
    resources: list[JSON] = []
    scenario_ids = []
    for index, param in enumerate(SCENARIOS):
        request = param.values[0]
        names = {PATIENT_ID: f"scn-{index:03d}", OTHER_PATIENT_ID: f"scn-{index:03d}-other"}
        renamed = bulk.request_resources(bulk.renamed(request, names))
        _named(renamed, index)
        resources += renamed
        scenario_ids.append(names[PATIENT_ID])
        # The scenario as the suite sends it and as this patient's own resources say the same thing.
        original = _hook_answer(service_client, service, bulk.renamed(request, names))
        regrouped = _hook_answer(service_client, service, bulk.hook_request_for(
            names[PATIENT_ID], bulk.by_patient(renamed).get(names[PATIENT_ID], [])))
        assert (original or ("",))[:2] == (regrouped or ("",))[:2], param.id
    resources += _edge_patients()
    for copy in range(SYNTHEA_COPIES):
        for index, path in enumerate(synthea):
            resources += bulk.synthea_patient(path, f"syn-{copy}-{index:02d}-{path.stem[-12:]}")
    expected = {}
    for patient_id, theirs in bulk.by_patient(resources).items():
        answer = _hook_answer(service_client, service, bulk.hook_request_for(patient_id, theirs))
        if answer is not None:
            expected[patient_id] = answer
    export = tmp_path_factory.mktemp("bulk") / "export"
    bulk.write_export(export, resources, files_per_type=3)
    return Population(export, datetime.now(UTC), resources, expected, scenario_ids)


# Patients at the edge a faster sweep would be tempted to cut: nothing of theirs is evidence of breast cancer
# *and* of spinal pain, so no warning or critical card is possible; but a relevant record that reads (the
# peek) and fails R4B validation still gives the hook's "unreadable-records" info card, deceased or not. So
# every relevant resource of every candidate must be validated, as the hook validates it.
PACLITAXEL = fb.rxnorm("583214", "Paclitaxel 100 MG Injection")  # breast-cancer-drugs (tier C)
UNREADABLE = ("info", "unreadable-records")
# Where the candidates are narrowed: a card needs a record that could hold both a breast-cancer history and a
# trigger (spinal pain, a neurological feature); a resource counts by its codes, by words that name either, or
# as either when it mentions what the rules read but cannot be read. Each edge must get the hook's answer.
EDGES: dict[str, tuple[str, str] | None] = {
    "edge-invalid-order": None,  # an unreadable tier-C drug, nothing else: no card could follow
    "edge-history-invalid-pain": UNREADABLE,  # a history; the back pain cannot be read
    "edge-invalid-history-pain": UNREADABLE,  # back pain; the history cannot be read
    "edge-history-pain-garbled": UNREADABLE,  # a history; a Condition naming back pain whose code is not an object
    "edge-history-unmentioned-garbled": None,  # a history; a garbled Condition that mentions nothing we read
    "edge-deceased-history-pain": None,  # a candidate, refused by the rules themselves
    "edge-history-text-pain": ("warning", "spinal-metastases"),  # back pain in words only
    "edge-tamoxifen-words-pain": ("info", "weak-history"),  # a tier-B drug named in words only, and back pain
    "edge-paclitaxel-pain": None,  # a tier-C drug is no history
}


def _edge_patients() -> list[JSON]:
    history = fb.breast_cancer
    pain = fb.back_pain

    def invalid(resource: JSON) -> JSON:
        resource["onsetDateTime"] = "not a date"  # the peek reads the code; validation refuses the resource
        return resource

    order = fb.medication_request(PACLITAXEL, patient_id="edge-invalid-order")
    order["authoredOn"] = "not a date"
    tamoxifen = fb.medication_statement(fb.TAMOXIFEN, patient_id="edge-tamoxifen-words-pain")
    tamoxifen["medicationCodeableConcept"] = {"text": "Tamoxifen 20 mg tablet"}
    made: dict[str, list[JSON]] = {
        "edge-invalid-order": [order],
        "edge-history-invalid-pain": [history(), invalid(pain())],
        "edge-invalid-history-pain": [invalid(history()), pain()],
        "edge-history-pain-garbled": [history(), fb.condition("low back pain")],
        "edge-history-unmentioned-garbled": [history(), fb.condition("garbled")],
        "edge-deceased-history-pain": [history(), pain()],
        "edge-history-text-pain": [history(), fb.condition(fb.concept(text="lower back pain since Monday"),
                                                           onset_days_ago=4, recorded_days_ago=4)],
        "edge-tamoxifen-words-pain": [tamoxifen, pain()],
        "edge-paclitaxel-pain": [fb.medication_request(PACLITAXEL), pain()],
    }
    resources: list[JSON] = []
    for patient_id, theirs in made.items():
        resources.append(fb.patient(patient_id=patient_id, deceased=True if "deceased" in patient_id else None))
        for resource in theirs:
            (resource.get("subject") or resource["patient"])["reference"] = f"Patient/{patient_id}"
            resources.append(resource)
    assert set(made) == set(EDGES)
    return resources


def _worklist(out: Path) -> list[JSON]:
    return [orjson.loads(line) for line in (out / "worklist.ndjson").read_bytes().splitlines()]


def _comparable(card: JSON) -> JSON:
    """A card without what differs by design between two runs: uuids, the order's clock-based period and the
    requester (the hook has a user, the sweep none). Everything else is the same, in the same order: the record
    is read in one order whatever order its resources came in (a Bundle's, the export's files')."""
    card = orjson.loads(orjson.dumps(card))
    card.pop("uuid")
    for suggestion in card.get("suggestions", []):
        suggestion.pop("uuid")
        for action in suggestion["actions"]:
            resource = action["resource"]
            resource.pop("occurrencePeriod")
            resource.pop("requester", None)
    return card


def _assert_same_as_hook(rows: list[JSON], population: Population) -> None:
    got = {row["patientId"]: (row["indicator"], row["kind"]) for row in rows}
    want = {pid: (indicator, kind) for pid, (indicator, kind, _) in population.expected.items()}
    assert got == want
    for row in rows:
        assert len(row["cards"]) == 1 and row["summary"] == row["cards"][0]["summary"]
        assert_valid_cds_response({"cards": row["cards"]}, patient_id=row["patientId"])
        assert _comparable(row["cards"][0]) == _comparable(population.expected[row["patientId"]][2])


def test_parity_covers_every_tier_and_buries_the_scenarios(population: Population) -> None:
    kinds = {kind for _, kind, _ in population.expected.values()}
    assert kinds >= {"mscc", "spinal-metastases"}
    assert {i for i, _, _ in population.expected.values()} >= {"critical", "warning", "info"}
    synthea_patients = {pid for pid in bulk.by_patient(population.resources) if pid.startswith("syn-")}
    assert len(synthea_patients) >= 3 * len(bulk.synthea_bundles()) > 0
    assert len(list(population.export.iterdir())) > 20


def test_parity_covers_the_edges_of_candidate_narrowing(population: Population) -> None:
    for patient_id, answer in EDGES.items():
        got = population.expected.get(patient_id)
        assert (got[:2] if got else None) == answer, patient_id


def test_local_sweep_gives_every_patient_the_hooks_answer(population: Population, tmp_path: Path) -> None:
    summary = run_sweep(SweepOptions(population.export, tmp_path, population.now), Settings())
    rows = _worklist(tmp_path)
    _assert_same_as_hook(rows, population)
    assert summary["resources"] == len(population.resources)
    assert summary["patients"] == sum(r["resourceType"] == "Patient" for r in population.resources)
    assert summary["worklist"] == len(rows)
    assert sum(summary["patientsByIndicator"].values()) == len(rows)


@pytest.mark.parametrize("sort_keys", [False, True])
def test_an_export_written_by_json_dumps_gets_the_same_worklist(population: Population, tmp_path: Path,
                                                              sort_keys: bool) -> None:
    """Lines as Python's json.dumps writes them (a space after every "," and ":", non-ASCII escaped), as a
    hand-made export may be, with resourceType first or its keys sorted: the same answers and counts as the
    compact lines Bulk servers write."""
    export = tmp_path / "export"
    bulk.write_export(export, population.resources,
                      dumps=lambda resource: json.dumps(resource, sort_keys=sort_keys).encode())
    first = next(bulk.iter_ndjson(export))
    assert first.startswith(b'{"resourceType": "') != sort_keys and b'", "' in first
    summary = run_sweep(SweepOptions(export, tmp_path / "out", population.now), Settings())
    _assert_same_as_hook(_worklist(tmp_path / "out"), population)
    assert summary["resources"] == len(population.resources)
    assert summary["linesSkipped"] == 0


def test_worklist_files_sorted_critical_first_then_most_recent_pain(population: Population, tmp_path: Path) -> None:
    run_sweep(SweepOptions(population.export, tmp_path, population.now), Settings())
    rows = _worklist(tmp_path)
    tiers = [row["indicator"] for row in rows]
    assert tiers == sorted(tiers, key=["critical", "warning", "info"].index)
    for tier in ("critical", "warning"):
        pains = [row["painLatest"] for row in rows if row["indicator"] == tier and "painLatest" in row]
        assert pains == sorted(pains, reverse=True)
    with open(tmp_path / "worklist.csv", newline="", encoding="utf-8") as stream:
        table = list(csv.DictReader(stream))
    assert [r["patientId"] for r in table] == [row["patientId"] for row in rows]
    first = table[0]
    index = population.scenario_ids.index(first["patientId"])
    assert (first["mrn"], first["name"]) == (f"MRN-{index:05d}", f"Ann O'Test <{index}>")
    assert first["tier"] == "critical" and first["reason"] == rows[0]["summary"] and first["action"]
    assert first["painOnset"] or first["neurologicalDate"]
    page = (tmp_path / "worklist.html").read_text()
    assert f"Ann O&#x27;Test &lt;{index}&gt;" in page and f"<{index}>" not in page  # escaped, not markup
    assert "<script" not in page and "http" not in page  # nothing fetched: a plain, self-contained file
    assert page.count("<tr class=") == len(rows)


@pytest.mark.e2e
def test_spawned_workers_give_the_hooks_answer_too(population: Population, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Where there is no fork (macOS, Windows) each worker starts afresh and prepares the value sets and the
    # compiled mention test itself (from the cache folder, once one of them has saved it).
    from cds_hooks.sweep import local

    monkeypatch.setattr(local.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    summary = run_sweep(SweepOptions(population.export, tmp_path, population.now, workers=2), Settings())
    _assert_same_as_hook(_worklist(tmp_path), population)
    assert summary["workers"] == 2 and summary["resources"] == len(population.resources)


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cds_hooks", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


@pytest.mark.e2e
def test_cli_two_workers_same_worklist_and_phi_free_logs(population: Population, tmp_path: Path) -> None:
    result = _cli(str(population.export), "--out", str(tmp_path), "--workers", "2", "--now",
                  population.now.isoformat(), env={"MSCC_ALERT_SWEEP_CHUNK_BYTES": str(1024 * 1024),
                                                   "MSCC_ALERT_LOG_LEVEL": "DEBUG"})
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_as_hook(_worklist(tmp_path), population)
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["workers"] == 2 and summary["linesSkipped"] == 0
    logs = result.stdout + result.stderr
    assert "scn-" not in logs and "syn-" not in logs and "MRN-" not in logs and "O'Test" not in logs
    assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal


@pytest.mark.e2e
def test_cli_counts_broken_lines_and_goes_on(population: Population, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(population.export, export)
    with open(next(p for p in export.iterdir() if p.suffix == ".ndjson"), "ab") as stream:
        # Cut short: one that names its type first, and mentions nothing the rules read, is counted as that type
        # unread (it could hold no evidence); one that does not is unreadable. Then not a resource, and an error.
        stream.write(b'{"resourceType": "Condition", "subject": \n{"subject": {"reference": \n[1,2]\n'
                     b'{"resourceType":"OperationOutcome"}\n')
    result = _cli(str(export), "--out", str(tmp_path / "out"), "--now", population.now.isoformat())
    assert result.returncode == 0, result.stderr[-2000:]
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["skippedReasons"] == {"unreadable JSON": 2, "OperationOutcome (an error report, not data)": 1}
    conditions = sum(r["resourceType"] == "Condition" for r in population.resources)
    assert summary["resourcesByType"]["Condition"] == conditions + 1
    _assert_same_as_hook(_worklist(tmp_path / "out"), population)


@pytest.mark.e2e
def test_cli_usage_errors(tmp_path: Path) -> None:
    assert _cli(str(tmp_path / "nope"), "--out", str(tmp_path / "o")).returncode == 2
    assert _cli(str(tmp_path), "--out", str(tmp_path / "o"), "--since", "2026-01-01").returncode == 2
    assert _cli(str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0").returncode == 2


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_a_file_that_cannot_be_read_fails_the_sweep_naming_it(tmp_path: Path, workers: str) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "Patient.ndjson").write_bytes(b'{"resourceType":"Patient","id":"p1"}\n')
    (export / "Condition.ndjson.gz").write_bytes(b"secret-patient-42 is not compressed")
    result = _cli(str(export), "--out", str(tmp_path / "out"), "--workers", workers)
    # An internal failure, not a worklist missing that file's patients; one line, no traceback, no bytes of it.
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"mscc-alert: the sweep failed: {export / 'Condition.ndjson.gz'}: not a gzip file"
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
    assert not (tmp_path / "out" / "worklist.ndjson").exists()


def _spark_missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "PySpark is not installed (pip install -e '.[test]' installs it)"
    if shutil.which("java") is None:
        return "no Java runtime (Debian: apt-get install openjdk-17-jre-headless; .ci/run does)"
    return None


@pytest.mark.e2e
@pytest.mark.slow
def test_spark_engine_same_worklist_as_local(population: Population, tmp_path: Path) -> None:
    missing = _spark_missing()
    if missing:
        pytest.skip(missing)
    local = run_sweep(SweepOptions(population.export, tmp_path / "local", population.now), Settings())
    result = _cli(str(population.export), "--out", str(tmp_path / "spark"), "--engine", "spark",
                  "--spark-master", "local[2]", "--now", population.now.isoformat(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    spark_rows, local_rows = _worklist(tmp_path / "spark"), _worklist(tmp_path / "local")
    _assert_same_as_hook(spark_rows, population)
    assert [_comparable_row(r) for r in spark_rows] == [_comparable_row(r) for r in local_rows]
    spark = orjson.loads((tmp_path / "spark" / "summary.json").read_bytes())
    for key in ("patients", "candidates", "resources", "resourcesByType", "lines", "bytes", "skippedReasons",
                "patientsByIndicator"):
        assert spark[key] == local[key], key


@pytest.mark.e2e
@pytest.mark.slow
def test_spark_engine_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    missing = _spark_missing()
    if missing:
        pytest.skip(missing)
    export = tmp_path / "export"
    export.mkdir()
    (export / "Condition.ndjson.gz").write_bytes(b"not compressed")
    result = _cli(str(export), "--out", str(tmp_path / "out"), "--engine", "spark", "--spark-master", "local[1]",
                  timeout=900)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"mscc-alert: the sweep failed: {(export / 'Condition.ndjson.gz').resolve()}: not a gzip file"


def test_a_spark_task_failure_is_said_by_type_unless_made_to_be_shown() -> None:
    from cds_hooks.sweep.spark import _task_failure

    # As PySpark reports a Python worker's exception (the text of a real report, cut).
    report = ("[PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call "
              "last):\n  File \"/x/cds_hooks/sweep/reader.py\", line 98, in read_blocks\n    raise UnreadableFile("
              "...)\n{}\n SQLSTATE: 38000")
    shown = "cds_hooks.sweep.reader.UnreadableFile: /data/Condition.ndjson.gz: not a gzip file"
    assert _task_failure(report.format(shown)) == "/data/Condition.ndjson.gz: not a gzip file"
    quoting = "ValueError: invalid value for patient secret-42"
    assert _task_failure(report.format(quoting)) == "ValueError in a Spark task"
    assert _task_failure("the JVM said something else") == "a Spark task failed"


@pytest.mark.parametrize(("master", "cores"), [
    ("local", 1), ("local[3]", 3), ("local[3,2]", 3), ("local[*]", os.cpu_count() or 1),
    (None, os.cpu_count() or 1), ("spark://host:7077", None), ("sc://host:15002", None),
])
def test_spark_shuffle_partitions_follow_the_local_cores(master: str | None, cores: int | None) -> None:
    from cds_hooks.sweep.spark import _sql_settings

    settings = _sql_settings(master)
    assert settings["spark.sql.adaptive.coalescePartitions.enabled"] == "false"  # on a cluster as well
    assert settings.get("spark.sql.shuffle.partitions") == (str(4 * cores) if cores else None)


def test_spark_screening_tasks_share_the_chunks_evenly_on_a_local_master(tmp_path: Path) -> None:
    from cds_hooks.sweep.reader import Chunk, chunk_size
    from cds_hooks.sweep.spark import _task_chunks

    sizes = [64, 64, 64, 40, 33, 20, 12, 9, 5, 5, 3, 1]  # MiB
    starts = [sum(sizes[:i]) << 20 for i in range(len(sizes))]
    chunks = [Chunk(str(tmp_path / "export.ndjson"), start, start + (size << 20)) for start, size in zip(
        starts, sizes, strict=True)]
    tasks = _task_chunks(chunks, "local[2]")
    assert len(tasks) == 4
    assert sorted(c.start for task in tasks for c in task) == starts  # each chunk once
    loads = [sum(map(chunk_size, task)) for task in tasks]
    assert max(loads) - min(loads) <= max(map(chunk_size, chunks))  # no task waits on more than one chunk's work
    assert _task_chunks(chunks, "spark://host:7077") == [[chunk] for chunk in chunks]  # a cluster: one a task
    assert len(_task_chunks(chunks[:3], "local[8]")) == 3  # never an empty task


def _comparable_row(row: JSON) -> JSON:
    return {**{k: v for k, v in row.items() if k != "cards"}, "cards": [_comparable(c) for c in row["cards"]]}


def test_worklist_dates_in_the_sites_time_zone(tmp_path: Path) -> None:
    """A pain coded at noon UTC is the next day on Kiritimati (UTC+14): the worklist's key date and card say so
    when the site's zone is set, and say the day the record wrote when it is not."""
    from datetime import timedelta

    now = datetime(2026, 11, 20, 9, tzinfo=UTC)
    pain = fb.back_pain(onset_days_ago=None)
    pain["onsetDateTime"] = pain["recordedDate"] = (now - timedelta(days=10)).replace(hour=12).isoformat()
    bulk.write_export(tmp_path / "export", [fb.patient(), fb.breast_cancer(), pain], files_per_type=1)

    def onset(out: str, settings: Settings) -> tuple[str, str]:
        run_sweep(SweepOptions(tmp_path / "export", tmp_path / out, now), settings)
        [row] = _worklist(tmp_path / out)
        return row["keyDates"]["painOnset"], row["cards"][0]["detail"]

    day, detail = onset("site", Settings(time_zone="Pacific/Kiritimati"))
    assert day == "2026-11-11" and "low back pain since 11 Nov (9 days)" in detail
    assert orjson.loads((tmp_path / "site" / "summary.json").read_bytes())["timeZone"] == "Pacific/Kiritimati"
    page = (tmp_path / "site" / "worklist.html").read_text()
    assert "As of 2026-11-20 23:00 +14:" in page and "Dates are days in Pacific/Kiritimati." in page
    day, detail = onset("unset", Settings())
    assert day == "2026-11-10" and "low back pain since 10 Nov (10 days)" in detail
    assert "timeZone" not in orjson.loads((tmp_path / "unset" / "summary.json").read_bytes())
    page = (tmp_path / "unset" / "worklist.html").read_text()
    assert "As of 2026-11-20 09:00 UTC:" in page and "Dates are days in" not in page
