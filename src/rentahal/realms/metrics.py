"""RealmMetricsCollector: Prometheus metrics per realm (names start with ``rentahal_``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from rentahal.models import Result
from rentahal.realms.router import RouterStats

PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(slots=True)
class RealmLive:
    """Live figures of one realm, sampled when metrics are read."""

    realm: str
    queue_depth: int
    in_flight: int
    connections: int
    workers: list[tuple[str, float]]


class _RouterCollector(Collector):
    def __init__(self, stats: Callable[[], RouterStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, value, doc in (
            ("rentahal_cross_realm_queries", stats.cross_realm_queries, "Queries run cross-realm"),
            ("rentahal_backup_routes", stats.backup_routes, "Queries routed to a backup realm"),
            ("rentahal_failed_routes", stats.failed_routes, "Queries no realm could take"),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family


class RealmMetricsCollector:
    """Counters and histograms fed by finished queries; gauges sampled on scrape."""

    def __init__(self, router_stats: Callable[[], RouterStats]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queries = Counter("rentahal_queries", "Completed queries", ["realm"], registry=r)
        self.errors = Counter("rentahal_errors", "Failed queries", ["realm"], registry=r)
        self.cancelled = Counter("rentahal_cancelled", "Cancelled queries", ["realm"], registry=r)
        self.processing = Histogram(
            "rentahal_processing_time_seconds",
            "Billed worker time of completed queries",
            ["realm"],
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "rentahal_queue_wait_seconds",
            "Time queries waited before a worker took them",
            ["realm"],
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.connections = Gauge("rentahal_connections", "Open WebSockets", ["realm"], registry=r)
        self.queue_depth = Gauge("rentahal_queue_depth", "Waiting queries", ["realm"], registry=r)
        self.in_flight = Gauge("rentahal_in_flight", "Running queries", ["realm"], registry=r)
        self.worker_health = Gauge(
            "rentahal_worker_health", "Worker health score", ["realm", "worker"], registry=r
        )
        r.register(_RouterCollector(router_stats))
        self._totals: defaultdict[str, dict[str, float]] = defaultdict(
            lambda: {"processed": 0, "errors": 0, "cancelled": 0, "processing_time_s": 0.0}
        )

    def observe(self, result: Result) -> None:
        """Count a finished query."""
        realm, totals = result.realm, self._totals[result.realm]
        if result.status == "done":
            self.queries.labels(realm).inc()
            self.processing.labels(realm).observe(result.processing_time)
            totals["processed"] += 1
            totals["processing_time_s"] += result.processing_time
        elif result.status == "failed":
            self.errors.labels(realm).inc()
            totals["errors"] += 1
        else:
            self.cancelled.labels(realm).inc()
            totals["cancelled"] += 1
        self.queue_wait.labels(realm).observe(result.queue_wait)

    def sample(self, live: list[RealmLive]) -> None:
        """Set the gauges from live figures."""
        self.worker_health.clear()
        for row in live:
            self.queue_depth.labels(row.realm).set(row.queue_depth)
            self.in_flight.labels(row.realm).set(row.in_flight)
            self.connections.labels(row.realm).set(row.connections)
            for worker, health in row.workers:
                self.worker_health.labels(row.realm, worker).set(health)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def totals(self, realm: str) -> dict[str, float]:
        """Processed, errors, cancelled and processing time of one realm."""
        return dict(self._totals[realm])

    def get_summary_metrics(self) -> dict[str, Any]:
        """Totals over all realms with error rate and mean processing time."""
        processed = sum(t["processed"] for t in self._totals.values())
        errors = sum(t["errors"] for t in self._totals.values())
        time_s = sum(t["processing_time_s"] for t in self._totals.values())
        finished = processed + errors
        return {
            "total_queries": processed,
            "total_errors": errors,
            "error_rate": errors / finished if finished else 0.0,
            "avg_processing_time_s": time_s / processed if processed else 0.0,
            "realms": {name: dict(t) for name, t in self._totals.items()},
        }
