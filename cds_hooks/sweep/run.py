"""`mscc-alert sweep`: choose the engine, run it, write the files, log counts (never PHI)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cds_hooks.settings import Settings
from cds_hooks.sweep.output import summarise, write_outputs
from cds_hooks.sweep.progress import Progress
from cds_hooks.sweep.reader import export_files, plan_chunks

_log = logging.getLogger("mscc_alert.sweep")


@dataclass(frozen=True, slots=True)
class SweepOptions:
    source: Path
    out: Path
    now: datetime
    engine: Literal["local", "spark"] = "local"
    workers: int = 1
    spark_master: str | None = None


class SweepError(Exception):
    """A sweep that cannot start (no such folder, no NDJSON in it, Spark missing): said to the user plainly."""


def run_sweep(options: SweepOptions, settings: Settings) -> dict[str, Any]:
    """Sweep the export; return the summary (also written to summary.json)."""
    started = time.monotonic()
    if not options.source.is_dir():
        raise SweepError(f"{options.source} is not a folder")
    files, others = export_files(options.source)
    if not files:
        raise SweepError(f"{options.source} holds no .ndjson or .ndjson.gz files")
    policy = settings.policy()
    progress = Progress(sum(p.stat().st_size for p in files), len(files))
    if options.engine == "spark":
        from cds_hooks.sweep.spark import SparkUnavailable, sweep_spark

        try:
            screening, candidates, rows = sweep_spark(
                files, now=options.now, policy=policy, master=options.spark_master,
                max_line_bytes=settings.sweep_max_line_bytes, chunk_bytes=settings.sweep_chunk_bytes,
                cache_dir=settings.sweep_cache_dir)
        except SparkUnavailable as exc:
            raise SweepError(str(exc)) from None
    else:
        from cds_hooks.sweep.local import sweep_local

        chunks = plan_chunks(files, settings.sweep_chunk_bytes)
        screening, candidates, rows = sweep_local(
            chunks, now=options.now, policy=policy, workers=options.workers,
            max_line_bytes=settings.sweep_max_line_bytes, progress=progress, cache_dir=settings.sweep_cache_dir)
    progress.close()
    summary = summarise(
        rows,
        settings.time_zone,
        engine=options.engine,
        workers=options.workers,
        now=options.now.isoformat(),
        files=len(files),
        filesIgnored=len(others),
        **screening.counts(),
        candidates=candidates,
        worklist=len(rows),
        seconds=0.0,
    )
    summary["seconds"] = round(time.monotonic() - started, 3)
    write_outputs(options.out, rows, summary)
    _log.info("sweep done", extra={k: summary[k] for k in (
        "engine", "workers", "files", "lines", "patients", "candidates", "worklist", "linesSkipped", "seconds")})
    return summary
