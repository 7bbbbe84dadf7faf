"""``nodes``: the same WebSocket load on one broker node and on two sharing Redis and
one database. On a 2-core machine this shows correctness and overhead, not scale-out."""

from __future__ import annotations

from dataclasses import dataclass

from rentahal.bench.load import (
    Client,
    LoadResult,
    WSQueryClient,
    close_clients,
    closed_loop,
    open_clients,
)
from rentahal.bench.procs import BenchSetupError, BrokerConfig, Cluster, chat_worker
from rentahal.bench.report import ScenarioReport
from rentahal.bench.scenarios._common import Phases, fmt, ledger_rows, ratio, ws_url


@dataclass
class NodesOptions:
    """Knobs of the ``nodes`` scenario."""

    clients: int = 32
    latency_ms: float = 0.0
    duration_s: float = 5.0
    warmup_s: float = 0.5
    max_requests: int = 100_000


async def run(opts: NodesOptions, phases: Phases, command: str) -> ScenarioReport:
    """Run the scenario and build its report."""
    report = ScenarioReport(
        scenario="nodes",
        command=command,
        columns=["nodes", "clients", "queries/s", "p50 ms", "p99 ms", "errors", "x 1 node"],
    )
    with Cluster() as cluster:
        phases.start("starting redis, worker and broker node A")
        redis = cluster.start_redis()
        redis_url = f"redis://{redis.address}/0"
        (worker,) = cluster.start_workers(1, latency_ms=opts.latency_ms)
        cluster.seed([chat_worker(worker, max_concurrency=max(256, 2 * opts.clients))])
        config = BrokerConfig(redis_url=redis_url)
        try:
            node_a = cluster.start_broker(config, name="node-a")
        except BenchSetupError as exc:
            raise BenchSetupError(f"multi-node mode is not functional: {exc}") from exc
        results: list[LoadResult] = []
        answered = 0

        async def measure(label: str, urls: list[str]) -> LoadResult:
            nonlocal answered
            shares = [urls[i % len(urls)] for i in range(opts.clients)]
            it = iter(shares)
            clients: list[Client] = await open_clients(
                lambda: WSQueryClient.open(next(it)), opts.clients
            )
            tick = phases.start(label)
            try:
                res = await closed_loop(
                    clients,
                    label,
                    duration_s=opts.duration_s,
                    max_requests=opts.max_requests,
                    warmup_s=opts.warmup_s,
                    on_progress=tick,
                )
            finally:
                await close_clients(clients)
            answered += res.answered
            return res

        results.append(await measure("1 node", [ws_url(node_a)]))
        phases.start("starting broker node B")
        try:
            node_b = cluster.start_broker(config, name="node-b")
        except BenchSetupError as exc:
            raise BenchSetupError(f"multi-node mode is not functional: {exc}") from exc
        results.append(await measure("2 nodes", [ws_url(node_a), ws_url(node_b)]))
        phases.done()
        rows = ledger_rows(cluster.db_path)

    one = results[0]
    for n, res in enumerate(results, start=1):
        report.add_row(
            n,
            res.concurrency,
            res.throughput,
            res.p50_ms,
            res.p99_ms,
            res.errors,
            ratio(res.throughput, one.throughput),
        )
    scale = ratio(results[1].throughput, one.throughput)
    report.data = {
        "results": [r.summary() for r in results],
        "ledger_rows": rows,
        "answered": answered,
    }
    report.target(
        "2 nodes / 1 node throughput", "reported (no target on 2 cores)", fmt(scale, "x"), None
    )
    report.target(
        "every answered query recorded once", f"{answered} rows", f"{rows} rows", rows == answered
    )
    report.notes += [
        "Both nodes, the worker, Redis and the load generator share the machine's CPUs: on a "
        "2-core machine a second node cannot add CPU, so the ratio shows the cost of "
        "coordination through Redis and that results reach the right node, not scale-out.",
        "Clients are split evenly over the nodes in the 2-node run; one shared SQLite file.",
    ]
    report.notes += [
        f"{r.label}: {r.errors} errors, first: {r.first_error}" for r in results if r.errors
    ]
    report.notes += [
        f"{r.label}: {r.warmup_errors} warm-up errors, first: {r.first_warmup_error}"
        for r in results
        if r.warmup_errors
    ]
    report.ok = all(r.ok > 0 and r.errors == 0 for r in results) and rows == answered
    return report
