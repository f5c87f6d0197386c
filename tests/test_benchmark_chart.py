"""The benchmark's charts stay valid requests that take the real path (so `python -m benchmarks` measures it)."""

from __future__ import annotations

import orjson

from benchmarks.chart import build_request
from benchmarks.inprocess import build_service, check_warning
from tests.scenarios import fhir_builders as fb


def test_chart_has_the_size_asked_and_fires_the_warning() -> None:
    body, makeup = build_request(600)
    request = orjson.loads(body)
    assert set(request["prefetch"]) == set(fb.PREFETCH_KEYS)
    entries = sum(len(v.get("entry", [])) for k, v in request["prefetch"].items() if k != "patient")
    assert entries + 1 == 600 == sum(makeup.values())
    check_warning(build_service(), body)  # raises unless exactly one warning card, nothing skipped
