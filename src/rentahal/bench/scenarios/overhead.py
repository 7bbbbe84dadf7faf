"""``overhead``: the same closed-loop chat load sent to an instant worker directly and
through the broker (WebSocket and ``/v1/chat/completions``), plus ``--vs-url``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rentahal.bench.load import (
    Client,
    HttpClient,
    LoadResult,
    WSQueryClient,
    close_clients,
    closed_loop,
    open_clients,
    openai_client,
    predict_client,
)
from rentahal.bench.procs import BrokerConfig, Cluster, chat_worker
from rentahal.bench.report import ScenarioReport
from rentahal.bench.scenarios._common import Phases, fmt, ledger_rows, ratio, ws_url

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class OverheadOptions:
    """Knobs of the ``overhead`` scenario."""

    concurrency: list[int] = field(default_factory=lambda: [1, 16, 64])
    duration_s: float = 5.0
    warmup_s: float = 0.5
    max_requests: int = 100_000
    vs_url: str = ""
    vs_model: str = ""
    vs_api_key: str = ""
    model: str = ""


def check_vs_url(url: str) -> None:
    """The bench stays on loopback: refuse other hosts."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise ValueError(f"--vs-url must be http:// on loopback (127.0.0.1/localhost), got {url!r}")


async def _probe(client: HttpClient) -> str:
    """``""`` when the endpoint answers 200, else why it is unavailable."""
    try:
        status, body = await client.send()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    if status == 200:
        return ""
    return f"HTTP {status} {body[:120].decode(errors='replace')}"


async def run(opts: OverheadOptions, phases: Phases, command: str) -> ScenarioReport:
    """Run the scenario and build its report."""
    if opts.vs_url:
        check_vs_url(opts.vs_url)
    report = ScenarioReport(
        scenario="overhead",
        command=command,
        columns=[
            "path",
            "conc",
            "queries/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "x direct",
            "+p50 ms",
            "+p99 ms",
        ],
    )
    top = max(opts.concurrency)
    with Cluster() as cluster:
        phases.start("starting worker and broker")
        (worker,) = cluster.start_workers(1, latency_ms=0.0, max_concurrency=0)
        cluster.seed([chat_worker(worker, max_concurrency=max(256, top))])
        api_key = cluster.create_api_key(name="bench overhead")  # /v1 wants a bearer key
        broker = cluster.start_broker(BrokerConfig(max_connections=max(1000, 4 * top)))
        broker_openai = f"http://{broker.address}"
        unavailable = await _probe(openai_client(broker_openai, opts.model, api_key))
        vs_problem = (
            await _probe(openai_client(opts.vs_url, opts.vs_model, opts.vs_api_key))
            if opts.vs_url
            else ""
        )

        paths: list[tuple[str, Any]] = [
            ("direct /predict", lambda: _ready(predict_client(worker.address))),
            ("broker ws", lambda: WSQueryClient.open(ws_url(broker))),
        ]
        if not unavailable:
            paths.append(
                (
                    "broker /v1/chat",
                    lambda: _ready(openai_client(broker_openai, opts.model, api_key)),
                )
            )
        if opts.vs_url and not vs_problem:
            paths.append(
                (
                    "vs " + opts.vs_url,
                    lambda: _ready(openai_client(opts.vs_url, opts.vs_model, opts.vs_api_key)),
                )
            )

        results: dict[tuple[str, int], LoadResult] = {}
        broker_answered = 0
        for conc in opts.concurrency:
            for label, factory in paths:  # interleaved: the paths see the same machine state
                tick = phases.start(f"{label} x{conc}")
                clients: list[Client] = await open_clients(factory, conc)
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
                results[(label, conc)] = res
                if label.startswith("broker"):
                    broker_answered += res.answered
        phases.done()
        rows = ledger_rows(cluster.db_path)

    for conc in opts.concurrency:
        direct = results[("direct /predict", conc)]
        for label, _ in paths:
            res = results[(label, conc)]
            is_direct = res is direct
            report.add_row(
                label,
                conc,
                res.throughput,
                res.p50_ms,
                res.p99_ms,
                res.errors,
                None if is_direct else ratio(res.throughput, direct.throughput),
                None if is_direct else _diff(res.p50_ms, direct.p50_ms),
                None if is_direct else _diff(res.p99_ms, direct.p99_ms),
            )
    report.data = {
        "results": [r.summary() for r in results.values()],
        "ledger_rows": rows,
        "broker_answered": broker_answered,
        "openai_unavailable": unavailable,
        "vs_unavailable": vs_problem,
    }
    _targets(report, results, opts, unavailable)
    report.notes += _notes(unavailable, vs_problem, rows, broker_answered, opts)
    report.notes += [
        f"{r.label} x{r.concurrency}: {r.errors} errors, first: {r.first_error}"
        for r in results.values()
        if r.errors
    ]
    report.ok = all(r.ok > 0 for r in results.values()) and rows >= broker_answered
    return report


async def _ready(client: HttpClient) -> Client:
    return client


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _targets(
    report: ScenarioReport,
    results: dict[tuple[str, int], LoadResult],
    opts: OverheadOptions,
    unavailable: str,
) -> None:
    high = [c for c in opts.concurrency if 16 <= c <= 64]
    for label in ("broker ws", "broker /v1/chat"):
        if label == "broker /v1/chat" and unavailable:
            report.target(f"throughput {label}", ">= 1000/s at c16-64", "unavailable", None)
            continue
        if not high:
            continue
        best = max(results[(label, c)].throughput for c in high)
        report.target(f"throughput {label}", ">= 1000/s at c16-64", f"{best:,.0f}/s", best >= 1000)
    if 1 in opts.concurrency:
        direct = results[("direct /predict", 1)]
        ws = results[("broker ws", 1)]
        p50 = _diff(ws.p50_ms, direct.p50_ms)
        p99 = _diff(ws.p99_ms, direct.p99_ms)
        report.target(
            "added p50 at c1 (ws)", "<= 1 ms", fmt(p50, " ms"), None if p50 is None else p50 <= 1.0
        )
        report.target(
            "added p99 at c1 (ws)", "<= 5 ms", fmt(p99, " ms"), None if p99 is None else p99 <= 5.0
        )


def _notes(
    unavailable: str, vs_problem: str, rows: int, answered: int, opts: OverheadOptions
) -> list[str]:
    notes = [
        "Load generator, broker and worker share the machine's CPUs: figures are ratios "
        "measured side by side, not absolute capacity.",
        f"Ledger on (the real configuration): {rows} query rows recorded for {answered} "
        "queries answered through the broker (warm-up included).",
        "direct = POST /predict on the same reference worker the broker uses (the limit).",
    ]
    if unavailable:
        notes.append(f"broker /v1/chat/completions unavailable: {unavailable}")
    if opts.vs_url:
        notes.append(
            f"--vs-url {opts.vs_url}: "
            + (
                f"unavailable: {vs_problem}"
                if vs_problem
                else "same clients, same prompt, same run"
            )
        )
    return notes
