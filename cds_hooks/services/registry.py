"""The CDS services this server offers. Discovery, the routes, `mscc-alert evaluate` and the tests all read
this registry: adding a hook is its service module plus one line in SERVICES."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from cards.policy import Policy
from cds_hooks.protocol.fhir_client import FetchLimits
from cds_hooks.protocol.fhir_servers import FhirServerPolicy
from cds_hooks.services.base import CdsService, RequestLimits
from cds_hooks.services.orders import OrderSelectService, OrderSignService
from cds_hooks.services.patient_view import PatientViewService
from cds_hooks.settings import Settings
from fhir_mapping.terminology import Terminology

SERVICES: tuple[type[CdsService], ...] = (
    PatientViewService,
    OrderSelectService,
    OrderSignService,
)


class Registry(Mapping[str, CdsService]):
    """The services by id, in discovery order."""

    def __init__(self, services: list[CdsService]) -> None:
        self._by_id = {service.id: service for service in services}
        if len(self._by_id) != len(services):
            raise ValueError("two CDS services share an id")

    def __getitem__(self, service_id: str) -> CdsService:
        return self._by_id[service_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def for_hook(self, hook: str) -> CdsService | None:
        """The service for a hook (each hook has one here)."""
        return next((s for s in self._by_id.values() if s.hook == hook), None)

    def discovery(self) -> list[dict[str, Any]]:
        return [service.discovery() for service in self._by_id.values()]


def build_registry(terminology: Terminology, policy: Policy, limits: FetchLimits,
                   servers: FhirServerPolicy | None = None, request_limits: RequestLimits | None = None) -> Registry:
    return Registry([service(terminology, policy, limits, servers, request_limits) for service in SERVICES])


def registry_from_settings(settings: Settings, terminology: Terminology, *, open_mode: bool) -> Registry:
    """The services as `serve` runs them (open mode: no client authentication, so loopback FHIR servers only
    unless MSCC_ALERT_FHIR_SERVERS names more)."""
    return build_registry(terminology, settings.policy(), settings.fetch_limits(),
                          settings.fhir_server_policy(open_mode=open_mode),
                          RequestLimits(max_draft_orders=settings.max_draft_orders))
