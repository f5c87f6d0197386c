"""Tables for the terminal and the README: what was measured per size, and PASS/MISS for each target of
docs/performance-budget.md."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MB = 1_000_000
# docs/performance-budget.md: HTTP p99 on one worker, by chart size.
P99_TARGET_MS = {1_000: 10.0, 10_000: 100.0, 50_000: 500.0}
RPS_TARGET_AT = 1_000
RPS_TARGET = 300.0
RATIO_TARGET = 1.0
MEMORY_TARGET = 2.0  # peak memory per in-flight request, in bodies
# uvicorn #3149: without TCP_NODELAY every keep-alive request after the first waits ~44 ms for a delayed ACK.
STALL_MS = 20.0
# Below these sizes the targets that are relative to the body have nothing to measure: a 0.1 MB body
# costs orjson.loads ~0.1 ms while the fixed per-request work (validating the ~10 relevant resources,
# rendering the card) is ~1-2 ms, and RSS moves in allocator-arena steps of a few MB.
RATIO_JUDGED_FROM = 1_000
MEMORY_JUDGED_FROM = 10_000


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def inprocess_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        t = r["inprocess"]
        rows.append([
            f"{r['resources']:,}", _fmt(r["body_bytes"] / MB, 2), f"{r['validated']:,}",
            f"{_fmt(t['eval_p50_ms'], 2)} / {_fmt(t['eval_p95_ms'], 2)}",
            f"{_fmt(t['loads_p50_ms'], 2)} / {_fmt(t['loads_p95_ms'], 2)}",
            f"{t['ratio']:.2f}x", str(t["runs"]),
            f"{r['traced_eval_bytes'] / r['body_bytes']:.2f}x", f"{r['traced_loads_bytes'] / r['body_bytes']:.2f}x",
        ])
    return _table(["resources", "body MB", "validated", "eval ms p50/p95", "orjson.loads ms p50/p95",
                   "eval/loads", "runs", "tracemalloc eval", "tracemalloc loads"], rows)


def _lat(phase: dict[str, Any] | None) -> str:
    if not phase or not phase["count"]:
        return "-"
    return f"{_fmt(phase['p50_ms'], 2)} / {_fmt(phase['p99_ms'], 2)} ({phase['count']})"


def http_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        h = r["http"]
        single, loaded = h["latency"], h["throughput"]
        rows.append([
            f"{r['resources']:,}", _lat(single), _fmt(single["rps"], 0), _lat(loaded), _fmt(loaded["rps"], 0),
            f"{_fmt(h['rss_delta_bytes'] / MB, 1)} ({h['rss_delta_bytes'] / r['body_bytes']:.2f}x)",
            f"{h['rss_delta_loaded_bytes'] / (loaded['connections'] * r['body_bytes']):.2f}x",
            str(h["failures"]),
        ])
    return _table(["resources", "c=1 p50 / p99 ms (n)", "c=1 req/s", "c=4 p50 / p99 ms (n)", "c=4 req/s",
                   "RSS peak delta MB (x body)", "c=4 delta/conn", "failures"], rows)


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    measured: str
    ok: bool | None  # None: not applicable at this size (see the note)

    @property
    def word(self) -> str:
        return "info" if self.ok is None else "PASS" if self.ok else "MISS"


def verdicts(results: list[dict[str, Any]], workers2: dict[str, Any] | None) -> list[Verdict]:
    by_size = {r["resources"]: r for r in results}
    out: list[Verdict] = []

    def each(label: str, judged_from: int, measure: Callable[[dict[str, Any]], tuple[float, str]],
             limit: float) -> None:
        for size, r in sorted(by_size.items()):
            value, text = measure(r)
            out.append(Verdict(f"{label} @{size:,}", text, value <= limit if size >= judged_from else None))

    each(f"eval <= {RATIO_TARGET:.1f}x orjson.loads", RATIO_JUDGED_FROM,
         lambda r: (r["inprocess"]["ratio"], f"{r['inprocess']['ratio']:.2f}x"), RATIO_TARGET)
    for size, limit in P99_TARGET_MS.items():
        if size in by_size:
            p99 = by_size[size]["http"]["latency"]["p99_ms"]
            out.append(Verdict(f"HTTP p99 <= {limit:g} ms @{size:,}", f"{_fmt(p99, 1)} ms",
                               p99 is not None and p99 <= limit))
    if RPS_TARGET_AT in by_size:
        rps = by_size[RPS_TARGET_AT]["http"]["throughput"]["rps"]
        out.append(Verdict(f">= {RPS_TARGET:g} req/s @{RPS_TARGET_AT:,} (c=4)", f"{rps:.0f} req/s", rps >= RPS_TARGET))
    each(f"memory per in-flight request <= {MEMORY_TARGET:g}x body", MEMORY_JUDGED_FROM,
         lambda r: (r["http"]["rss_delta_bytes"] / r["body_bytes"],
                    f"{r['http']['rss_delta_bytes'] / r['body_bytes']:.2f}x (RSS)"), MEMORY_TARGET)
    if workers2 is not None and workers2["resources"] in by_size:
        two = workers2["latency"]["p50_ms"]
        one = by_size[workers2["resources"]]["http"]["latency"]["p50_ms"]
        out.append(Verdict(
            f"--workers 2 keep-alive: no ~44 ms stall @{workers2['resources']:,} (c=1 p50 vs 1 worker)",
            f"{_fmt(two, 1)} vs {_fmt(one, 1)} ms",
            two is not None and one is not None and two - one < STALL_MS,
        ))
    return out


def verdict_table(items: list[Verdict]) -> str:
    return _table(["target (docs/performance-budget.md)", "measured", "verdict"],
                  [[v.target, v.measured, v.word] for v in items])
