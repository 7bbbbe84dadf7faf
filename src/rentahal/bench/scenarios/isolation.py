"""``isolation``: chat latency while slow imagine jobs saturate their workers, against chat
alone. With realms the imagine realm has its own queue; without them (legacy single
queue) this shows how the legacy queue behaves."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from rentahal.bench.load import (
    Client,
    LoadError,
    WSQueryClient,
    close_clients,
    closed_loop,
    open_clients,
)
from rentahal.bench.procs import BrokerConfig, Cluster, chat_worker, imagine_worker
from rentahal.bench.report import ScenarioReport
from rentahal.bench.scenarios._common import Phases, fmt, ratio, ws_url


@dataclass
class IsolationOptions:
    """Knobs of the ``isolation`` scenario."""

    chat_clients: int = 4
    chat_latency_ms: float = 20.0
    imagine_clients: int = 16
    imagine_latency_ms: float = 1000.0
    duration_s: float = 8.0
    warmup_s: float = 0.5
    max_requests: int = 100_000


async def _flood(clients: list[WSQueryClient], stop: asyncio.Event, counts: dict[str, int]) -> None:
    async def one(client: WSQueryClient) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(120):
                    await client.request()
                counts["ok"] += 1
            except (LoadError, TimeoutError) as exc:
                counts["errors"] += 1
                counts.setdefault("first_error", str(exc))  # type: ignore[arg-type]
                await asyncio.sleep(0.05)
            except Exception:  # socket closed under us at the end
                return

    await asyncio.gather(*(one(c) for c in clients))


async def run(opts: IsolationOptions, phases: Phases, command: str) -> ScenarioReport:
    """Run the scenario and build its report."""
    report = ScenarioReport(
        scenario="isolation",
        command=command,
        columns=["chat load", "queries/s", "p50 ms", "p99 ms", "errors", "p50 x alone"],
    )
    with Cluster() as cluster:
        phases.start("starting workers and broker")
        (chat,) = cluster.start_workers(1, latency_ms=opts.chat_latency_ms, prefix="chat")
        (imagine,) = cluster.start_workers(
            1, latency_ms=opts.imagine_latency_ms, max_concurrency=1, prefix="imagine"
        )
        cluster.seed(
            [
                chat_worker(chat, max_concurrency=max(16, 2 * opts.chat_clients)),
                imagine_worker(imagine, max_concurrency=1),
            ]
        )
        broker = cluster.start_broker(BrokerConfig())
        url = ws_url(broker)
        chat_clients: list[Client] = await open_clients(
            lambda: WSQueryClient.open(url), opts.chat_clients
        )
        flooders = [
            await WSQueryClient.open(url, query_type="imagine", prompt="a slow benchmark picture")
            for _ in range(opts.imagine_clients)
        ]
        try:
            tick = phases.start("chat alone")
            alone = await closed_loop(
                chat_clients,
                "chat alone",
                duration_s=opts.duration_s,
                max_requests=opts.max_requests,
                warmup_s=opts.warmup_s,
                on_progress=tick,
            )
            stop = asyncio.Event()
            counts: dict[str, int] = {"ok": 0, "errors": 0}
            flood = asyncio.create_task(_flood(flooders, stop, counts))
            await asyncio.sleep(1.0)  # the imagine queue fills up
            tick = phases.start("chat while imagine is saturated")
            loaded = await closed_loop(
                chat_clients,
                "chat + imagine flood",
                duration_s=opts.duration_s,
                max_requests=opts.max_requests,
                warmup_s=opts.warmup_s,
                on_progress=tick,
            )
            stop.set()
        finally:
            await close_clients(chat_clients)
            await close_clients(flooders)
            if "flood" in locals():
                flood.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flood
        phases.done()

    realms = {
        "chat": next((c.realm for c in chat_clients if isinstance(c, WSQueryClient)), None),
        "imagine": next((c.realm for c in flooders if c.realm), None),
    }
    slowdown = ratio(loaded.p50_ms, alone.p50_ms)
    for res in (alone, loaded):
        report.add_row(
            res.label,
            res.throughput,
            res.p50_ms,
            res.p99_ms,
            res.errors,
            ratio(res.p50_ms, alone.p50_ms),
        )
    report.data = {
        "alone": alone.summary(),
        "with_imagine": loaded.summary(),
        "queues": realms,
        "imagine_done": counts["ok"],
        "imagine_errors": counts["errors"],
        "imagine_first_error": counts.get("first_error", ""),
    }
    report.target(
        "chat p50 under imagine load",
        "within 10% of chat alone",
        fmt(None if slowdown is None else (slowdown - 1) * 100, "%", 1),
        None if slowdown is None else slowdown <= 1.10,
    )
    report.notes += [
        f"{opts.imagine_clients} clients keep imagine jobs of {opts.imagine_latency_ms:g} ms "
        f"queued for one imagine worker with max_concurrency 1 "
        f"({counts['ok']} finished, {counts['errors']} errors during the run).",
        f"Chat: {opts.chat_clients} closed-loop clients on a worker of "
        f"{opts.chat_latency_ms:g} ms.",
        f"Queues the broker reported (query_queued.realm): chat -> {realms['chat']}, "
        f"imagine -> {realms['imagine']}"
        + (" (one shared legacy queue)" if realms["chat"] == realms["imagine"] else "")
        + ".",
    ]
    report.ok = alone.ok > 0 and loaded.ok > 0
    return report
