"""For the people and probes that run the service: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from cds_hooks.protocol.dependencies import RuntimeDep
from cds_hooks.protocol.errors import FHIR_JSON_MEDIA_TYPE, operation_outcome
from cds_hooks.protocol.routes import json_response

# The value sets every rule reads: /readyz says not ready unless each has codes.
READY_VALUE_SETS = ("breast-cancer", "spinal-pain", "neuro-red-flags", "spine-imaging")

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: value sets loaded, feedback database reachable")
async def readyz(rt: RuntimeDep) -> Response:
    """Ready to answer hooks: the value sets are loaded and the feedback database answers."""
    problems = [] if all(rt.terminology.value_set(vs) for vs in READY_VALUE_SETS) else ["value sets not loaded"]
    try:
        async with asyncio.timeout(rt.settings.ready_timeout_seconds):
            await run_in_threadpool(rt.store.ping)
    except Exception as exc:  # any failure means not ready; the type says which
        problems.append(f"feedback database unreachable ({type(exc).__name__})")
    if problems:
        return Response(orjson.dumps(operation_outcome([("error", "transient", p, None) for p in problems])),
                        status_code=503, media_type=FHIR_JSON_MEDIA_TYPE)
    return json_response({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics, summed over all workers")
async def prometheus(rt: RuntimeDep) -> Response:
    return Response(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
