"""Discovery and the hook calls (CDS Hooks 2.0 §2, §3)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from cds_hooks.protocol.calls import answer
from cds_hooks.protocol.dependencies import BudgetShare, Client, HookBody, LogFields, RuntimeDep, Service
from cds_hooks.protocol.routes import json_response

router = APIRouter()


@router.get("/cds-services", summary="Discovery: the services and their prefetch templates")
async def discovery(rt: RuntimeDep, _: Client) -> Response:
    return json_response({"services": rt.services.discovery()})


@router.post("/cds-services/{service_id}", summary="Call a service (its hook: see discovery)")
async def call_service(service: Service, client: Client, body: HookBody, share: BudgetShare, rt: RuntimeDep,
                       fields: LogFields) -> Response:
    request = service.decode(body)
    return json_response({"cards": await answer(rt, service, request, client, share, fields)})
