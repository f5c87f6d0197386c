"""`python -m benchmarks.orjson_floor DIR`: `orjson.loads` of every line of every NDJSON file under DIR, the naive
floor of `python -m benchmarks.sweep` (what any sweep that parses everything pays), written as plainly and as
fast as such a script is: the file object's own line iteration, orjson, nothing of this project. (It used to
read with the sweep's own reader, which made the floor seconds slower than a plain loop, and the sweep's ratio
to it look better than it is.)"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import orjson


def main(folder: str) -> int:
    parsed = 0
    for path in sorted(Path(folder).rglob("*")):
        if not path.name.endswith((".ndjson", ".ndjson.gz")):
            continue
        with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as stream:
            for line in stream:
                if line.strip():
                    orjson.loads(line)
                    parsed += 1
    print(parsed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
