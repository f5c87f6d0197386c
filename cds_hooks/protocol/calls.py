"""One hook call, after its request is decoded: evaluate (fetching what the prefetch lacks), hold back cards
already shown, put the cards on record, and note what the access log says about it."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from cards.suppression import card_facts
from cards.version import rules_version
from cds_hooks.feedback.models import IssuedCard
from cds_hooks.protocol.fhir_client import FetchBudget
from cds_hooks.protocol.prefetch import Gathered
from cds_hooks.protocol.requests import HookRequest
from cds_hooks.protocol.runtime import Runtime
from cds_hooks.security import VerifiedClient
from cds_hooks.server.inflight import Share
from cds_hooks.services.base import Card, CdsService, Outcome


async def answer(rt: Runtime, service: CdsService, request: HookRequest[Any, Any], client: VerifiedClient | None,
                 share: Share, fields: dict[str, Any]) -> list[Card]:
    fields["hook_instance"] = request.hookInstance
    undeclared = sorted(k for k in request.prefetch or {} if k not in service.templates)
    if undeclared:
        fields["undeclared_keys"] = ",".join(undeclared)
    # Most calls end here: one hop to a thread (the prefetch is read and judged there).
    result = await run_in_threadpool(service.evaluate_prefetched, request)
    outcome = result if isinstance(result, Outcome) else (
        await _fetch_then_decide(rt, service, request, result, client, share))
    cards = outcome.cards
    evaluation, gathered = outcome.evaluation, outcome.gathered
    issuer, tenant = (client.issuer, client.tenant) if client else (None, None)
    facts = card_facts(evaluation.decision) if cards else None
    patient_key = user_key = None
    if rt.suppression is not None and facts is not None:
        patient_key = rt.suppression.pseudonyms.patient(issuer, request.context.patientId)
        user_key = rt.suppression.pseudonyms.user(issuer, request.context.userId)
        if service.suppress_repeats:
            shown = await run_in_threadpool(rt.suppression.apply, service.id, cards, facts, patient_key,
                                            datetime.now(UTC), rules_version(), issuer, tenant)
            if shown.suppressed:
                fields["suppressed"] = shown.suppressed
                for card in cards:
                    rt.metrics.suppressed.labels(card["indicator"]).inc()
            cards = shown.cards
    fields.update(
        cards=len(cards), indicator=cards[0]["indicator"] if cards else "none",
        resources_seen=evaluation.resources_seen, resources_used=evaluation.resources_used,
        skipped=len(evaluation.record.skipped), other_patient=evaluation.record.ignored_other_patient,
    )
    if gathered.from_prefetch:
        fields["prefetch_keys"] = ",".join(gathered.from_prefetch)
    if gathered.null_keys:
        fields["null_keys"] = ",".join(gathered.null_keys)
    if gathered.fetched:
        fields["fetched_keys"] = ",".join(gathered.fetched)
        rt.metrics.fhir_fetches.labels("ok").inc(len(gathered.fetched))
    for card in cards:
        rt.metrics.cards.labels(card["indicator"]).inc()
    if cards:
        # On record before the client has the cards (its feedback on them is accepted only then).
        await run_in_threadpool(
            rt.store.record_issued,
            service.id,
            [IssuedCard(c["uuid"], c["indicator"], kind=facts.kind if facts else None,
                        evidence_at=facts.evidence_at if facts else None, rules_version=rules_version(),
                        patient_key=patient_key, user_key=user_key) for c in cards],
            issuer, tenant,
        )
    return cards


async def _fetch_then_decide(rt: Runtime, service: CdsService, request: HookRequest[Any, Any], gathered: Gathered,
                             client: VerifiedClient | None, share: Share) -> Outcome:
    """The keys the prefetch lacks, from fhirServer: in the fetch pool, within one budget of bytes (held
    in the in-flight budget meanwhile, as part of the request's own share, so the oldest request can
    always go on) and of seconds (waiting for a slot included)."""
    settings = rt.settings
    plan = service.plan_fetch(request, gathered, client.issuer if client else None)
    seconds = settings.fhir_total_seconds
    start = time.monotonic()
    async with AsyncExitStack() as held:
        try:
            async with asyncio.timeout(seconds):
                await held.enter_async_context(rt.fetches.admit(plan.origin))
                await share.take(settings.fhir_max_bytes)
        except TimeoutError:
            raise service.not_fetched(request, gathered, "fhir-busy") from None
        budget = FetchBudget(settings.fhir_max_bytes, seconds - (time.monotonic() - start))
        return await rt.fetches.run(
            lambda keys: service.fetch_and_decide(request, gathered, plan, budget, keys))
