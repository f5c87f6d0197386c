"""The embedded engine: this package and the standard library only.

Pass 1 screens every chunk (byte ranges of plain files, whole gzip files) in `workers` processes, each keeping
the relevant lines it found by patient (cds_hooks/sweep/workers.py) and answering with counts and roles; the
lines of the patients who could get a card are then gathered, and pass 2 reads again the chunks that held
Patients, for those patients' Patient resources; then each is evaluated, batches of patients spread over the
same processes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cards.policy import Policy
from cds_hooks.server.allocator import keep_freed_memory
from cds_hooks.sweep.patient import evaluate_patient
from cds_hooks.sweep.pattern_cache import prepare_mention_test
from cds_hooks.sweep.progress import Progress
from cds_hooks.sweep.reader import Chunk, chunk_size
from cds_hooks.sweep.screen import Screening, screen_chunk
from cds_hooks.sweep.workers import InProcess, Processes, Workers
from fhir_mapping.intake import EITHER
from fhir_mapping.terminology import Terminology, load_terminology

# A batch of candidates closes at this many patients or this many bytes of their lines, whichever comes first:
# validation costs about the same per byte, and one patient can hold thousands of relevant resources while the
# next holds one, so batches counted in patients alone left one worker validating while the other idled.
_BATCH_PATIENTS = 50
_BATCH_BYTES = 1024 * 1024

_terminology: Terminology | None = None  # one per worker process, loaded once
# The relevant lines this process kept while screening (the parent's, for one worker), until `_lines_of` hands
# over those of the patients to evaluate: the rest never leave the worker.
_held = Screening()


def _worker_terminology() -> Terminology:
    global _terminology
    if _terminology is None:
        _terminology = load_terminology()
    return _terminology


def _prepare(cache_dir: Path | None) -> None:
    """What each worker needs before its first task: the value sets and the compiled mention test (a spawned
    worker has neither; a forked one inherits both)."""
    # Each read of a block allocated it afresh: with glibc's defaults every one was mmap'd and faulted in page by
    # page, which cost more than the read itself (0.46 s vs 0.23 s per GB). Forked workers inherit the setting.
    keep_freed_memory()
    prepare_mention_test(_worker_terminology(), cache_dir)


def _screen_task(task: tuple[Chunk, int]) -> tuple[Chunk, Screening]:
    """Screen a chunk, keep its relevant lines here, and answer with what it held but those lines."""
    chunk, max_line = task
    screening = screen_chunk(chunk, _worker_terminology(), max_line)
    _held.merge(Screening(relevant=screening.relevant))
    screening.relevant = {}
    return chunk, screening


def _lines_of(patients: frozenset[str]) -> dict[str, list[bytes]]:
    """The lines this process kept for these patients; everything it kept is let go."""
    found = {patient: lines for patient, lines in _held.relevant.items() if patient in patients}
    _held.relevant = {}
    return found


def _patients_task(task: tuple[Chunk, int, frozenset[str]]) -> Screening:
    chunk, max_line, candidates = task
    return screen_chunk(chunk, _worker_terminology(), max_line, patients=candidates)


def _evaluate_task(task: tuple[list[tuple[str, list[bytes]]], datetime, Policy]) -> tuple[int, list[dict[str, Any]]]:
    batch, now, policy = task
    terminology = _worker_terminology()
    rows = [evaluate_patient(pid, lines, now=now, policy=policy, terminology=terminology) for pid, lines in batch]
    return len(batch), [row for row in rows if row is not None]


def sweep_local(chunks: list[Chunk], *, now: datetime, policy: Policy, workers: int, max_line_bytes: int,
                progress: Progress, cache_dir: Path | None = None) -> tuple[Screening, int, list[dict[str, Any]]]:
    """(what the export held, how many candidates, worklist rows in no particular order). `cache_dir`: where
    the compiled mention test is kept between sweeps (cds_hooks/sweep/pattern_cache.py), None for none."""
    _held.relevant = {}  # nothing left from a sweep that failed in this process
    if workers <= 1:
        _prepare(cache_dir)
        return _sweep(chunks, now, policy, max_line_bytes, progress, InProcess())
    # fork where there is one (Linux): workers inherit the loaded value sets and modules instead of importing
    # them again (seconds each on a loaded machine); the CLI parent runs no threads, so nothing is held locked.
    # Elsewhere spawn, and each worker loads them once.
    if "fork" in multiprocessing.get_all_start_methods():
        _prepare(cache_dir)
        processes = Processes(workers, multiprocessing.get_context("fork"))
    else:
        processes = Processes(workers, multiprocessing.get_context("spawn"), _prepare, cache_dir)
    with processes:
        return _sweep(chunks, now, policy, max_line_bytes, progress, processes)


def _sweep(chunks: list[Chunk], now: datetime, policy: Policy, max_line: int, progress: Progress,
           workers: Workers) -> tuple[Screening, int, list[dict[str, Any]]]:
    total = Screening()
    holding_patients: list[Chunk] = []
    # Largest first (files of one type differ in size tenfold): handed out in this order as workers free up, the
    # last tasks are small ones, so no worker is left with a large range while the other waits.
    chunks = sorted(chunks, key=chunk_size, reverse=True)
    for chunk, screening in workers.map(_screen_task, [(chunk, max_line) for chunk in chunks]):
        if screening.patient_lines:
            holding_patients.append(chunk)
        total.merge(screening)
        progress.advance(bytes_done=screening.size, lines=screening.lines, patients=screening.patient_lines)

    # A candidate has a line kept for it other than its Patient: nobody else can get a card. Of them, only those
    # whose lines could hold both a history and a trigger are evaluated: cards.evaluate would answer the others
    # "no card" from these very roles, without validating anything.
    candidates = len(total.roles)
    evaluated = frozenset(patient for patient, roles in total.roles.items() if roles == EITHER)
    for held in workers.each(_lines_of, evaluated):
        total.merge(Screening(relevant=held))
    progress.advance(stage="patients")
    for screening in workers.map(_patients_task, [(chunk, max_line, evaluated) for chunk in holding_patients]):
        total.merge(screening)

    progress.advance(stage="evaluating")
    rows: list[dict[str, Any]] = []
    batches = _batches(total, now, policy)
    for _, found in workers.map(_evaluate_task, batches):
        rows.extend(found)
    return total, candidates, rows


def _batches(total: Screening, now: datetime,
             policy: Policy) -> Iterator[tuple[list[tuple[str, list[bytes]]], datetime, Policy]]:
    """Candidates in batches, the patients with the most relevant bytes first (so the batches handed out last
    are the quick ones), each patient's lines handed over and dropped from `total` as it goes, so the parent
    holds each line once."""
    order = sorted(((sum(map(len, lines)), patient) for patient, lines in total.relevant.items()), reverse=True)
    batch: list[tuple[str, list[bytes]]] = []
    size = 0
    for held, patient in order:
        batch.append((patient, total.relevant.pop(patient) + total.patients.pop(patient, [])))
        size += held
        if len(batch) == _BATCH_PATIENTS or size >= _BATCH_BYTES:
            yield batch, now, policy
            batch, size = [], 0
    if batch:
        yield batch, now, policy
