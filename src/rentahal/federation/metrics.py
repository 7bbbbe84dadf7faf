"""Federation figures: queries each way, failures, latency (also as Prometheus metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rentahal.federation.peers import Peer


@dataclass(slots=True)
class FederationMetrics:
    """Totals of this installation's cross-federation traffic."""

    queries_out: int = 0
    queries_in: int = 0
    failures: int = 0
    latency_s_total: float = 0.0
    answered_out: int = 0

    def observe_out(self, seconds: float) -> None:
        """A query answered by a peer after ``seconds``."""
        self.answered_out += 1
        self.latency_s_total += seconds

    def view(self) -> dict[str, Any]:
        """The seed's ``federation_metrics`` plus ours."""
        return {
            "cross_federation_queries": {"out": self.queries_out, "in": self.queries_in},
            "failures": self.failures,
            "avg_latency_ms": (
                round(1000 * self.latency_s_total / self.answered_out, 2)
                if self.answered_out
                else None
            ),
        }


class FederationCollector(Collector):
    """``rentahal_federation_*`` metrics, read on each scrape."""

    def __init__(self, totals: FederationMetrics, peers: Callable[[], list[Peer]]) -> None:
        self.totals = totals
        self.peers = peers

    def collect(self) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            "rentahal_cross_federation_queries",
            "Queries sent to (out) or run for (in) other installations",
            labels=["direction"],
        )
        queries.add_metric(["out"], self.totals.queries_out)
        queries.add_metric(["in"], self.totals.queries_in)
        yield queries
        failures = CounterMetricFamily(
            "rentahal_federation_failures", "Calls to other installations that failed"
        )
        failures.add_metric([], self.totals.failures)
        yield failures
        up = GaugeMetricFamily(
            "rentahal_federation_peer_up", "1 when a peer is active", labels=["peer"]
        )
        rtt = GaugeMetricFamily(
            "rentahal_federation_peer_rtt_ms", "Last round trip to a peer", labels=["peer"]
        )
        for peer in self.peers():
            up.add_metric([peer.federation_id], 1.0 if peer.state == "active" else 0.0)
            if peer.rtt_ms is not None:
                rtt.add_metric([peer.federation_id], peer.rtt_ms)
        yield up
        yield rtt
