"""A line's resourceType read from its opening, compact as Bulk servers write it or with JSON whitespace as other
writers put it (Python's json.dumps: `{"resourceType": "Condition", ...`): the sweep screens either a block of
bytes at a time, and both give the same screening."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cds_hooks.sweep.reader import Chunk, LineCounts, read_lines
from cds_hooks.sweep.screen import Screening, screen_block, screen_chunk, screen_lines
from fhir_mapping.intake import Screen, mention_test, opening, opening_type
from fhir_mapping.terminology import load_terminology
from tests.scenarios import bulk_export as bulk
from tests.scenarios.fhir_builders import OTHER_PATIENT_ID, PATIENT_ID
from tests.scenarios.test_clinical_scenarios import SCENARIOS

TERMINOLOGY = load_terminology()
MAX_LINE = 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"resourceType":"Condition","id":"1"}', ("Condition", 27)),
        (b'{"resourceType": "Condition", "id": "1"}', ("Condition", 28)),
        (b'{ "resourceType" : "Condition" }', ("Condition", 30)),
        (b' \t{\t"resourceType":\r"Observation"}', ("Observation", 33)),
        (bytearray(b'{"resourceType": "Patient"}'), ("Patient", 26)),
    ],
)
def test_an_opening_gives_the_type_and_where_it_ends(line: bytes, expected: tuple[str, int]) -> None:
    assert opening(line) == expected
    assert line[: expected[1]].endswith(b'"')  # the opening runs through the type's closing quote
    assert opening_type(line) == expected[0]


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":"1","resourceType":"Condition"}',  # not first: only a decode can tell
        b'{"resourceType": 5}',
        b'{"resourceType": "Pat-ient"}',  # not a type name
        b'{"resourceType": "' + b"A" * 70 + b'"}',  # longer than any type
        b'{"resourceType": "Condition',  # the name never closes
        b'{"resourcetype": "Condition"}',
        b'{"resourceType"\n: "Condition"}',  # a newline ends an NDJSON line
        b"",
    ],
)
def test_other_openings_give_nothing(line: bytes) -> None:
    assert opening(line) is None


def _lines() -> list[dict[str, Any]]:
    """Every resource of the suite's Synthea patients and clinical scenarios."""
    resources = []
    for index, path in enumerate(bulk.synthea_bundles()):
        resources += bulk.synthea_patient(path, f"p{index}")
    for index, param in enumerate(SCENARIOS):
        names = {PATIENT_ID: f"s{index}", OTHER_PATIENT_ID: f"s{index}-other"}
        resources += bulk.request_resources(bulk.renamed(param.values[0], names))
    return resources


def _spaced(resource: Any) -> bytes:
    return json.dumps(resource).encode()


def _files(folder: Path, dumps: Callable[[Any], bytes]) -> list[Path]:
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for resource in _lines():
        by_type[resource["resourceType"]].append(dumps(resource))
    folder.mkdir()
    paths = []
    for kind, lines in sorted(by_type.items()):
        path = folder / f"{kind}.ndjson"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        paths.append(path)
    return paths


def _screened(paths: list[Path]) -> Screening:
    total = Screening()
    for path in paths:
        total.merge(screen_chunk(Chunk(str(path)), TERMINOLOGY, MAX_LINE, keep_patients=True))
    return total


def _decoded(held: dict[str, list[bytes]]) -> dict[str, list[Any]]:
    return {patient: sorted((orjson.loads(line) for line in lines), key=orjson.dumps)
            for patient, lines in held.items()}


def _sorted_keys(resource: Any) -> bytes:
    return json.dumps(resource, sort_keys=True).encode()  # resourceType after "code", "id", "meta"...


def test_a_spaced_export_screens_as_the_compact_one(tmp_path: Path) -> None:
    compact = _screened(_files(tmp_path / "compact", orjson.dumps))
    spaced = _screened(_files(tmp_path / "spaced", _spaced))
    assert spaced.lines == compact.lines > 1000
    assert spaced.resources == compact.resources
    assert spaced.skipped == compact.skipped
    assert spaced.roles == compact.roles and compact.roles
    assert _decoded(spaced.relevant) == _decoded(compact.relevant)
    assert _decoded(spaced.patients) == _decoded(compact.patients)


def test_an_export_with_the_type_not_first_is_counted_as_the_compact_one(tmp_path: Path) -> None:
    """Lines whose resourceType is not first are screened one by one, their type decoded alone: the same counts,
    and each line judged by the peek itself, where a block keeps some lines with what their bytes could be
    evidence of. So the roles found are within those of the compact export: the patients evaluated are among
    those it evaluates, and the rest get no card either way, cards.evaluate answering from these very peeked
    roles (tests/test_sweep.py runs both exports through the sweep to the hook's answers)."""
    compact = _screened(_files(tmp_path / "compact", orjson.dumps))
    other = _screened(_files(tmp_path / "sorted", _sorted_keys))
    assert other.lines == compact.lines > 1000
    assert other.resources == compact.resources
    assert other.skipped == compact.skipped
    assert other.roles and all(roles & ~compact.roles.get(p, 0) == 0 for p, roles in other.roles.items())
    for patient, lines in _decoded(other.relevant).items():
        assert all(line in _decoded(compact.relevant)[patient] for line in lines)
    assert _decoded(other.patients) == _decoded(compact.patients)


def test_a_line_whose_type_is_not_first_is_counted_by_its_type_unread() -> None:
    screen = Screen(TERMINOLOGY)
    claim = b'{"id":"c1","patient":{"reference":"Patient/p"},"resourceType":"Claim","total":{"value":"x"}}'
    assert opening(claim) is None
    assert screen(claim) == ("Claim", None, False, 0)
    # A Condition that mentions nothing the rules read, though its code could not be read: the hook never reads
    # it, and it is counted as a Condition, as the same line opening with its type is.
    garbled = b'{"code":5,"resourceType":"Condition","subject":{"reference":"Patient/p"}}'
    assert screen(garbled) == screen(b'{"resourceType":"Condition","code":5,"subject":{"reference":"Patient/p"}}')
    assert screen(garbled) == ("Condition", None, False, 0)
    assert screen(b'{"id":"x","resourceType":""}') == "not a FHIR resource (no resourceType)"
    assert screen(b'{"id":"x"') == "unreadable JSON"


def test_a_block_of_spaced_lines_is_screened_whole(tmp_path: Path) -> None:
    """Lines of one type, spaced alike, are counted in one pass and only those that mention what the rules read
    are looked at, as compact lines are; a block whose lines open otherwise is left to the line-by-line screen."""
    conditions = [r for r in _lines() if r["resourceType"] == "Condition"]
    data = b"".join(_spaced(r) + b"\n" for r in conditions)
    result, counts = Screening(), LineCounts()
    assert screen_block((data, 0, len(data)), Screen(TERMINOLOGY), mention_test(TERMINOLOGY), result, counts)
    assert counts.lines == result.resources["Condition"] == len(conditions)
    assert result.relevant  # the back pain and breast cancer of the scenarios, kept for their patients

    mixed = data + orjson.dumps(conditions[0]) + b"\n"  # the same type, written compact: opens otherwise
    assert not screen_block((mixed, 0, len(mixed)), Screen(TERMINOLOGY), mention_test(TERMINOLOGY), Screening(),
                            LineCounts())


def test_a_mixed_block_searched_once_screens_as_each_line_searched_alone(tmp_path: Path) -> None:
    """Types mixed in one file (and blank lines, CRLF endings, broken lines): the block is searched once and
    each line judged with what that search found in it, exactly as searching each line on its own judges it."""
    resources = _lines()
    random_order = sorted(resources, key=lambda r: orjson.dumps(r)[::-1])  # types interleaved, deterministically
    lines = [orjson.dumps(r) for r in random_order]
    lines[5:5] = [b"", b"   ", b'{"resourceType":"Condition","code":', b"[1,2]", b'{"resourceType":"OperationOutcome"}']
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(b"".join(line + (b"\r\n" if index % 3 else b"\n") for index, line in enumerate(lines)))

    searched = screen_chunk(Chunk(str(path)), TERMINOLOGY, MAX_LINE, keep_patients=True)
    alone = Screening()
    screen_lines(read_lines(Chunk(str(path)), MAX_LINE, counts := LineCounts()), Screen(TERMINOLOGY), alone,
                 keep_patients=True)
    assert searched.lines == counts.lines == len(lines) - 2  # the blank ones are not lines
    assert searched.resources == alone.resources and sum(alone.resources.values()) > 1000
    assert searched.skipped == alone.skipped and alone.skipped
    assert searched.roles == alone.roles
    assert _decoded(searched.relevant) == _decoded(alone.relevant)
    assert _decoded(searched.patients) == _decoded(alone.patients)
