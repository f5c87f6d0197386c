"""The service registry is the one list of services: discovery, the routes and the CLI all read it."""

from __future__ import annotations

from typing import Any

import pytest

from cds_hooks.protocol.fhir_client import FetchLimits
from cds_hooks.services.base import CdsService
from cds_hooks.services.registry import SERVICES, Registry, build_registry
from cds_hooks.settings import Settings
from fhir_mapping.terminology import load_terminology


def test_discovery_lists_exactly_the_registered_services(service_client: Any) -> None:
    listed = service_client.get("/cds-services").json()["services"]
    assert [s["id"] for s in listed] == [service.id for service in SERVICES]
    assert [s["hook"] for s in listed] == [service.hook for service in SERVICES]


def test_every_registered_service_is_routed(service_client: Any) -> None:
    for service in SERVICES:
        response = service_client.post(f"/cds-services/{service.id}", content=b"{}",
                                       headers={"Content-Type": "application/json"})
        assert response.status_code == 400, service.id  # routed to the service, which refused the empty body
    unknown = service_client.post("/cds-services/no-such-service", content=b"{}",
                                  headers={"Content-Type": "application/json"})
    assert unknown.status_code == 404


def test_each_hook_has_one_service_and_ids_are_unique() -> None:
    registry = build_registry(load_terminology(), Settings().policy(), FetchLimits())
    assert len({s.hook for s in registry.values()}) == len(registry) == len(SERVICES)
    for service in registry.values():
        assert registry.for_hook(service.hook) is service
    assert registry.for_hook("no-such-hook") is None


def test_two_services_with_one_id_are_refused() -> None:
    registry = build_registry(load_terminology(), Settings().policy(), FetchLimits())
    first: CdsService = next(iter(registry.values()))
    with pytest.raises(ValueError, match="share an id"):
        Registry([first, first])
