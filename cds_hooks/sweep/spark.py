"""The Spark engine: the same screen and the same per-patient rule, on Apache Spark (optional extra `spark`).

The export is planned into the local engine's chunks (byte ranges of plain files, whole gzip files), dealt into
tasks; each task reads its chunks with the local engine's reader and screens them with the hook's peek
(mapInPandas over a range of task numbers), so the JVM never holds the export's lines. Two passes, as the local
engine's workers keep what they screened and Spark cannot: the first sends the JVM only what each patient's
kept lines could be evidence of (fhir_mapping.intake roles) and each task's counts; the patients whose lines
could hold both a history and a trigger are picked from them (bit_or), and the second pass screens the chunks
again and sends only those patients' lines, grouped by patient, each group running the very function the local
engine runs (`evaluate_patient`, groupBy(...).applyInPandas). Shipping every kept line into the JVM once, to
evaluate a few hundred patients, cost more than screening twice (on the 1 GB benchmark: 77,000 lines, 100 MB,
to evaluate 114 patients). Lines, counts and skip reasons are the local engine's exactly. The DataFrame API
only, so a Spark Connect URL (sc://) works as well as a classic master.

The export folder must be readable at the same path by the driver and every executor (local mode, or a
shared file system on a cluster).
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cards.policy import Policy
from cds_hooks.sweep.patient import evaluate_patient
from cds_hooks.sweep.pattern_cache import prepare_mention_test
from cds_hooks.sweep.reader import Chunk, chunk_size, plan_chunks
from cds_hooks.sweep.screen import Screening, screen_chunk
from cds_hooks.sweep.workers import ShownFailure, WorkerFailed
from fhir_mapping.intake import EITHER
from fhir_mapping.terminology import load_terminology

# First pass: per task, each patient with kept lines and what they could be evidence of; and one row (patient
# null) with the task's counts. Second pass: the lines (as the reader gave them) of the patients to evaluate.
_ROLES = "patient string, roles int, stats string"
_LINES = "patient string, line binary"
_RESULT = "row string"


class SparkUnavailable(RuntimeError):
    pass


def spark_session(master: str | None) -> Any:
    # Executors' Python must be this one (the package and its value sets are installed here).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailable("--engine spark needs PySpark: pip install 'mscc-alert[spark]' (and Java 17)") from exc
    builder = SparkSession.builder.appName("mscc-alert-sweep")
    if master and master.startswith("sc://"):
        session = builder.remote(master).getOrCreate()
    else:
        builder = builder.master(master or "local[*]").config("spark.ui.enabled", "false")
        if local_cores(master) is not None:
            # In local mode the JVM only plans the job and carries the relevant lines, and its optimising JIT
            # compiler (C2) was its busiest thread (10 CPU s 40 s into a run on the 0.2 GB benchmark export; the
            # JVM's total 45 s). With the quick compiler alone the JVM used 16-22 s. Cluster executors keep C2.
            builder = builder.config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
    for key, value in _sql_settings(master).items():
        session.conf.set(key, value)  # runtime SQL settings: a Spark Connect session takes them too
    return session


def local_cores(master: str | None) -> int | None:
    """The cores of a local master (`local`, `local[4]`, `local[*]`, `local[4,2]`); None for a cluster."""
    if master is None or master == "local[*]" or master.startswith("local[*,"):
        return os.cpu_count() or 1
    if master == "local":
        return 1
    if master.startswith("local[") and master.endswith("]"):
        head = master[len("local[") : -1].split(",")[0]
        return int(head) if head.isdigit() and int(head) > 0 else os.cpu_count() or 1
    return None


def _sql_settings(master: str | None) -> dict[str, str]:
    settings = {
        # The shuffle carries only the relevant lines (a few % of the export's bytes), so adaptive execution would
        # coalesce it into one partition, and the costly step after it, validating each candidate's resources,
        # would run as one task on one core (seen: the whole evaluation in a single task under local[2]).
        "spark.sql.adaptive.coalescePartitions.enabled": "false",
        # The export is a list of files: more than 32 (the default threshold) and Spark starts a job with a task
        # per file just to list them; the driver lists a few thousand files faster by itself.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "10000",
    }
    cores = local_cores(master)
    if cores is not None:
        # A few hundred shuffle partitions (the default) cost more than they spread on one machine; four per core
        # even out candidates whose costs differ a thousandfold.
        settings["spark.sql.shuffle.partitions"] = str(4 * cores)
    return settings


def _task_chunks(chunks: list[Chunk], master: str | None) -> list[list[Chunk]]:
    """The chunks each screening task reads. A task costs Spark ~0.2 s beyond its work on a local master (71
    tasks of one chunk each were 13 s of the 1 GB benchmark's 36), so there the chunks are dealt into two tasks
    per core, the largest first, each to the task with the fewest bytes so far; on a cluster, one task a chunk."""
    cores = local_cores(master)
    if cores is None:
        return [[chunk] for chunk in chunks]
    tasks: list[list[Chunk]] = [[] for _ in range(min(len(chunks), 2 * cores))]
    sizes = [0] * len(tasks)
    for chunk in sorted(chunks, key=chunk_size, reverse=True):
        emptiest = sizes.index(min(sizes))
        tasks[emptiest].append(chunk)
        sizes[emptiest] += chunk_size(chunk)
    return tasks


def _screenings(tasks: list[list[Chunk]], batches: Iterator[Any], max_line_bytes: int, cache_dir: Path | None,
                keep_patients: bool) -> Iterator[Screening]:
    """What each chunk of the task numbers a partition is handed (one a partition) holds, read with the local
    engine's own reader and screen."""
    terminology = load_terminology()
    prepare_mention_test(terminology, cache_dir)  # once a Python worker (the executor's own cache folder)
    for batch in batches:
        for number in batch["id"]:
            for chunk in tasks[int(number)]:
                yield screen_chunk(chunk, terminology, max_line_bytes, keep_patients=keep_patients)


def _tallies(screening: Screening) -> str:
    """A task's counts, as they travel to the driver."""
    return orjson.dumps({"lines": screening.lines, "size": screening.size, "resources": screening.resources,
                         "skipped": screening.skipped, "patient_lines": screening.patient_lines}).decode()


def _untallied(tallies: str) -> Screening:
    found = orjson.loads(tallies)
    return Screening(lines=found["lines"], size=found["size"], resources=Counter(found["resources"]),
                     skipped=Counter(found["skipped"]), patient_lines=found["patient_lines"])


def _roles_partitions(tasks: list[list[Chunk]], max_line_bytes: int,
                      cache_dir: Path | None) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """First pass: each task answers with each patient's roles and its counts, never a line."""
    def screen_batches(batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        totals = Screening()
        for part in _screenings(tasks, batches, max_line_bytes, cache_dir, keep_patients=False):
            part.relevant = {}
            totals.merge(part)
        rows: list[tuple[str | None, int, str | None]] = [(p, r, None) for p, r in totals.roles.items()]
        rows.append((None, 0, _tallies(totals)))
        yield pd.DataFrame(rows, columns=["patient", "roles", "stats"], dtype=object)

    return screen_batches


def _lines_partitions(tasks: list[list[Chunk]], max_line_bytes: int, cache_dir: Path | None,
                      patients: frozenset[str]) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """Second pass: the same screen, answering with the kept lines and Patients of `patients` alone."""
    def screen_batches(batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        for part in _screenings(tasks, batches, max_line_bytes, cache_dir, keep_patients=True):
            rows = [(p, line) for held in (part.relevant, part.patients) for p, lines in held.items()
                    if p in patients for line in lines]
            if rows:
                yield pd.DataFrame(rows, columns=["patient", "line"], dtype=object)

    return screen_batches


def _evaluate_groups(now: datetime, policy: Policy) -> Callable[[Any, Any], Any]:
    def evaluate_group(key: Any, group: Any) -> Any:
        import pandas as pd

        # dtype=object: pandas 3 would make these Arrow-backed strings, which PySpark's pandas-to-Arrow
        # conversion cannot take.
        lines = [bytes(line) for line in group["line"]]
        row = evaluate_patient(key[0], lines, now=now, policy=policy, terminology=load_terminology())
        return pd.DataFrame({"row": [orjson.dumps(row).decode()] if row else []}, dtype=object)

    return evaluate_group


def _task_failure(report: str) -> str:
    """What a failed Spark task says, from the Python traceback Spark reports, by the local engine's rule: the
    message of a ShownFailure (made to be shown), else the exception's type alone (its text can quote the data)."""
    raised = [line for line in report.splitlines() if _RAISED.match(line)]
    if not raised:
        return "a Spark task failed"
    kind, _, message = raised[-1].partition(": ")
    if kind in _shown_failures():
        return message.strip()
    return f"{kind.rsplit('.', 1)[-1]} in a Spark task"


def _shown_failures() -> set[str]:
    """The qualified names of every ShownFailure, as a traceback names them."""
    found, todo = set(), [ShownFailure]
    while todo:
        kind = todo.pop()
        found.add(f"{kind.__module__}.{kind.__qualname__}")
        todo += kind.__subclasses__()
    return found


# The line of a Python traceback naming what was raised: `module.Type: message`, at the start of a line.
_RAISED = re.compile(r"^[A-Za-z_][\w.]*: ")


def sweep_spark(files: list[Path], *, now: datetime, policy: Policy, master: str | None, max_line_bytes: int,
                chunk_bytes: int, cache_dir: Path | None = None) -> tuple[Screening, int, list[dict[str, Any]]]:
    # Largest first, as the local engine hands them out: the last tasks are the short ones.
    chunks = sorted(plan_chunks([path.resolve() for path in files], chunk_bytes), key=chunk_size, reverse=True)
    tasks = _task_chunks(chunks, master)
    session = spark_session(master)
    from pyspark.errors import PythonException
    from pyspark.sql import functions as F  # importable: spark_session found PySpark

    try:
        # One partition per task, each holding the task's number (range works over Spark Connect too).
        numbers = session.range(0, len(tasks), 1, len(tasks))
        # Small (a row per patient with kept lines, per task), and read twice below: kept.
        screened = numbers.mapInPandas(_roles_partitions(tasks, max_line_bytes, cache_dir), schema=_ROLES).persist()
        stats = [row["stats"] for row in screened.filter(F.col("patient").isNull()).collect()]
        roles = screened.filter(F.col("patient").isNotNull()).groupBy("patient").agg(F.bit_or("roles").alias("roles"))
        # A card needs a history and a trigger: the others get cards.evaluate's "no card" unread, as in the local
        # engine. One job for both: how many candidates, and which of them to evaluate.
        [picked] = roles.agg(F.count("*").alias("candidates"), F.collect_list(
            F.when(F.col("roles") == EITHER, F.col("patient"))).alias("evaluated")).collect()
        candidates, evaluated = int(picked["candidates"]), frozenset(picked["evaluated"])
        screened.unpersist()
        results = []
        if evaluated:
            lines = numbers.mapInPandas(_lines_partitions(tasks, max_line_bytes, cache_dir, evaluated), schema=_LINES)
            results = lines.groupBy("patient").applyInPandas(_evaluate_groups(now, policy), schema=_RESULT).collect()
    except PythonException as exc:  # a task raised: said as the local engine's workers say it
        raise WorkerFailed(_task_failure(str(exc))) from None
    finally:
        session.stop()
    total = Screening()
    for tallies in stats:
        total.merge(_untallied(tallies))
    return total, candidates, [orjson.loads(result["row"]) for result in results]
