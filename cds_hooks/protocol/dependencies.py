"""What every route needs, as FastAPI dependencies: the app's runtime, the log fields of the request, the
authenticated client, the service named in the path, a share of the in-flight body budget, and the body itself
read within its limits and deadline.

Order matters and is made explicit by the parameters: the service is looked up (404) and the client
authenticated (401) before a byte of the body is read, so nobody unauthenticated can make a worker hold a body.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from cds_hooks.feedback.models import FeedbackStore
from cds_hooks.protocol.errors import NotFound, PayloadTooLarge, RequestTimeout, Unauthorized, UnsupportedMediaType
from cds_hooks.protocol.fhir_servers import is_loopback_host
from cds_hooks.protocol.runtime import Runtime
from cds_hooks.security import AuthenticationError, VerifiedClient
from cds_hooks.server.inflight import Share
from cds_hooks.services.base import CdsService
from cds_hooks.settings import Settings

_JSON_TYPES = ("application/json", "application/fhir+json")
# Bodies declared larger than this are read into an anonymous map (see read_body). At 4 MiB, four concurrent
# 12.8 MB bodies peaked at 1.15x body per connection against 1.98x when they grew side by side in the heap.
MAPPED_BODY_BYTES = 4 * 1024 * 1024


def runtime(request: Request) -> Runtime:
    found: Runtime = request.app.state.runtime
    return found


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def log_fields(request: Request) -> dict[str, Any]:
    """The fields the access log writes for this request (cds_hooks.server.middleware.AccessLog): never PHI."""
    fields: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("log", {})
    return fields


LogFields = Annotated[dict[str, Any], Depends(log_fields)]


def feedback_store(rt: RuntimeDep) -> FeedbackStore:
    return rt.store


Store = Annotated[FeedbackStore, Depends(feedback_store)]


def service(service_id: str, rt: RuntimeDep, fields: LogFields) -> CdsService:
    found = rt.services.get(service_id)
    if found is None:
        raise NotFound("Unknown CDS service id; GET /cds-services lists the services")
    fields["service_id"] = found.id
    return found


Service = Annotated[CdsService, Depends(service)]


async def authenticate(request: Request, rt: RuntimeDep, fields: LogFields) -> VerifiedClient | None:
    """The verified client, or None in open mode; 401 for a missing or invalid JWT."""
    if rt.verifier is None:
        return None
    try:
        # Off the event loop: verifying may wait for a JWKS fetch and records the jti in the database.
        client = await asyncio.get_running_loop().run_in_executor(
            rt.auth_pool, rt.verifier.verify, request.headers.get("authorization"),
            audiences_for(request, rt.settings))
    except AuthenticationError as exc:
        fields["reason"] = f"auth: {exc}"
        raise Unauthorized() from None
    fields.update(issuer=client.issuer, tenant=client.tenant, jti=client.jti)
    return client


Client = Annotated[VerifiedClient | None, Depends(authenticate)]


async def _share(rt: RuntimeDep, client: Client) -> AsyncIterator[Share]:
    """The request's share of the in-flight budget, held until the route returns (fetches take from it too)."""
    async with rt.inflight.share() as share:
        yield share


BudgetShare = Annotated[Share, Depends(_share, scope="function")]


def _body_reader(limit: Callable[[Settings], int]) -> Callable[..., Coroutine[Any, Any, bytearray | memoryview]]:
    async def body(_: Service, request: Request, rt: RuntimeDep, share: BudgetShare,
                   fields: LogFields) -> bytearray | memoryview:
        read = await read_body(request, limit(rt.settings), rt.settings.body_read_seconds, share)
        if share.waited_ms >= 1:
            fields["queued_ms"] = round(share.waited_ms, 1)
        return read
    return body


HookBody = Annotated[bytearray | memoryview, Depends(_body_reader(lambda s: s.max_body_bytes))]
FeedbackBody = Annotated[bytearray | memoryview, Depends(_body_reader(lambda s: s.feedback_max_body_bytes))]


async def read_body(request: Request, limit: int, seconds: float, share: Share) -> bytearray | memoryview:
    """The JSON body, counted into `share` as it arrives; 413 over `limit`, 408 if it does not arrive within
    `seconds` (time spent waiting for room in the budget is the server's, not counted)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type must be application/json (got {content_type or 'none'})")
    expected = declared_length(request)
    if expected is not None and expected > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
    # Memory is taken as the body arrives, never at the declared size up front: a client that declares
    # 128 MiB and sends nothing must hold nothing. Small bodies grow a bytearray (by realloc, in the heap
    # pages cds_hooks/server/allocator.py keeps); a large declared body is filled into an anonymous map of its
    # size, whose pages become resident only as they are written, so it is never copied as it grows, and several
    # growing side by side do not fragment the heap.
    mapped = expected if expected is not None and expected > MAPPED_BODY_BYTES else None
    body: bytearray | mmap.mmap = mmap.mmap(-1, mapped) if mapped else bytearray()
    size = 0
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        async with asyncio.timeout_at(deadline) as timer:
            async for chunk in request.stream():
                if size + len(chunk) > (mapped or limit):
                    raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
                timer.reschedule(None)
                deadline += await share.take(len(chunk))
                timer.reschedule(deadline)
                if isinstance(body, bytearray):
                    body += chunk
                else:
                    body[size:size + len(chunk)] = chunk
                size += len(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {seconds:g} seconds") from None
    return body if isinstance(body, bytearray) else memoryview(body)[:size]


def declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared and declared.isdigit() else None


def audiences_for(request: Request, settings: Settings) -> list[str]:
    """The URLs a client JWT's `aud` may name for this request: the URL invoked.

    The Host header is the client's to choose: trusted, it would let a token the EHR minted for another CDS
    service be replayed here. So: the configured public URL (behind a proxy), the URL of the socket the
    request actually arrived on, and the Host-derived URL only in development (no public URL, loopback Host).
    """
    path = request.url.path
    audiences = []
    if settings.public_base_url:
        audiences.append(settings.public_base_url.rstrip("/") + path)
    server = request.scope.get("server")
    scheme = request.url.scheme
    if server and server[1] is not None:
        host, port = server
        host = f"[{host}]" if ":" in host else host
        audiences.append(f"{scheme}://{host}:{port}{path}")
        if (scheme, port) in (("http", 80), ("https", 443)):
            audiences.append(f"{scheme}://{host}{path}")
    if not settings.public_base_url and is_loopback_host(request.url.hostname or ""):
        audiences.append(str(request.url.replace(query="")))
    return audiences
