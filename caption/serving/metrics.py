"""What the caption server exposes at ``/metrics``, in Prometheus's text format (``prometheus_client``).

Each service has a registry of its own, so that several services in one process (tests) do not share counts.
``surface`` is ``gradio`` (the page and gradio_client, through Gradio's queue) or ``http`` (``/v1/caption``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SURFACES = ("gradio", "http")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "caption_requests", "Requests answered, by surface, outcome (ok, error, refused) and error kind",
            ["surface", "outcome", "error_kind"], registry=self.registry)
        self.latency = Histogram(
            "caption_request_seconds", "Seconds from a request reaching the service to its answer",
            ["surface"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("caption_requests_in_flight", "Requests being read, queued or captioned",
                               ["surface"], registry=self.registry)
        self.batch_size = Histogram("caption_batch_size", "Requests captioned together in one batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("caption_batch_seconds", "Seconds one batch took to caption",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.mixed_batches = Counter("caption_mixed_batches",
                                     "Batches that held requests of both surfaces", registry=self.registry)
        self.queue_depth = Gauge("caption_queue_depth", "Checked requests waiting for the next batch",
                                 registry=self.registry)
        self.upload_bytes = Gauge("caption_upload_bytes",
                                  "Bytes of uploads held: on disk, and on their way in",
                                  registry=self.registry)
        self.upload_budget = Gauge("caption_upload_budget_bytes", "The most bytes uploads may hold",
                                   registry=self.registry)
        for surface in SURFACES:  # every series from the start, so a scraper sees zeros, not gaps
            self.latency.labels(surface)
            self.in_flight.labels(surface)

    def track(self, queue_depth: Callable[[], float], upload_bytes: Callable[[], float],
              upload_budget: float) -> None:
        """Read the live values when scraped."""
        self.queue_depth.set_function(queue_depth)
        self.upload_bytes.set_function(upload_bytes)
        self.upload_budget.set(upload_budget)

    def answered(self, surface: str, answer: dict, seconds: float | None = None) -> None:
        """Count ``answer``; ``seconds`` None: a request turned away before it reached the service (an upload
        that did not fit, a missing token), which has no latency to speak of."""
        kind = answer.get("error_kind") or ""
        outcome = "refused" if kind == "busy" else "error" if "error" in answer else "ok"
        self.requests.labels(surface, outcome, kind).inc()
        if seconds is not None:
            self.latency.labels(surface).observe(seconds)

    def batched(self, surfaces: list[str], seconds: float) -> None:
        self.batch_size.observe(len(surfaces))
        self.batch_seconds.observe(seconds)
        if len(set(surfaces)) > 1:
            self.mixed_batches.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
