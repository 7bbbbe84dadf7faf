"""``capacity``: W workers of latency L; achieved throughput against the ideal W*cap/L."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rentahal.bench.load import (
    CHAT_PROMPT,
    Client,
    HttpClient,
    LoadResult,
    WSQueryClient,
    close_clients,
    closed_loop,
    open_clients,
)
from rentahal.bench.procs import BrokerConfig, Child, Cluster, chat_worker
from rentahal.bench.report import ScenarioReport
from rentahal.bench.scenarios._common import Phases, ledger_rows, ws_url


@dataclass
class CapacityOptions:
    """Knobs of the ``capacity`` scenario."""

    workers: int = 4
    latency_ms: float = 100.0
    caps: list[int] = field(default_factory=lambda: [1, 4])
    duration_s: float = 8.0
    warmup_s: float = 1.0
    max_requests: int = 100_000


def _predict_client(url: str, body: dict[str, Any]) -> Callable[[], Awaitable[Client]]:
    async def ready() -> Client:
        return HttpClient(url, body)

    return ready


async def _direct(
    opts: CapacityOptions, cap: int, workers: list[Child], per_slot: int
) -> LoadResult:
    """The same load straight to the workers' ``/predict``, ``per_slot`` x cap clients each.

    With 2 per slot a call always waits inside each worker (its own HTTP work overlaps
    the model time: what the workers deliver at best); with 1 per slot exactly cap calls
    are in flight, as the broker keeps them, with no dispatcher between (what a broker
    of no cost would get from them)."""
    body = {"prompt": CHAT_PROMPT, "type": "chat", "model_type": "worker_node"}
    clients: list[Client] = []
    for worker in workers:
        url = f"http://{worker.address}/predict"
        clients += await open_clients(_predict_client(url, body), per_slot * cap)
    try:
        return await closed_loop(
            clients,
            f"direct cap {cap}, {per_slot} per slot",
            duration_s=opts.duration_s,
            max_requests=opts.max_requests,
            warmup_s=opts.warmup_s,
        )
    finally:
        await close_clients(clients)


async def run(opts: CapacityOptions, phases: Phases, command: str) -> ScenarioReport:
    """Run the scenario and build its report."""
    report = ScenarioReport(
        scenario="capacity",
        command=command,
        columns=[
            "workers x cap",
            "latency ms",
            "clients",
            "ideal /s",
            "achieved /s",
            "% of ideal",
            "direct /s",
            "% of direct",
            "at cap /s",
            "% of at cap",
            "gap ms",
            "p50 ms",
            "p99 ms",
            "errors",
            "ledger ok",
        ],
    )
    for cap in opts.caps:
        with Cluster() as cluster:
            phases.start(f"starting {opts.workers} workers (cap {cap}) and broker")
            workers = cluster.start_workers(
                opts.workers, latency_ms=opts.latency_ms, max_concurrency=cap
            )
            cluster.seed([chat_worker(w, max_concurrency=cap) for w in workers])
            broker = cluster.start_broker(BrokerConfig())
            # Twice the slots: the queue never runs dry, so idle slots are the broker's fault.
            n_clients = 2 * opts.workers * cap
            clients: list[Client] = await open_clients(
                functools.partial(WSQueryClient.open, ws_url(broker)), n_clients
            )
            tick = phases.start(f"{opts.workers} workers x cap {cap}, {n_clients} clients")
            try:
                res = await closed_loop(
                    clients,
                    f"cap {cap}",
                    duration_s=opts.duration_s,
                    max_requests=opts.max_requests,
                    warmup_s=opts.warmup_s,
                    on_progress=tick,
                )
            finally:
                await close_clients(clients)
            rows = ledger_rows(cluster.db_path)
            phases.start(f"{opts.workers} workers x cap {cap} loaded directly")
            direct = await _direct(opts, cap, workers, per_slot=2)
            phases.start(f"{opts.workers} workers x cap {cap} loaded directly, at cap")
            at_cap = await _direct(opts, cap, workers, per_slot=1)
        ideal = opts.workers * cap * 1000.0 / opts.latency_ms
        # The steady rate: answers that ended within the window per second of it (the
        # drain after the window, when no more is sent, is not idle capacity).
        achieved = res.window_throughput
        share = 100 * achieved / ideal
        direct_rate = direct.window_throughput
        of_direct = 100 * achieved / direct_rate if direct_rate else None
        at_cap_rate = at_cap.window_throughput
        of_at_cap = 100 * achieved / at_cap_rate if at_cap_rate else None
        # Each slot's cycle beyond the worker's latency: hand-over plus the HTTP call's cost.
        gap_ms = 1000.0 * opts.workers * cap / achieved - opts.latency_ms if achieved else None
        report.add_row(
            f"{opts.workers} x {cap}",
            opts.latency_ms,
            n_clients,
            ideal,
            achieved,
            share,
            direct_rate,
            of_direct,
            at_cap_rate,
            of_at_cap,
            gap_ms,
            res.p50_ms,
            res.p99_ms,
            res.errors,
            rows >= res.answered,
        )
        report.data[f"cap_{cap}"] = {
            **res.summary(),
            "window_per_s": round(achieved, 1),
            "gap_ms": None if gap_ms is None else round(gap_ms, 2),
            "ideal_per_s": ideal,
            "direct_per_s": round(direct_rate, 1),
            "direct_errors": direct.errors,
            "at_cap_per_s": round(at_cap_rate, 1),
            "at_cap_errors": at_cap.errors,
            "ledger_rows": rows,
        }
        report.target(f"capacity cap {cap}", ">= 97% of W*cap/L", f"{share:.1f}%", share >= 97)
        report.ok = report.ok and res.ok > 0 and rows >= res.answered
    phases.done()
    report.notes += [
        "Clients = 2 x total slots, so a slot is idle only while the broker hands over a job.",
        "Achieved = answers that ended within the measured window (after the warm-up) per"
        " second of it; answers to requests sent before the window count, the drain after it"
        " does not.",
        "Gap = each slot's cycle (W x cap / achieved) minus the worker latency: the time from"
        " a slot freeing to its next job's model call, the HTTP exchange included.",
        "Worker latency is a sleep in the reference worker (--latency-ms); its --max-concurrency"
        " equals the broker's max_concurrency for it.",
        "Direct = the same workers loaded straight on /predict by 2 x cap clients each, after"
        " the broker run: what they deliver themselves (their own HTTP and engine work"
        " overlaps the model time), so % of direct is the broker's share of what was possible.",
        "At cap = the same workers loaded straight by 1 x cap clients each: exactly cap calls"
        " in flight per worker, as the broker keeps them, with nothing between; each cycle"
        " then pays the worker's own HTTP exchange. % of at cap is the broker's own cost.",
    ]
    return report
