"""``deploy/grafana/rentahal.json`` against a live broker's ``/metrics``.

Every metric a panel or a template variable queries must be exported (a renamed
metric breaks the test, not the operator's dashboard), and every per-realm figure
the broker exports must have a panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import WSClient
from tests.support.servers import BrokerServer

# Set-up starts four worker processes and a broker: slow on a busy two-core machine.
pytestmark = pytest.mark.timeout(120)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "rentahal.json"
METRIC = re.compile(r"\brentahal_[a-zA-Z0-9_]+")
# The series a family of each type is scraped as.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def _queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text of the dashboard: panel targets and template variable queries."""
    texts = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            texts.append(query["query"] if isinstance(query, dict) else query)
    return texts


def _exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Series names the exposition declares, and each family's label names (from samples)."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
        labels[family.name] = {k for s in family.samples for k in s.labels if k != "le"}
    return names, labels


async def test_every_metric_a_panel_queries_is_exported(broker: BrokerServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    user = await WSClient.connect(broker.ws_url)
    try:
        await user.connect_sequence()
        assert (await user.query("fill the counters"))["type"] == "query_result"
    finally:
        await user.close()
    async with httpx.AsyncClient(base_url=broker.url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    exported, labels = _exported(text)
    queried = {name for expr in _queries(dashboard) for name in METRIC.findall(expr)}
    assert queried, "the dashboard queries no rentahal metric"
    assert sorted(queried - exported) == []
    # The answered chat query left samples the panels draw.
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {"rentahal_queries_total", "rentahal_processing_time_seconds_bucket"} <= samples
    # A panel per realm figure: each family with a realm label is on the dashboard.
    # (``*_created`` are start timestamps of counters and histograms, not figures.)
    per_realm = {
        family
        for family, names in labels.items()
        if "realm" in names and not family.endswith("_created")
    }
    assert per_realm, labels
    undrawn = [f for f in per_realm if not any(name.startswith(f) for name in queried)]
    assert undrawn == []


def test_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "realm"} <= names
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            if "{{realm}}" in target["legendFormat"]:
                assert 'realm=~"$realm"' in expr, expr
