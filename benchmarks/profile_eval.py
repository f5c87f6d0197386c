"""Where one in-process evaluation spends its time: `python -m benchmarks.profile_eval --size 10000`.

cProfile over a few evaluations of the benchmark chart (same service set-up, warm-up and frozen GC as
`python -m benchmarks`), printed by own time and by cumulative time with file:line. cProfile adds per-call
overhead, so many tiny calls look costlier than they are; compare against the un-profiled median printed first.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import time

from benchmarks.chart import build_request
from benchmarks.inprocess import build_service, check_warning, evaluator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_eval", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000, help="resources in the chart")
    parser.add_argument("--runs", type=int, default=3, help="profiled evaluations")
    parser.add_argument("--top", type=int, default=25, help="rows per listing")
    parser.add_argument("--gc", choices=["on", "off"], default="on", help="cyclic GC during the runs")
    args = parser.parse_args(argv)
    service = build_service()
    body, _ = build_request(args.size)
    check_warning(service, body)
    evaluate = evaluator(service)
    gc.collect()
    gc.freeze()
    if args.gc == "off":
        gc.disable()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        evaluate(body)
        times.append((time.perf_counter() - start) * 1000)
    print(f"{args.size:,} resources, {len(body) / 1e6:.1f} MB: un-profiled median {statistics.median(times):.1f} ms "
          f"over {args.runs} runs (GC {args.gc})")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.runs):
        evaluate(body)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
