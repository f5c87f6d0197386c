"""`python -m benchmarks.spark_floor MASTER`: what any PySpark program pays on this machine before it does any work,
the floor of `python -m benchmarks.sweep`'s Spark row: a session made as the sweep makes it (the same settings,
cds_hooks.sweep.spark.spark_session), one job of one Python task per core that hands back nothing (mapInPandas,
as the sweep screens), and the session stopped. Nothing of the sweep's own work runs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from cds_hooks.sweep.spark import local_cores, spark_session


def _nothing(batches: Iterator[Any]) -> Iterator[Any]:
    for batch in batches:
        yield batch.iloc[0:0]


def main(master: str) -> int:
    session = spark_session(master)
    try:
        tasks = local_cores(master) or 2
        rows = session.range(0, tasks, 1, tasks).mapInPandas(_nothing, schema="id long").collect()
    finally:
        session.stop()
    print(len(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
