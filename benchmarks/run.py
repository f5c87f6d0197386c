"""`python -m benchmarks`: in-process cost, HTTP latency/throughput and memory at several chart sizes.

For each size: build the request (benchmarks/chart.py) and check it yields a warning card; time the evaluation
next to `orjson.loads` in this process; then start a fresh `mscc-alert serve` (one worker) and drive it from
benchmarks/loadgen.py in its own process: one keep-alive connection for latency, four for throughput, while
reading the server's peak RSS from /proc. Finally one `--workers 2` run at 1,000 resources (keep-alive latency:
the TCP_NODELAY trap of uvicorn #3149 would show as ~44 ms). Medians throughout: the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks import report
from benchmarks.chart import build_request
from benchmarks.inprocess import build_service, check_warning, evaluator, time_side_by_side, traced_peak
from benchmarks.service_process import SERVICE_PATH, Server

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (100, 1_000, 10_000, 50_000)
QUICK_SIZES = (100, 1_000)
THROUGHPUT_CONNECTIONS = 4
EXPECT = '"indicator":"warning"'
MIN_SIZE = 20  # the resources the rules read, plus a little bulk


@dataclass(frozen=True, slots=True)
class Plan:
    """How long each phase may run at a given size: bounded by count and by time."""

    inprocess_s: float
    latency_s: float
    latency_max: int
    throughput_s: float

    @staticmethod
    def for_size(resources: int, quick: bool) -> Plan:
        if quick:
            return Plan(inprocess_s=0.8, latency_s=1.5, latency_max=500, throughput_s=1.5)
        return Plan(
            inprocess_s=min(22.0, 2.0 + resources / 2_500),
            latency_s=min(40.0, 5.0 + resources / 1_250),
            latency_max=3_000,
            throughput_s=min(20.0, 5.0 + resources / 3_000),
        )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(server: Server, body_file: Path, connections: int, max_requests: int, seconds: float,
         warmup: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(server.port), "--path", SERVICE_PATH,
               "--body", str(body_file), "--connections", str(connections), "--requests", str(max_requests),
               "--seconds", str(seconds), "--warmup", str(warmup), "--expect", EXPECT]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=seconds + 300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmarks: load generator failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout)
    latencies = result.pop("latencies_ms")
    result.update(p50_ms=statistics.median(latencies) if latencies else None,
                  p90_ms=_percentile(latencies, 0.90), p99_ms=_percentile(latencies, 0.99),
                  max_ms=max(latencies) if latencies else None)
    for failure in result["failures"]:
        print(f"    load generator: {failure}", file=sys.stderr)
    return result


def measure_http(body: bytes, warm_body: bytes, plan: Plan, tmp: Path, workers: int = 1) -> dict[str, Any]:
    body_file = tmp / "body.json"
    body_file.write_bytes(body)
    with Server(workers=workers) as server:
        for _ in range(3):  # first requests pay one-off costs (imports, first validation, DB connection)
            status, _ = server.post(warm_body)
            if status != 200:
                raise SystemExit(f"benchmarks: warm-up request got HTTP {status}:\n{server.log_tail()}")
        baseline = server.rss_kb() if workers == 1 else 0
        single = load(server, body_file, 1, plan.latency_max, plan.latency_s, warmup=1)
        peak_single = server.peak_kb() if workers == 1 else 0
        loaded = load(server, body_file, THROUGHPUT_CONNECTIONS, 100_000, plan.throughput_s, warmup=1)
        peak_loaded = server.peak_kb() if workers == 1 else 0
        errors = server.errors_logged()
    for line in errors[:5]:
        print(f"    server log: {line}", file=sys.stderr)
    return {
        "workers": workers,
        "latency": single,
        "throughput": loaded,
        "rss_baseline_bytes": baseline * 1024,
        "rss_delta_bytes": max(0, peak_single - baseline) * 1024,
        "rss_delta_loaded_bytes": max(0, peak_loaded - baseline) * 1024,
        "failures": single["failure_count"] + loaded["failure_count"] + len(errors),
    }


def run_size(resources: int, service: Any, warm_body: bytes, quick: bool, tmp: Path) -> dict[str, Any]:
    plan = Plan.for_size(resources, quick)
    started = time.perf_counter()
    body, makeup = build_request(resources)
    counts = check_warning(service, body)
    evaluate = evaluator(service)
    timing = time_side_by_side(evaluate, body, plan.inprocess_s).summary()
    traced_eval = traced_peak(evaluate, body)
    traced_loads = traced_peak(orjson.loads, body)
    print(f"  {resources:>7,} resources, {len(body) / report.MB:.1f} MB: eval {timing['eval_p50_ms']:.2f} ms, "
          f"orjson.loads {timing['loads_p50_ms']:.2f} ms ({timing['ratio']:.2f}x); HTTP...", flush=True)
    http = measure_http(body, warm_body, plan, tmp)
    return {"resources": resources, "body_bytes": len(body), "makeup": makeup, **counts, "inprocess": timing,
            "traced_eval_bytes": traced_eval, "traced_loads_bytes": traced_loads, "http": http,
            "seconds": time.perf_counter() - started}


def _git_commit() -> str:
    """HEAD, with `+dirty` when the service code differs from it (the work tree is shared while people work)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "cds_hooks", "fhir_mapping", "cards"],
                           cwd=ROOT, capture_output=True, check=False)
    return (head.stdout.decode().strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="comma-separated resource counts (default 100,1000,10000,50000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 100,1000 and short phases")
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    parser.add_argument("--no-workers2", action="store_true", help="skip the --workers 2 keep-alive check")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")] if args.sizes else list(
            QUICK_SIZES if args.quick else DEFAULT_SIZES)
    except ValueError:
        parser.error("--sizes takes comma-separated whole numbers, e.g. 100,1000,10000,50000")
    if min(sizes) < MIN_SIZE:
        parser.error(f"a benchmark chart has at least {MIN_SIZE} resources")

    began = time.perf_counter()
    print(f"mscc-alert benchmarks  commit {_git_commit()}  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
          f"Python {platform.python_version()}  {os.cpu_count()} CPUs  load avg {os.getloadavg()[0]:.2f}"
          f"{'  (--quick)' if args.quick else ''}", flush=True)
    service = build_service()
    warm_body, _ = build_request(100)
    results: list[dict[str, Any]] = []
    workers2: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="mscc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for resources in sizes:
            results.append(run_size(resources, service, warm_body, args.quick, tmp))
        if not args.no_workers2:
            size = 1_000
            print(f"  {size:>7,} resources with --workers 2: HTTP keep-alive...", flush=True)
            body, _ = build_request(size)
            workers2 = {"resources": size, **measure_http(body, warm_body, Plan.for_size(size, args.quick), tmp, 2)}

    print("\nIn-process, one request from raw bytes to response bytes (decode_hook_request + evaluate + "
          "orjson.dumps),\nnext to orjson.loads of the same body; tracemalloc = peak Python allocation / body size")
    print(report.inprocess_table(results))
    print(f"\nHTTP against `mscc-alert serve` (1 worker, keep-alive, loopback; load generator in its own process); "
          f"RSS = server peak RSS\nover its post-warm-up baseline while one request is in flight (c=1), "
          f"and per connection with {THROUGHPUT_CONNECTIONS} in flight")
    print(report.http_table(results))
    if workers2 is not None:
        single, loaded = workers2["latency"], workers2["throughput"]
        print(f"\n--workers 2 @{workers2['resources']:,}: keep-alive c=1 p50 / p99 {report._lat(single)} ms, "
              f"{single['rps']:.0f} req/s; c={THROUGHPUT_CONNECTIONS} {loaded['rps']:.0f} req/s "
              f"(the TCP_NODELAY trap would show p50 ~44 ms), failures {workers2['failures']}")
    verdicts = report.verdicts(results, workers2)
    print("\nTargets (docs/performance-budget.md; 2-core shared machine: medians, read every figure as +-40%)")
    print(report.verdict_table(verdicts))
    print(f"eval/loads is judged from {report.RATIO_JUDGED_FROM:,} resources and memory from "
          f"{report.MEMORY_JUDGED_FROM:,}: below that, fixed per-request costs and allocator steps dwarf the body.")
    elapsed = time.perf_counter() - began
    print(f"total {elapsed:.0f} s; load avg now {os.getloadavg()[0]:.2f} (above ~1 means other work shared the cores)")
    if args.json:
        args.json.write_bytes(orjson.dumps({
            "commit": _git_commit(), "date": datetime.now(UTC).isoformat(), "quick": args.quick,
            "cpus": os.cpu_count(), "python": platform.python_version(), "results": results,
            "workers2": workers2, "seconds": elapsed,
            "verdicts": [{"target": v.target, "measured": v.measured, "verdict": v.word} for v in verdicts],
        }, option=orjson.OPT_INDENT_2))
    failures = sum(r["http"]["failures"] for r in results) + (workers2["failures"] if workers2 else 0)
    return 1 if failures else 0
