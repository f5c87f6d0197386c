"""`mscc-alert sweep KICKOFF_URL --since T` (cds_hooks/sweep/delta.py) against one loopback server
(tests/bulk_server.py) that serves both the `_since` export (the delta) and the FHIR API the hook's prefetch
templates search (the whole record), with SMART Backend Services verified for real."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from cds_hooks.settings import Settings
from cds_hooks.sweep.delta import NOT_FETCHED_FILE, DeltaOptions, TooManyChanged, run_delta_sweep
from cds_hooks.sweep.run import SweepOptions, run_sweep
from tests.bulk_server import FakeBulkServer
from tests.scenarios import fhir_builders as fb
from tests.test_bulk_client import CLIENT_ID, KEY_ID, credentials, ec_key, ndjson

pytestmark = pytest.mark.e2e

SINCE = "2026-11-24T06:00:00Z"
ROOT = Path(__file__).resolve().parents[1]

ANN = "since-ann-1"  # breast cancer years ago (not in the delta), new back pain (in it): the one to find
BEN = "since-ben-2"  # cancer and pain on record, but only an Immunization changed: nothing to look at
CAT = "since-cat-3"  # only her Patient resource changed (an address): nothing to look at
DEE = "since-dee-4"  # new back pain in the delta; her record cannot be fetched (500)


def immunization(patient_id: str) -> dict[str, Any]:
    return {"resourceType": "Immunization", "id": f"imm-{patient_id}", "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
            "patient": {"reference": f"Patient/{patient_id}"}, "occurrenceDateTime": fb.iso_datetime(2)}


def mrn_patient(patient_id: str, mrn: str, name: str) -> dict[str, Any]:
    resource = fb.patient(patient_id=patient_id)
    resource["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                    "code": "MR"}]}, "value": mrn}]
    resource["name"] = [{"use": "official", "text": name}]
    return resource


def population() -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """(the delta export's files, the FHIR server's whole store)."""
    ann_pain, dee_pain = fb.back_pain(patient_id=ANN), fb.back_pain(patient_id=DEE)
    ben_imm, cat = immunization(BEN), mrn_patient(CAT, "MRN-C3", "Cat Changed")
    dee = mrn_patient(DEE, "MRN-D4", "Dee Unreachable")
    delta = {
        "Patient.1.ndjson": ndjson([cat, dee]),
        "Condition.1.ndjson": ndjson([ann_pain, dee_pain]),
        "Immunization.1.ndjson": ndjson([ben_imm]),
    }
    store = [
        mrn_patient(ANN, "MRN-A1", "Ann Found"), fb.breast_cancer(patient_id=ANN), ann_pain,
        fb.encounter(patient_id=ANN), fb.encounter(patient_id=ANN), fb.encounter(patient_id=ANN),  # two pages
        fb.patient(patient_id=BEN), fb.breast_cancer(patient_id=BEN), fb.back_pain(patient_id=BEN, onset_days_ago=20),
        ben_imm, cat, fb.breast_cancer(patient_id=CAT), dee, fb.breast_cancer(patient_id=DEE), dee_pain,
    ]
    return delta, store


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": "memory://", "bulk_poll_min_seconds": 0.01,
                              "bulk_poll_max_seconds": 0.1}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MSCC_ALERT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[FakeBulkServer, Path]]:
    delta, store = population()
    key_file, public = ec_key(tmp_path)
    with FakeBulkServer(files=delta, types={n: n.split(".")[0] for n in delta}, records=store,
                        requires_token=True, public_key=public, polls_before_done=0) as s:
        yield s, key_file


def delta_sweep(url: str, out: Path, values: Settings) -> dict[str, Any]:
    return run_delta_sweep(DeltaOptions(kickoff_url=url, since=SINCE, out=out, now=datetime.now(UTC)), values)


def worklist(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (out / "worklist.ndjson").read_bytes().splitlines() if line]


def not_fetched(out: Path) -> list[dict[str, str]]:
    with open(out / NOT_FETCHED_FILE, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_history_outside_the_delta_is_fetched_and_the_patient_gets_her_card(
        server: tuple[FakeBulkServer, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s, key_file = server
    s.failing_patients = set()
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    summary = delta_sweep(s.base + "/Group/breast-clinic/$export", out, settings(**credentials(key_file)))

    [kickoff] = s.kickoffs()
    assert kickoff.query["_since"] == [SINCE]
    rows = worklist(out)
    assert [(r["patientId"], r["indicator"], r["kind"]) for r in rows] == [(ANN, "warning", "spinal-metastases"),
                                                                           (DEE, "warning", "spinal-metastases")]
    ann = rows[0]
    assert ann["mrn"] == "MRN-A1" and ann["name"] == "Ann Found"  # from the fetched Patient, not the delta
    assert "history" in ann["keyDates"] and "painOnset" in ann["keyDates"]
    assert ann["cards"][0]["indicator"] == "warning" and ann["cards"][0]["uuid"]
    # Only patients with a relevant change were fetched; each with every prefetch template, pages followed.
    assert s.fetched_patients() == {ANN, DEE}
    searched = {r.path.removeprefix("/fhir/") for r in s.fhir_requests() if r.query.get("patient") == [ANN]}
    assert searched == {"Condition", "MedicationStatement", "MedicationRequest", "Observation", "ServiceRequest",
                        "DiagnosticReport", "ImagingStudy", "Procedure", "Encounter"}
    assert any(r.query.get("_offset") for r in s.fhir_requests() if r.path == "/fhir/Encounter")
    assert summary["since"] == SINCE and summary["candidates"] == 2
    assert summary["patientsFetched"] == 2 and summary["patientsNotFetched"] == 0
    assert summary["patientsByIndicator"] == {"warning": 2} and summary["worklist"] == 2
    assert summary["resourcesByType"] == {"Condition": 2, "Immunization": 1, "Patient": 2}
    assert not_fetched(out) == []
    assert f"relevant change since {SINCE}" in (out / "worklist.html").read_text()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name.startswith("mscc_alert"))
    assert "delta sweep done" in logged
    for secret in [ANN, BEN, CAT, DEE, "MRN-A1", "Ann Found", *s.tokens]:
        assert secret not in logged


def test_patients_with_no_relevant_change_are_not_fetched(server: tuple[FakeBulkServer, Path],
                                                          tmp_path: Path) -> None:
    """Ben's record would give a card, but only an Immunization changed; only Cat's Patient resource changed."""
    s, key_file = server
    summary = delta_sweep(s.base + "/$export", tmp_path / "out", settings(**credentials(key_file)))
    touched = s.fetched_patients()
    assert BEN not in touched and CAT not in touched and touched == {ANN, DEE}
    assert len(s.fhir_requests()) == 2 * 10 + 1  # ten prefetch templates each, plus Ann's second page of Encounters
    assert summary["candidates"] == 2 and BEN not in {r["patientId"] for r in worklist(tmp_path / "out")}


def test_the_rows_are_what_a_full_sweep_of_the_whole_record_gives(server: tuple[FakeBulkServer, Path],
                                                                  tmp_path: Path) -> None:
    """Same decision, same row: the delta sweep of the changed patients against a full sweep of the store."""
    s, key_file = server
    now = datetime.now(UTC)
    run_delta_sweep(DeltaOptions(kickoff_url=s.base + "/$export", since=SINCE, out=tmp_path / "delta", now=now),
                    settings(**credentials(key_file)))
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "all.ndjson").write_bytes(ndjson(s.stored_resources()))
    run_sweep(SweepOptions(source=whole, out=tmp_path / "full", now=now), settings())

    def comparable(value: Any) -> Any:  # card and suggestion uuids are new for every answer
        if isinstance(value, dict):
            return {k: comparable(v) for k, v in value.items() if k != "uuid"}
        return [comparable(v) for v in value] if isinstance(value, list) else value

    full = {row["patientId"]: comparable(row) for row in worklist(tmp_path / "full")}
    delta = [comparable(row) for row in worklist(tmp_path / "delta")]
    assert set(full) == {ANN, BEN, DEE}  # Ben is on it: his pain predates the delta (found by an earlier sweep)
    assert delta == [full[ANN], full[DEE]]


def test_a_full_sweep_of_the_same_delta_misses_her(server: tuple[FakeBulkServer, Path], tmp_path: Path) -> None:
    """Why the delta sweep fetches: the delta alone holds her pain but not her history. Same summary shape."""
    s, key_file = server
    out = tmp_path / "out"
    delta_summary = delta_sweep(s.base + "/$export", out, settings(**credentials(key_file)))
    full = run_sweep(SweepOptions(source=out / "export", out=tmp_path / "full", now=datetime.now(UTC)), settings())
    assert full["worklist"] == 0 and worklist(tmp_path / "full") == []
    assert delta_summary["worklist"] == 2
    assert set(full) <= set(delta_summary)
    assert {p.name for p in (tmp_path / "full").iterdir()} | {NOT_FETCHED_FILE, "export"} == \
        {p.name for p in out.iterdir()}


def test_a_fetch_that_fails_is_reported_and_the_others_stay_on_the_worklist(
        server: tuple[FakeBulkServer, Path], tmp_path: Path) -> None:
    s, key_file = server
    s.failing_patients = {DEE}
    out = tmp_path / "out"
    summary = delta_sweep(s.base + "/$export", out, settings(**credentials(key_file)))
    assert [(r["patientId"], r["indicator"]) for r in worklist(out)] == [(ANN, "warning")]
    assert summary["patientsFetched"] == 1 and summary["patientsNotFetched"] == 1
    assert summary["notFetchedReasons"] == {"server-error (HTTP 500)": 1}
    [row] = not_fetched(out)
    assert row["patientId"] == DEE and row["mrn"] == "MRN-D4" and row["name"] == "Dee Unreachable"  # from the delta
    assert row["reason"] == "server-error (HTTP 500)" and "open the chart" in row["action"]
    assert "1 changed patient" in (out / "worklist.html").read_text()


def test_the_token_goes_to_the_searches_and_is_the_exports_own(server: tuple[FakeBulkServer, Path],
                                                               tmp_path: Path) -> None:
    s, key_file = server
    delta_sweep(s.base + "/$export", tmp_path / "out", settings(**credentials(key_file)))
    searches = s.fhir_requests()
    assert searches and all((r.authorization or "").removeprefix("Bearer ") in s.tokens for r in searches)
    assert len(s.assertions) == 1  # one token request: the export's token is the one the searches carry
    assert {r.authorization for r in searches} == {r.authorization for r in s.requests_to("/jobs/")}


def test_a_next_link_to_another_origin_is_not_followed(server: tuple[FakeBulkServer, Path], tmp_path: Path) -> None:
    """Same port, another name: not the origin the token was given for (the hook's FHIR client refuses it)."""
    s, key_file = server
    s.next_host = "localhost"
    out = tmp_path / "out"
    summary = delta_sweep(s.base + "/$export", out, settings(**credentials(key_file)))
    assert not any(r.query.get("_offset") for r in s.seen)  # the second page was never asked for
    assert summary["notFetchedReasons"] == {"foreign-next-link": 1}
    assert [r["patientId"] for r in not_fetched(out)] == [ANN]  # the only one with two pages of Encounters
    assert [r["patientId"] for r in worklist(out)] == [DEE]


def test_a_token_revoked_before_the_searches_is_replaced_once(server: tuple[FakeBulkServer, Path],
                                                               tmp_path: Path) -> None:
    s, key_file = server
    s.revoke_at_first_search = True  # the export's token is refused by the searches
    summary = delta_sweep(s.base + "/$export", tmp_path / "out", settings(**credentials(key_file)))
    assert len({r.authorization for r in s.fhir_requests()}) == 2  # the refused token, then its replacement
    assert summary["patientsNotFetched"] == 0 and summary["worklist"] == 2
    assert len(s.assertions) == 2  # one new token for every patient: the others find it already replaced


def test_an_open_server_gets_no_token(tmp_path: Path) -> None:
    delta, store = population()
    with FakeBulkServer(files=delta, types={n: n.split(".")[0] for n in delta}, records=store,
                        polls_before_done=0) as s:
        summary = delta_sweep(s.base + "/Patient/$export", tmp_path / "out", settings())
        assert s.fhir_requests() and not any(r.authorization for r in s.seen)
    assert summary["worklist"] == 2


def test_an_empty_delta_gives_an_empty_worklist(tmp_path: Path) -> None:
    with FakeBulkServer(records=[], polls_before_done=0) as s:
        summary = delta_sweep(s.base + "/$export", tmp_path / "out", settings())
        assert not s.fhir_requests()
    assert summary["candidates"] == 0 and summary["files"] == 0 and worklist(tmp_path / "out") == []


def test_too_many_changed_patients_stops_before_fetching_any(server: tuple[FakeBulkServer, Path],
                                                            tmp_path: Path) -> None:
    s, key_file = server
    out = tmp_path / "out"
    with pytest.raises(TooManyChanged, match=r"2 patients have a relevant change .* at most 1 .*"
                                             r"MSCC_ALERT_SWEEP_SINCE_MAX_PATIENTS"):
        delta_sweep(s.base + "/$export", out, settings(**credentials(key_file), sweep_since_max_patients=1))
    assert not s.fhir_requests()
    assert not (out / "worklist.ndjson").exists() and not (out / "summary.json").exists()


def _cli(server: FakeBulkServer, key_file: Path, out: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    environment.update({"MSCC_ALERT_BULK_CLIENT_ID": CLIENT_ID, "MSCC_ALERT_BULK_PRIVATE_KEY_FILE": str(key_file),
                        "MSCC_ALERT_BULK_KEY_ID": KEY_ID, "MSCC_ALERT_BULK_POLL_MIN_SECONDS": "0.05",
                        "MSCC_ALERT_LOG_LEVEL": "DEBUG", **env})
    return subprocess.run([sys.executable, "-m", "cds_hooks", "sweep", server.base + "/$export", "--out", str(out),
                           "--since", SINCE], capture_output=True, env=environment, timeout=300, cwd=ROOT)


def test_cli_exits_non_zero_after_writing_everything_when_some_were_not_fetched(
        server: tuple[FakeBulkServer, Path], tmp_path: Path) -> None:
    s, key_file = server
    s.failing_patients = {DEE}
    out = tmp_path / "out"
    result = _cli(s, key_file, out)
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert "1 changed patients could not be fetched" in stderr and NOT_FETCHED_FILE in stderr
    assert [r["patientId"] for r in worklist(out)] == [ANN]
    assert orjson.loads((out / "summary.json").read_bytes())["patientsNotFetched"] == 1
    for secret in [ANN, BEN, CAT, DEE, "MRN-", *s.tokens]:
        assert secret not in stderr and secret not in result.stdout.decode()


def test_cli_cap_is_a_clear_error(server: tuple[FakeBulkServer, Path], tmp_path: Path) -> None:
    s, key_file = server
    result = _cli(s, key_file, tmp_path / "out", MSCC_ALERT_SWEEP_SINCE_MAX_PATIENTS="1")
    assert result.returncode == 2
    assert "2 patients have a relevant change" in result.stderr.decode()
    assert b"Traceback" not in result.stderr and not s.fhir_requests()
