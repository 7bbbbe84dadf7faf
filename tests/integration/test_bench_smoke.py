"""Every ``rentahal bench`` scenario at a tiny size, so the bench keeps working.

A smoke test: it checks that each scenario starts what it needs, loads it, stops
it and emits a well-formed JSON report. No timing assertion (figures on a shared
CI machine mean nothing).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from rentahal.bench import bench_app
from rentahal.bench.procs import Cluster

runner = CliRunner()


def _bench(*args: str) -> dict[str, Any]:
    result = runner.invoke(bench_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["scenario"] == args[0]
    assert report["rows"] and report["machine"]["cpus"] >= 1
    return report


@pytest.mark.redis
def test_overhead_with_vs_url() -> None:
    # Another OpenAI-compatible gateway: a reference worker's /v1/chat/completions.
    with Cluster() as cluster:
        (other,) = cluster.start_workers(1)
        report = _bench(
            "overhead",
            "--concurrency",
            "1,2",
            "--duration",
            "0.3",
            "--vs-url",
            f"http://{other.address}",
        )
    paths = {row[0] for row in report["rows"]}
    # One run: memory mode, /v1 at default settings, Redis mode, and the other gateway.
    assert paths == {
        "direct upstream",
        "ws",
        "/v1",
        "/v1 defaults",
        "ws redis",
        "/v1 redis",
        f"vs http://{other.address}",
    }
    ledger = report["data"]["ledger"]
    assert set(ledger) == {"memory", "defaults", "redis"}
    for node in ledger.values():  # every node's answers are in its own ledger
        assert node["rows"] >= node["answered"] > 0
    redis_row = next(row for row in report["rows"] if row[0] == "ws redis")
    assert redis_row[-1] is not None and redis_row[-1] > 0  # x memory, side by side
    targets = {t["name"] for t in report["targets"]}
    assert {"added p50 at c1 (ws)", "added p50 at c1 (/v1)", "/v1 defaults errors at c2"} <= targets


def test_overhead_refuses_remote_vs_url() -> None:
    result = runner.invoke(bench_app, ["overhead", "--vs-url", "http://example.com"])
    assert result.exit_code == 2


def test_capacity() -> None:
    report = _bench(
        "capacity", "--workers", "2", "--latency-ms", "20", "--caps", "1", "--duration", "0.5"
    )
    assert report["data"]["cap_1"]["ok"] > 0
    assert report["data"]["cap_1"]["direct_per_s"] > 0  # the workers loaded directly too
    assert report["data"]["cap_1"]["direct_errors"] == 0
    assert report["data"]["cap_1"]["at_cap_per_s"] > 0  # and with exactly cap calls in flight
    assert report["data"]["cap_1"]["at_cap_errors"] == 0


def test_connections() -> None:
    report = _bench("connections", "--clients", "20", "--connect-timeout", "30")
    assert report["data"]["connected"] == 20
    assert report["data"]["received"] == 20


def test_isolation() -> None:
    report = _bench(
        "isolation",
        "--chat-clients",
        "2",
        "--imagine-clients",
        "2",
        "--imagine-latency-ms",
        "300",
        "--duration",
        "0.5",
    )
    assert report["data"]["alone"]["ok"] > 0


@pytest.mark.redis
def test_nodes() -> None:
    result = runner.invoke(bench_app, ["nodes", "--clients", "4", "--duration", "0.5", "--json"])
    if result.exit_code == 2:  # multi-node mode missing: a clear message, never numbers
        assert "multi-node mode is not functional" in result.output
        return
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["data"]["ledger_rows"] == report["data"]["answered"] > 0


def test_federation() -> None:
    report = _bench("federation", "--concurrency", "1", "--duration", "0.5")
    data = report["data"]
    assert data["a_done"] == data["b_rows_for_a"] == data["answered_through_a"] > 0
