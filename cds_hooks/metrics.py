"""Prometheus metrics, served at /metrics. A registry per app, so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mscc_alert_requests", "HTTP requests by route and status", ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mscc_alert_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.cards = Counter(
            "mscc_alert_cards", "Cards returned by indicator", ["indicator"], registry=self.registry
        )
        self.suppressed = Counter(
            "mscc_alert_cards_suppressed", "Cards not shown: a clinician had already acted on the same card",
            ["indicator"], registry=self.registry,
        )
        self.fhir_fetches = Counter(
            "mscc_alert_fhir_fetches", "Prefetch keys fetched from the FHIR server, by outcome", ["outcome"],
            registry=self.registry,
        )
