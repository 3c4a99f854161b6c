"""The service's Prometheus metrics, in a registry of their own (one per app, no global state)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Pipeline stages run from milliseconds (retrieval) to tens of seconds (generation on a CPU).
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("whyrec_requests", "HTTP requests by route, method and status.", ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("whyrec_request_seconds", "HTTP request latency by route.", ["route"], buckets=_STAGE_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("whyrec_stage_seconds", "Pipeline stage latency: retrieval, ranking, explanation.", ["stage"], buckets=_STAGE_BUCKETS, registry=self.registry)
        self.explanations = Counter("whyrec_explanations", "Explanations served, by source (llm or template).", ["source"], registry=self.registry)
        self.explanation_fallbacks = Counter(
            "whyrec_explanation_fallbacks",
            "Template sentences shown instead of the LLM's text, by reason: llm_unavailable, llm_deadline_exceeded, llm_output_unparseable, ungrounded.",
            ["reason"],
            registry=self.registry,
        )
        self.queued_writes = Gauge(
            "whyrec_queued_writes", "Impressions, events and feedback waiting for the database (it was unavailable).", registry=self.registry
        )
        self.explanation_lookups = Gauge(
            "whyrec_explanation_lookups", "Explanation lookups since start: found in memory, in the explanation store, or not (generated).", ["result"], registry=self.registry
        )
        self.explanation_hit_rate = Gauge("whyrec_explanation_hit_rate", "Share of explanation lookups found in memory or in the store.", registry=self.registry)
        self.background_depth = Gauge("whyrec_background_queue_depth", "Shoppers waiting for the background explainer.", registry=self.registry)
        self.background_running = Gauge("whyrec_background_running", "Background explainer jobs running now (depth counts those still waiting).", registry=self.registry)
        self.background_lag = Gauge("whyrec_background_lag_seconds", "How long the oldest queued background job has waited.", registry=self.registry)
        self.background_jobs = Gauge("whyrec_background_jobs", "Background explainer jobs since start: done, stale (history changed), refused (queue full), failed, interrupted (a batch stopped for a shopper on the page, and finished later).", ["result"], registry=self.registry)
        self.feedback = Counter("whyrec_feedback", "Feedback received, by kind.", ["kind"], registry=self.registry)
        self.events = Counter("whyrec_events", "Shopper events received, by kind.", ["kind"], registry=self.registry)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
