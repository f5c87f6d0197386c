"""The sweep's reader and screen: gzip, a type split over files, byte ranges, broken lines, lying file names."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from cds_hooks.settings import Settings
from cds_hooks.sweep import reader
from cds_hooks.sweep.reader import Chunk, LineCounts, UnreadableFile, export_files, plan_chunks, read_lines
from cds_hooks.sweep.run import SweepError, SweepOptions, run_sweep
from cds_hooks.sweep.screen import NO_PATIENT, Screening, screen_chunk, screen_lines, too_long
from fhir_mapping.intake import EITHER, HISTORY, TRIGGER, Screen
from fhir_mapping.terminology import load_terminology
from tests.scenarios.fhir_builders import back_pain, breast_cancer, heart_rate, patient

TERMINOLOGY = load_terminology()


def _lines(count: int) -> list[bytes]:
    # Lines of varied length, so chunk edges fall inside lines and on their ends.
    return [orjson.dumps({"resourceType": "Basic", "id": f"b{i}", "pad": "x" * (i * 37 % 301)}) for i in range(count)]


def _all_lines(chunks: list[Chunk], max_line: int = 1 << 20) -> list[bytes]:
    found: list[bytes] = []
    for chunk in chunks:
        found += read_lines(chunk, max_line, LineCounts())
    return found


@pytest.mark.parametrize("chunk_bytes", [1, 7, 100, 1000, 4096, 10**9])
def test_byte_ranges_hand_out_every_line_exactly_once(tmp_path: Path, chunk_bytes: int) -> None:
    lines = _lines(300)
    path = tmp_path / "x.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    chunks = plan_chunks([path], chunk_bytes)
    assert len(chunks) == (1 if chunk_bytes >= path.stat().st_size else -(-path.stat().st_size // chunk_bytes))
    assert _all_lines(chunks) == lines


def test_range_starting_exactly_at_a_line_start_keeps_that_line(tmp_path: Path) -> None:
    lines = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    path = tmp_path / "x.ndjson"
    path.write_bytes(b"\n".join(lines))  # no final newline
    first = len(lines[0]) + 1
    assert _all_lines([Chunk(str(path), 0, first), Chunk(str(path), first, path.stat().st_size)]) == lines


def test_gzip_and_plain_give_the_same_lines_and_sizes(tmp_path: Path) -> None:
    lines = _lines(500)
    body = b"\r\n".join(lines) + b"\n\n   \n"  # CRLF endings and blank lines at the end
    (tmp_path / "a.ndjson").write_bytes(body)
    (tmp_path / "b.ndjson.gz").write_bytes(gzip.compress(body))
    plain, counts_plain = list(read_lines(Chunk(str(tmp_path / "a.ndjson")), 1 << 20, c1 := LineCounts())), c1
    packed = list(read_lines(Chunk(str(tmp_path / "b.ndjson.gz")), 1 << 20, c2 := LineCounts()))
    assert plain == packed == lines
    assert counts_plain.lines == c2.lines == 500
    assert counts_plain.size == c2.size == len(body)


def test_a_byte_order_mark_opening_a_file_is_not_part_of_the_first_line(tmp_path: Path) -> None:
    lines = _lines(3)
    (tmp_path / "a.ndjson").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines))
    (tmp_path / "b.ndjson.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"\n".join(lines)))
    for name in ("a.ndjson", "b.ndjson.gz"):
        assert list(read_lines(Chunk(str(tmp_path / name)), 1 << 20, LineCounts())) == lines


def test_gzip_file_is_one_chunk_and_other_files_are_not_ndjson(tmp_path: Path) -> None:
    (tmp_path / "big.ndjson.gz").write_bytes(gzip.compress(b"\n".join(_lines(2000))))
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.ndjson").write_bytes(b"\n".join(_lines(3)))
    files, others = export_files(tmp_path)
    assert [p.name for p in files] == ["big.ndjson.gz", "c.ndjson"]
    assert [p.name for p in others] == ["manifest.json"]
    assert plan_chunks(files, 16)[0].end is None


def test_a_line_longer_than_the_limit_is_skipped_not_read_whole(tmp_path: Path) -> None:
    long_line = b'{"resourceType":"Basic","pad":"' + b"y" * 10_000_000 + b'"}'
    path = tmp_path / "x.ndjson"
    path.write_bytes(b'{"a":1}\n' + long_line + b'\n{"b":2}\n')
    counts = LineCounts()
    assert list(read_lines(Chunk(str(path)), 1000, counts)) == [b'{"a":1}', b'{"b":2}']
    assert counts.too_long == 1
    assert counts.size == path.stat().st_size


def test_screen_reads_patient_from_subject_patient_or_own_id() -> None:
    screen = Screen(TERMINOLOGY)
    assert screen(orjson.dumps(breast_cancer(patient_id="p1"))) == ("Condition", "p1", True, HISTORY)
    assert screen(orjson.dumps(patient(patient_id="p2"))) == ("Patient", "p2", True, 0)
    statement = {"resourceType": "MedicationStatement", "status": "active", "subject": {"reference": "Patient/p3"},
                 "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                           "code": "282357", "display": "fulvestrant"}]}}
    assert screen(orjson.dumps(statement)) == ("MedicationStatement", "p3", True, HISTORY)  # a tier A drug
    assert screen(orjson.dumps(back_pain(patient_id="p3"))) == ("Condition", "p3", True, TRIGGER)
    # `patient` instead of `subject` (e.g. AllergyIntolerance, Immunization): not relevant, still read
    assert screen(b'{"resourceType":"Immunization","patient":{"reference":"Patient/p4"}}') == (
        "Immunization", None, False, 0)
    assert screen(orjson.dumps(heart_rate(60, effective_days_ago=2))) == ("Observation", None, False, 0)


def test_screen_keeps_a_broken_resource_of_a_type_the_rules_read_for_its_patient() -> None:
    screen = Screen(TERMINOLOGY)
    broken = {"resourceType": "Condition", "code": "back pain", "subject": {"reference": "Patient/p9"}}
    # Unreadable: it may be whatever its bytes mention ("pain": a trigger, never a history).
    assert screen(orjson.dumps(broken)) == ("Condition", "p9", True, TRIGGER)
    broken["note"] = "breast cancer"
    assert screen(orjson.dumps(broken)) == ("Condition", "p9", True, EITHER)
    # A type the rules never read: settled unread, as the hook drops it unread, whether resourceType is first
    # (as Bulk servers write it) or not (then the type alone is decoded).
    assert screen(b'{"resourceType":"Claim","id":7,"patient":3}') == ("Claim", None, False, 0)
    assert screen(b'{"id":7,"resourceType":"Claim","patient":3}') == ("Claim", None, False, 0)
    # A broken resource that mentions nothing the rules read is not theirs, read or not: settled unread and
    # counted as its type, wherever its type is written.
    assert screen(b'{"resourceType":"Condition","code":"x","subject":{"reference":"Patient/q"}}') == (
        "Condition", None, False, 0)
    assert screen(b'{"code":"x","resourceType":"Condition","subject":{"reference":"Patient/q"}}') == (
        "Condition", None, False, 0)
    # A type that is not a string: no resource, wherever it is written.
    assert screen(b'{"code":"x","resourceType":7}') == "not a FHIR resource (no resourceType)"
    assert screen(b'{"code":"x","resourceType":"Condition","subject":{"reference":"Patient/q"},"note":"pain"}') == (
        "Condition", "q", True, TRIGGER)
    assert screen(b"{not json") == "unreadable JSON"
    assert screen(b'{"id":"x"}') == "not a FHIR resource (no resourceType)"
    assert screen(b'[1,2]') == "unreadable JSON"
    assert screen(b'{"resourceType":"OperationOutcome","issue":[]}') == "OperationOutcome (an error report, not data)"


def test_screen_chunk_counts_each_reason_and_keeps_relevant_lines(tmp_path: Path) -> None:
    cancer = orjson.dumps(breast_cancer(patient_id="p1"))
    pain = orjson.dumps(back_pain(patient_id="p1"))
    orphan = orjson.dumps({k: v for k, v in back_pain(patient_id="p1").items() if k != "subject"})
    body = b"\n".join([cancer, b"{broken", pain, orphan, b'{"resourceType":"OperationOutcome"}', b"[]",
                       orjson.dumps(heart_rate(70, effective_days_ago=1)), orjson.dumps(patient(patient_id="p1")),
                       b"y" * 5000])
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(body)
    screening = screen_chunk(Chunk(str(path)), TERMINOLOGY, 4096)
    assert screening.relevant == {"p1": [cancer, pain]}
    assert screening.patients == {}  # first pass: Patients counted, not kept
    assert screening.patient_lines == 1
    assert screening.skipped == {"unreadable JSON": 2, "OperationOutcome (an error report, not data)": 1,
                                 NO_PATIENT: 1, too_long(4096): 1}
    assert screening.resources == {"Condition": 3, "Observation": 1, "Patient": 1}
    second = screen_chunk(Chunk(str(path)), TERMINOLOGY, 4096, patients={"p1"})
    assert second.relevant == {} and list(second.patients) == ["p1"]


def test_sweep_reads_resource_type_not_file_names(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    # Conditions in a file named for Patients, the Patient in one named for Observations, split and gzipped.
    (export / "Patient.ndjson").write_bytes(orjson.dumps(breast_cancer(patient_id="p1")) + b"\n")
    (export / "Observation.1.ndjson.gz").write_bytes(gzip.compress(orjson.dumps(patient(patient_id="p1"))))
    (export / "Observation.2.ndjson").write_bytes(orjson.dumps(back_pain(patient_id="p1")) + b"\n{oops\n")
    summary = run_sweep(SweepOptions(export, tmp_path / "out", datetime.now(UTC)), Settings())
    assert summary["resourcesByType"] == {"Condition": 2, "Patient": 1}
    assert summary["skippedReasons"] == {"unreadable JSON": 1}
    assert summary["patientsByIndicator"] == {"warning": 1}
    row = orjson.loads((tmp_path / "out" / "worklist.ndjson").read_bytes())
    assert (row["patientId"], row["indicator"], row["kind"]) == ("p1", "warning", "spinal-metastases")


def test_sweep_refuses_a_folder_without_ndjson(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"no \.ndjson"):
        run_sweep(SweepOptions(tmp_path, tmp_path / "out", datetime.now(UTC)), Settings())


@pytest.mark.parametrize("block_bytes", [1, 5, 64, 700, 1 << 22])
@pytest.mark.parametrize("chunk_bytes", [97, 2000, 10**9])
def test_reads_of_any_size_cut_lines_anywhere_and_lose_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           block_bytes: int, chunk_bytes: int) -> None:
    # Lines cut by reads (and by chunk edges) are put together; a line over the limit is skipped whatever the
    # reads do; every byte is counted once.
    monkeypatch.setattr(reader, "BLOCK_BYTES", block_bytes)
    lines = _lines(120)
    long_line = b'{"resourceType":"Basic","pad":"' + b"y" * 900 + b'"}'
    body = b"\n".join([*lines[:50], long_line, *lines[50:]]) + b"\n"
    path = tmp_path / "x.ndjson"
    path.write_bytes(body)
    found: list[bytes] = []
    total = LineCounts()
    for chunk in plan_chunks([path], chunk_bytes):
        counts = LineCounts()
        found += read_lines(chunk, 600, counts)
        total.lines, total.too_long, total.size = (total.lines + counts.lines, total.too_long + counts.too_long,
                                                   total.size + counts.size)
    assert found == lines
    assert (total.lines, total.too_long, total.size) == (len(lines), 1, len(body))


@pytest.mark.parametrize("block_bytes", [300, 1 << 22])
def test_screening_a_chunk_whole_gives_what_screening_each_line_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    monkeypatch.setattr(reader, "BLOCK_BYTES", block_bytes)
    conditions = [orjson.dumps(c) for c in (breast_cancer(patient_id="p1"), back_pain(patient_id="p2"))]
    conditions += [orjson.dumps({"resourceType": "Condition", "id": f"c{i}", "code": {"text": "Gingivitis"},
                                 "subject": {"reference": f"Patient/q{i}"}}) for i in range(40)]
    conditions += [b'{"resourceType":"Condition","code":"low back pain","subject":{"reference":"Patient/p3"}}',
                   b'{"resourceType":"Condition","code":"x","subject":{"reference":"Patient/p4"}}',
                   # mentions "breast" (a history's anchor) but says nothing the rules read
                   b'{"resourceType":"Condition","code":{"text":"Breast lump"},"subject":{"reference":"Patient/p6"}}']
    mixed = [*conditions, orjson.dumps(patient(patient_id="p1"))]  # another type: screened line by line
    reordered = [*conditions[:5], b'{"id":"r","resourceType":"Condition","code":{"text":"back pain"},'
                 b'"subject":{"reference":"Patient/p5"}}', *conditions[5:]]  # resourceType not first
    for name, body, newline in (("same.ndjson", conditions, b"\n"), ("crlf.ndjson", conditions, b"\r\n"),
                                ("mixed.ndjson", mixed, b"\n"), ("reordered.ndjson", reordered, b"\n")):
        path = tmp_path / name
        path.write_bytes(newline.join(body) + newline)
        whole = screen_chunk(Chunk(str(path)), TERMINOLOGY, 1 << 20)
        by_line = Screening()
        screen_lines(read_lines(Chunk(str(path)), 1 << 20, counts := LineCounts()), Screen(TERMINOLOGY), by_line)
        assert (whole.resources, whole.skipped, whole.lines) == (by_line.resources, by_line.skipped, counts.lines)
        # Read whole, a line whose bytes could be no trigger is kept unread with the roles its bytes allow: the
        # lines and roles kept are those of each line read, and more, never fewer.
        for held, lines in by_line.relevant.items():
            assert set(lines) <= set(whole.relevant[held])
            assert by_line.roles[held] & ~whole.roles[held] == 0
        assert set(by_line.relevant) == {"p1", "p2", "p3"} | ({"p5"} if body is reordered else set())
        if block_bytes < len(b"".join(body)):
            continue  # reads of 300 bytes: which lines share a range with lines of another type is by chance
        if body is conditions:
            assert set(whole.relevant) - set(by_line.relevant) == {"p6"} and whole.roles["p6"] == HISTORY
        else:  # not every line of the read opens with the same type: each is read
            assert whole.relevant == by_line.relevant and whole.roles == by_line.roles


def _broken_exports(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files a sweep cannot read to their end, each with what the sweep must say of it."""
    lines = b"".join(b'{"resourceType":"Patient","id":"secret-%d"}\n' % n for n in range(5000))
    packed = gzip.compress(lines)
    cases = {"not gzip": (b"secret-1 is not compressed", "not a gzip file"),
             "cut short": (packed[: len(packed) // 2], "its gzip data ends early"),
             "corrupt": (packed[:12] + bytes(64) + packed[76:], "its gzip data is corrupt"),
             "bad checksum": (packed[:-8] + bytes(4) + packed[-4:], "its gzip data is corrupt")}
    found = {}
    for name, (data, why) in cases.items():
        path = folder / name.replace(" ", "-") / "Patient.ndjson.gz"
        path.parent.mkdir()
        path.write_bytes(data)
        found[name] = (path, why)
    return found


def test_a_file_that_cannot_be_read_to_its_end_is_named_with_why_never_its_bytes(tmp_path: Path) -> None:
    for path, why in _broken_exports(tmp_path).values():
        with pytest.raises(UnreadableFile) as failed:
            list(read_lines(Chunk(str(path)), 1 << 20, LineCounts()))
        assert str(failed.value).startswith(f"{path}: {why}") and "secret" not in str(failed.value)
    with pytest.raises(UnreadableFile, match="No such file"):
        list(read_lines(Chunk(str(tmp_path / "gone.ndjson")), 1 << 20, LineCounts()))
