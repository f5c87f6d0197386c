"""Feedback on the cards a service issued (CDS Hooks 2.0 §4)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cds_hooks.feedback.models import FeedbackError, FeedbackTooLarge, feedback_outcome, parse_feedback
from cds_hooks.protocol.dependencies import Client, FeedbackBody, LogFields, RuntimeDep, Service, Store
from cds_hooks.protocol.errors import FHIR_JSON_MEDIA_TYPE, BadRequest, PayloadTooLarge

router = APIRouter()


@router.post("/cds-services/{service_id}/feedback", summary="Feedback on the cards (accepted, overridden)")
async def feedback(service: Service, client: Client, body: FeedbackBody, store: Store, rt: RuntimeDep,
                   fields: LogFields) -> Response:
    try:
        # Off the event loop: even a body at the limit must not stall every other connection.
        parsed = await run_in_threadpool(parse_feedback, bytes(body), rt.settings.feedback_max_items)
    except FeedbackTooLarge as exc:
        raise PayloadTooLarge(exc.message, expression=[exc.expression]) from None
    except FeedbackError as exc:
        raise BadRequest(exc.message, expression=[exc.expression]) from None
    result = await run_in_threadpool(
        store.record_feedback, service.id, parsed,
        client.issuer if client else None, client.tenant if client else None,
    )
    if result.refused:
        fields["feedback_refused"] = len(result.refused)
    return Response(orjson.dumps(feedback_outcome(parsed, result)), media_type=FHIR_JSON_MEDIA_TYPE)
