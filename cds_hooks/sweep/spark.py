"""The Spark engine: the same screen and the same per-patient rule, on Apache Spark (optional extra `spark`).

The export is planned into the local engine's chunks (byte ranges of plain files, whole gzip files); each Spark
task reads one chunk with the local engine's reader and screens it with the hook's peek (mapInPandas over a
range of chunk numbers), so the JVM never holds the export's lines (it used to read them as text, convert
them to Arrow and hand them to Python: most of its CPU) and only the relevant lines are shuffled; they are
grouped by patient and, for the patients whose relevant lines could hold both a history and a trigger (as in
the local engine), each group runs the very function the local engine runs (`evaluate_patient`,
groupBy(...).applyInPandas). Lines, counts and skip reasons are the local engine's exactly. The DataFrame API
only, so a Spark Connect URL (sc://) works as well as a classic master. Each screening task's counts travel
through the same shuffle as one extra group; the screened lines are kept (persist), so the export is read once.

The export folder must be readable at the same path by the driver and every executor (local mode, or a
shared file system on a cluster).
"""

from __future__ import annotations

import os
import sys
import uuid
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
from fhir_mapping.intake import EITHER
from fhir_mapping.terminology import load_terminology

_STATS = "stats"  # the kind of the rows that carry a task's counts
# Lines as the reader gave them (bytes), each with what its patient's relevant lines in that chunk can be
# evidence of (fhir_mapping.intake roles): only patients whose lines could hold both are evaluated.
_SCREENED = "patient string, kind string, line binary, roles int"
_RESULT = "row string, stats string"


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
        if _local_cores(master) is not None:
            # In local mode the JVM only plans the job and carries the relevant lines, and its optimising JIT
            # compiler (C2) was its busiest thread (10 CPU s 40 s into a run on the 0.2 GB benchmark export; the
            # JVM's total 45 s). With the quick compiler alone the JVM used 16-22 s. Cluster executors keep C2.
            builder = builder.config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
    for key, value in _sql_settings(master).items():
        session.conf.set(key, value)  # runtime SQL settings: a Spark Connect session takes them too
    return session


def _local_cores(master: str | None) -> int | None:
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
    cores = _local_cores(master)
    if cores is not None:
        # A few hundred shuffle partitions (the default) cost more than they spread on one machine; four per core
        # even out candidates whose costs differ a thousandfold.
        settings["spark.sql.shuffle.partitions"] = str(4 * cores)
    return settings


def _screen_partitions(chunks: list[Chunk], max_line_bytes: int,
                       cache_dir: Path | None) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """Each task screens the chunks whose numbers it is handed (one a task), reading them with the local
    engine's own reader: the JVM never holds the export's lines, only the relevant ones it shuffles."""
    def screen_batches(batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        terminology = load_terminology()
        prepare_mention_test(terminology, cache_dir)  # once a Python worker (the executor's own cache folder)
        totals = Screening()
        for batch in batches:
            for number in batch["id"]:
                part = screen_chunk(chunks[int(number)], terminology, max_line_bytes, keep_patients=True)
                rows = [(p, "other", line, part.roles[p]) for p, held in part.relevant.items() for line in held]
                rows += [(p, "Patient", line, 0) for p, held in part.patients.items() for line in held]
                part.relevant, part.patients = {}, {}
                totals.merge(part)
                if rows:
                    yield pd.DataFrame(rows, columns=["patient", "kind", "line", "roles"], dtype=object)
        stats = {"lines": totals.lines, "size": totals.size, "resources": totals.resources,
                 "skipped": totals.skipped, "patient_lines": totals.patient_lines}
        yield pd.DataFrame([(f"\0{_STATS}-{uuid.uuid4()}", _STATS, orjson.dumps(stats), EITHER)],
                           columns=["patient", "kind", "line", "roles"], dtype=object)

    return screen_batches


def _evaluate_groups(now: datetime, policy: Policy) -> Callable[[Any, Any], Any]:
    def evaluate_group(key: Any, group: Any) -> Any:
        import pandas as pd

        # dtype=object throughout: pandas 3 would make these Arrow-backed strings, which PySpark's
        # pandas-to-Arrow conversion cannot take.
        kinds = set(group["kind"])
        if _STATS in kinds:
            return pd.DataFrame({"row": [None] * len(group), "stats": [bytes(b).decode() for b in group["line"]]},
                                dtype=object)
        lines = [bytes(line) for line in group["line"]]
        row = evaluate_patient(key[0], lines, now=now, policy=policy, terminology=load_terminology())
        return pd.DataFrame({"row": [orjson.dumps(row).decode()] if row else [], "stats": [None] if row else []},
                            dtype=object)

    return evaluate_group


def sweep_spark(files: list[Path], *, now: datetime, policy: Policy, master: str | None, max_line_bytes: int,
                chunk_bytes: int, cache_dir: Path | None = None) -> tuple[Screening, int, list[dict[str, Any]]]:
    # Largest first, as the local engine hands them out: the last tasks are the short ones.
    chunks = sorted(plan_chunks([path.resolve() for path in files], chunk_bytes), key=chunk_size, reverse=True)
    session = spark_session(master)
    from pyspark.sql import functions as F  # importable: spark_session found PySpark

    try:
        # One partition per chunk, each holding the chunk's number (range works over Spark Connect too).
        numbers = session.range(0, len(chunks), 1, len(chunks))
        # Kept once screened: it is read three times below, and screening is the costly part of the job.
        screen = _screen_partitions(chunks, max_line_bytes, cache_dir)
        screened = numbers.mapInPandas(screen, schema=_SCREENED).persist()
        candidates = screened.filter(F.col("kind") == "other").select("patient").distinct().count()
        # A card needs a history and a trigger: the others get cards.evaluate's "no card" unread, as in the local
        # engine (the screening tasks' counts travel as rows that pass too).
        evaluated = (screened.groupBy("patient").agg(F.bit_or("roles").alias("roles"))
                     .filter(F.col("roles") == EITHER).select("patient"))
        grouped = (screened.join(evaluated, "patient", "left_semi").groupBy("patient")
                   .applyInPandas(_evaluate_groups(now, policy), schema=_RESULT))
        results = grouped.collect()  # a row per card and per screening task: small
    finally:
        session.stop()
    total = Screening()
    rows: list[dict[str, Any]] = []
    for result in results:
        if result["stats"] is not None:
            stats = orjson.loads(result["stats"])
            total.lines += stats["lines"]
            total.size += stats["size"]
            total.resources.update(stats["resources"])
            total.skipped.update(stats["skipped"])
            total.patient_lines += stats["patient_lines"]
        else:
            rows.append(orjson.loads(result["row"]))
    return total, candidates, rows
