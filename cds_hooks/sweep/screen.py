"""Screen the lines of one chunk with the hook's relevance peek, keeping the relevant lines by patient.

Two passes over an export (the local engine): the first keeps every line the rules may read except Patients,
with what each patient's lines could be evidence of, and so learns who the candidates are (a patient with such
a line other than the Patient itself: nobody else can get a card) and which of them could get one (whose lines
could hold both a history and a trigger: cards.evaluate answers the others unread); the second reads again
only the chunks that held Patient lines, keeping those patients' Patients. Memory holds the kept lines of
candidates, never a line per patient.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from cds_hooks.sweep.reader import Chunk, LineCounts, lines_of, placed_lines_of, read_blocks
from fhir_mapping._lines import count_lines
from fhir_mapping.intake import MODELS, TRIGGER, UNSCANNED, Screen, mention_test, opening
from fhir_mapping.mentions import Mentions
from fhir_mapping.terminology import Terminology

NO_PATIENT = "relevant resource with no patient reference"
_OPENING_BYTES = 256  # where a line's opening is looked for: `{"resourceType":"<type>"` with any spacing


@dataclass(slots=True)
class Screening:
    """What one chunk (or the whole export, once merged) held."""

    lines: int = 0
    size: int = 0  # NDJSON bytes
    resources: Counter[str] = field(default_factory=Counter)  # readable resources by type
    skipped: Counter[str] = field(default_factory=Counter)  # lines we could not use, by reason
    relevant: dict[str, list[bytes]] = field(default_factory=dict)  # patient id -> relevant lines but its Patient
    roles: dict[str, int] = field(default_factory=dict)  # patient id -> what those lines can be evidence of
    patients: dict[str, list[bytes]] = field(default_factory=dict)  # patient id -> its Patient line(s)
    patient_lines: int = 0  # Patient resources seen (kept or not)

    def counts(self) -> dict[str, Any]:
        """What summary.json says of the export's lines and resources."""
        return {
            "lines": self.lines, "bytes": self.size, "patients": self.patient_lines,
            "resources": sum(self.resources.values()), "resourcesByType": dict(sorted(self.resources.items())),
            "linesSkipped": sum(self.skipped.values()), "skippedReasons": dict(sorted(self.skipped.items())),
        }

    def keep(self, patient: str, line: bytes, roles: int) -> None:
        """A line of this patient's record the rules may read, with what it could be evidence of."""
        held = self.relevant.get(patient)
        if held is None:
            self.relevant[patient] = [line]
            self.roles[patient] = roles
        else:
            held.append(line)
            self.roles[patient] |= roles

    def merge(self, other: Screening) -> None:
        self.lines += other.lines
        self.size += other.size
        self.resources.update(other.resources)
        self.skipped.update(other.skipped)
        self.patient_lines += other.patient_lines
        for patient, roles in other.roles.items():
            self.roles[patient] = self.roles.get(patient, 0) | roles
        for mine, theirs in ((self.relevant, other.relevant), (self.patients, other.patients)):
            for patient, lines in theirs.items():
                held = mine.get(patient)
                if held is None:
                    mine[patient] = lines
                else:
                    held.extend(lines)


def screen_lines(lines: Iterable[bytes], screen: Screen, result: Screening, *,
                 patients: Collection[str] | None = None, keep_patients: bool = False,
                 found: int | None = UNSCANNED, founds: Iterable[int | None] | None = None) -> None:
    """Judge each line and keep the relevant ones by patient (kept in one loop with local names: it runs once
    per line of the export). `found`: what every line's mentions could be evidence of, when the caller has
    searched them (Screen's `found`); `founds`: the same for each line in turn.

    First pass (`patients` None): count everything, keep relevant lines other than Patients, and Patients too
    when `keep_patients` (an engine that groups everything at once). Second pass: keep only the Patient lines
    of `patients`, counting nothing (the first pass did).
    """
    kept_patients = result.patients
    resources = result.resources
    skipped = result.skipped
    second_pass = patients is not None
    judged = zip(lines, founds, strict=True) if founds is not None else ((line, found) for line in lines)
    for line, line_found in judged:
        got = screen(line, line_found)
        if isinstance(got, str):
            if not second_pass:
                skipped[got] += 1
            continue
        kind, patient, keep, patient_roles = got
        if kind == "Patient":
            if patients is not None:
                if patient is not None and patient in patients:
                    kept_patients.setdefault(patient, []).append(line)
                continue
            resources[kind] += 1
            result.patient_lines += 1
            if keep_patients:
                if patient is None:
                    skipped["Patient with no id"] += 1
                else:
                    kept_patients.setdefault(patient, []).append(line)
            continue
        if second_pass:
            continue
        resources[kind] += 1
        if keep:
            if patient is None:
                skipped[NO_PATIENT] += 1
            else:
                result.keep(patient, line, patient_roles)


def screen_block(block: tuple[bytes | bytearray, int, int], screen: Screen, mentioned: Mentions, result: Screening,
                 counts: LineCounts) -> bool:
    """A first-pass screen of whole lines data[start:stop] (each ending in a newline) that all open with the same
    resourceType, other than Patient (whose every line is read) and OperationOutcome, without splitting them:
    they are counted as that type, and only those that mention what the rules read (found in the bytes by
    `mentioned`) are looked at one by one. False, doing nothing, for any other range.

    A line whose mentions could not make it evidence of a trigger is kept for its patient unread (only its
    subject is decoded): with the roles its bytes allow, which bound what reading it could find, the patient is
    evaluated if it could get a card, and the evaluation reads the line as the hook would. A line that could be
    a trigger's evidence (a few in a thousand) is judged as `screen_lines` judges each, so that only patients
    with a real trigger are evaluated."""
    data, start, stop = block
    found = opening(data[start:start + _OPENING_BYTES])
    if found is None or found[0] in ("Patient", "OperationOutcome"):
        return False
    kind, length = found
    # Each line must open as the first does, byte for byte (a writer spaces every line alike).
    lines = count_lines(data, start, stop, bytes(data[start:start + length]))
    if lines < 0:
        return False  # not every line opens with the same type (the first does; then each after a newline)
    counts.lines += lines
    result.resources[kind] += lines
    if kind not in MODELS:
        return True
    owner = screen.owner
    with memoryview(data) as view:
        for at, end, roles in mentioned.lines(data, start, stop):
            line = bytes(view[at:end]).rstrip(b"\r")  # a copy: data is the reader's buffer, and the line is kept
            if not roles & TRIGGER and (patient := owner(line, kind)) is not None:
                result.keep(patient, line, roles)
            else:
                result.resources[kind] -= 1  # counted again below, as screen_lines counts each line
                screen_lines((line,), screen, result, found=roles)
    return True


def screen_chunk(chunk: Chunk, terminology: Terminology, max_line_bytes: int, *,
                 patients: Collection[str] | None = None, keep_patients: bool = False) -> Screening:
    result = Screening()
    counts = LineCounts()
    screen = Screen(terminology)
    mentioned = mention_test(terminology)
    for block in read_blocks(chunk, max_line_bytes, counts):
        if patients is None and isinstance(block, tuple):
            if not screen_block(block, screen, mentioned, result, counts):
                lines, founds = _searched(block, mentioned, counts)
                screen_lines(lines, screen, result, keep_patients=keep_patients, founds=founds)
            continue
        screen_lines(lines_of(block, counts), screen, result, patients=patients, keep_patients=keep_patients)
    if patients is None:
        result.lines, result.size = counts.lines, counts.size
        if counts.too_long:
            result.skipped[too_long(max_line_bytes)] += counts.too_long
    return result


def _searched(block: tuple[bytes | bytearray, int, int], mentioned: Mentions,
              counts: LineCounts) -> tuple[list[bytes], list[int | None]]:
    """A block screen_block cannot take whole (its lines do not all open with one type: keys in another order,
    types mixed): its lines as reader.lines_of gives them, each with what one search of the whole block found
    in it (None: nothing), so that no line is searched on its own (a call per line was a third of the time)."""
    data, start, stop = block
    found = {at: roles for at, _, roles in mentioned.lines(data, start, stop)}
    lines, starts = placed_lines_of(block, counts)
    return lines, [found.get(at) for at in starts]


def too_long(max_line_bytes: int) -> str:
    return f"line longer than {max_line_bytes} bytes"
