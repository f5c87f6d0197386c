"""In-process cost of one hook request, side by side with `orjson.loads` of the same body.

"Evaluation" is what the service does for one request from raw bytes to response bytes:
`decode_hook_request` + `PatientViewService.evaluate` + `orjson.dumps` of the response, with the service built
once the way cds_hooks/protocol/app.py builds it and, as its lifespan does, `gc.collect(); gc.freeze()` after start-up.
The cyclic GC stays on (the server runs with it on). `orjson.loads` is timed as the bare call (freeing its
result is not counted), so the comparison is, if anything, strict for the service.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cds_hooks.server.allocator import keep_freed_memory
from cds_hooks.services.patient_view import PatientViewService
from cds_hooks.settings import Settings
from fhir_mapping.terminology import load_terminology


def build_service() -> PatientViewService:
    """As create_app_from_env() does (allocator tuned, settings from the environment, value sets loaded once)."""
    keep_freed_memory()
    settings = Settings()
    return PatientViewService(load_terminology(), settings.policy(), settings.fetch_limits())


def evaluator(service: PatientViewService) -> Callable[[bytes], bytes]:
    def evaluate(body: bytes) -> bytes:
        cards = service.evaluate(service.decode(body)).cards
        return orjson.dumps({"cards": cards})

    return evaluate


def check_warning(service: PatientViewService, body: bytes) -> dict[str, int]:
    """The request must take the real path: one warning card, every resource seen, none skipped."""
    evaluation = service.evaluate(service.decode(body)).evaluation
    indicators = [card["indicator"] for card in evaluation.cards]
    if indicators != ["warning"]:
        raise SystemExit(f"benchmarks: expected one warning card, got {indicators}: the chart is wrong")
    if evaluation.record.skipped:
        raise SystemExit(f"benchmarks: {len(evaluation.record.skipped)} resources were skipped as unreadable")
    return {"seen": evaluation.resources_seen, "validated": evaluation.resources_used}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True, slots=True)
class Timing:
    runs: int
    eval_ms: list[float]
    loads_ms: list[float]

    def summary(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "eval_p50_ms": statistics.median(self.eval_ms),
            "eval_p95_ms": _percentile(self.eval_ms, 0.95),
            "loads_p50_ms": statistics.median(self.loads_ms),
            "loads_p95_ms": _percentile(self.loads_ms, 0.95),
            "ratio": statistics.median(self.eval_ms) / statistics.median(self.loads_ms),
        }


def time_side_by_side(evaluate: Callable[[bytes], bytes], body: bytes, budget_s: float,
                      min_runs: int = 5, max_runs: int = 300) -> Timing:
    """Interleaved runs (eval, loads, eval, loads...) so drift on a noisy machine hits both alike."""
    gc.collect()
    gc.freeze()
    evaluate(body)  # warm-up: first-call costs are start-up, not per-request
    orjson.loads(body)
    start = time.perf_counter()
    evaluate(body)
    orjson.loads(body)
    one = time.perf_counter() - start
    runs = max(min_runs, min(max_runs, int(budget_s / max(one, 1e-6))))
    eval_ms: list[float] = []
    loads_ms: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        evaluate(body)
        t1 = time.perf_counter()
        eval_ms.append((t1 - t0) * 1000)
        t0 = time.perf_counter()
        value = orjson.loads(body)
        t1 = time.perf_counter()
        loads_ms.append((t1 - t0) * 1000)
        del value
    return Timing(runs, eval_ms, loads_ms)


def traced_peak(function: Callable[[bytes], object], body: bytes) -> int:
    """Peak bytes Python allocated during one call (tracemalloc; the body itself is not counted)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = function(body)
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak
