"""Prometheus metrics, in a registry of the app's own (no process-global state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recommender.serving.service import Service

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("recommender_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("recommender_request_duration_seconds", "Time to answer, by route",
                                 ["route", "method"], buckets=BUCKETS, registry=self.registry)
        self.registry.register(_ServiceCollector(service))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServiceCollector:
    """Read at scrape time: index size and the precomputed-list cache."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self):
        counters = self.service.counters
        lookups = counters.hits + counters.misses
        yield GaugeMetricFamily("recommender_index_articles", "Articles in the serving index",
                                value=self.service.snapshot.state.vectors.count if self.service.ready else 0)
        yield CounterMetricFamily("recommender_cache_hits", "Related requests served from precomputed lists",
                                  value=counters.hits)
        yield CounterMetricFamily("recommender_cache_misses", "Related requests computed live", value=counters.misses)
        yield GaugeMetricFamily("recommender_cache_hit_ratio", "hits / (hits + misses)",
                                value=counters.hits / lookups if lookups else 0.0)
        yield CounterMetricFamily("recommender_lists_recomputed", "Lists recomputed after writes, in the background",
                                  value=self.service.lists.recomputed)
        yield CounterMetricFamily("recommender_stale_served", "Cached lists served because the live ranking failed",
                                  value=counters.stale)
        audience = self.service.audience
        yield CounterMetricFamily("recommender_events_stored", "Readers' events stored (POST /v1/events)",
                                  value=audience.events_in)
        yield CounterMetricFamily("recommender_events_rejected", "Readers' events rejected, each with its reason",
                                  value=audience.events_rejected)
