"""Prometheus metrics, served at /metrics. A registry per app, so several apps (tests) never collide.

With several workers (`serve --workers N`) each worker is its own process with its own counters, and a scrape
reaches one of them. `mscc-alert serve` then runs prometheus_client in multiprocess mode: it points
PROMETHEUS_MULTIPROC_DIR at a private temporary folder before the workers start (and removes it when they stop),
every worker writes its values there, and /metrics in any worker sums them all.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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

    def exposition(self) -> bytes:
        """The text format of every worker's metrics (multiprocess mode) or of this app's."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
