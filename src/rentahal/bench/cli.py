"""``rentahal bench SCENARIO``: start what the scenario needs, load it, report, stop it all."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rentahal.bench.procs import BenchSetupError
from rentahal.bench.report import ScenarioReport, dumps, render
from rentahal.bench.scenarios._common import Phases

bench_app = typer.Typer(
    help="Benchmarks on loopback: each scenario starts its own broker and workers.",
    no_args_is_help=True,
    add_completion=False,
)


@bench_app.callback()
def _group() -> None:
    """Benchmarks on loopback; see docs/benchmarks.md."""


JsonOpt = typer.Option(False, "--json", help="Print the report as JSON on stdout.")
DurationOpt = typer.Option(5.0, "--duration", "-d", min=0.2, max=120, help="Seconds per cell.")

ScenarioRun = Callable[[Phases, str], Coroutine[Any, Any, ScenarioReport]]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return None
    return uvloop.new_event_loop


def _command() -> str:
    args = sys.argv[1:]
    return "rentahal " + " ".join(shlex.quote(a) for a in args) if args else "rentahal bench"


def execute(run: ScenarioRun, as_json: bool, command: str | None = None) -> ScenarioReport:
    """Run a scenario with a progress bar on stderr; print its report; exit 1 on failure."""
    err = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 160)
    command = command or _command()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                report = runner.run(run(Phases(progress), command))
        except (BenchSetupError, ValueError) as exc:
            progress.stop()
            err.print(f"[red]bench failed:[/red] {exc}")
            raise typer.Exit(2) from exc
    if as_json:
        print(dumps([report]))
    else:
        render(report, out)
    if not report.ok:
        err.print("[red]the run was not clean (errors or missing ledger rows); see above[/red]")
        raise typer.Exit(1)
    return report


@bench_app.command()
def overhead(
    concurrency: str = typer.Option("1,16,64", help="Comma-separated client counts."),
    duration: float = DurationOpt,
    max_requests: int = typer.Option(100_000, min=1, help="Cap on requests per cell."),
    vs_url: str = typer.Option(
        "", "--vs-url", help="Another OpenAI-compatible gateway (loopback) to load beside ours."
    ),
    vs_model: str = typer.Option("", help="Model name to send to --vs-url."),
    vs_api_key: str = typer.Option("", envvar="BENCH_VS_API_KEY", help="Bearer key for --vs-url."),
    redis: bool = typer.Option(True, help="Also load a node in Redis mode (redis-server)."),
    defaults: bool = typer.Option(True, help="Also load /v1 on a node at default settings."),
    upstream_port: int = typer.Option(
        0, min=0, max=65535, help="Port of the instant upstream (0: free); --vs-url can front it."
    ),
    py_spy: str = typer.Option(
        "", "--py-spy", help="Record each broker phase with py-spy into this directory."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Broker overhead: straight to an instant upstream vs through the broker (WS, /v1;
    memory and Redis mode; /v1 at default settings; --vs-url)."""
    from rentahal.bench.scenarios import overhead as scenario

    opts = scenario.OverheadOptions(
        concurrency=_ints(concurrency),
        duration_s=duration,
        max_requests=max_requests,
        vs_url=vs_url,
        vs_model=vs_model,
        vs_api_key=vs_api_key,
        redis=redis,
        defaults=defaults,
        upstream_port=upstream_port,
        py_spy_dir=py_spy,
    )
    execute(lambda phases, cmd: scenario.run(opts, phases, cmd), as_json)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 or v > 1024 for v in values):
        raise typer.BadParameter("each value must be between 1 and 1024")
    return values


@bench_app.command()
def connections(
    clients: int = typer.Option(10_000, min=1, max=20_000, help="Idle WebSocket clients to hold."),
    deflate: bool = typer.Option(True, help="Negotiate permessage-deflate like a browser."),
    sysop_first: bool = typer.Option(True, help="Connect the sysop before the clients."),
    connect_timeout: float = typer.Option(90.0, min=1, max=600, help="Limit on connecting (s)."),
    as_json: bool = JsonOpt,
) -> None:
    """Memory per idle WebSocket connection and sysop_message fan-out time."""
    from rentahal.bench.scenarios import connections as scenario

    opts = scenario.ConnectionsOptions(
        clients=clients,
        deflate=deflate,
        sysop_first=sysop_first,
        connect_timeout_s=connect_timeout,
    )
    execute(lambda phases, cmd: scenario.run(opts, phases, cmd), as_json)


@bench_app.command()
def capacity(
    workers: int = typer.Option(4, min=1, max=32, help="Reference workers."),
    latency_ms: float = typer.Option(100.0, min=1, max=10_000, help="Worker latency (ms)."),
    caps: str = typer.Option("1,4", help="Comma-separated max_concurrency per worker."),
    duration: float = typer.Option(8.0, "--duration", "-d", min=0.2, max=120),
    as_json: bool = JsonOpt,
) -> None:
    """Achieved throughput of W workers of latency L against the ideal W*cap/L."""
    from rentahal.bench.scenarios import capacity as scenario

    opts = scenario.CapacityOptions(
        workers=workers, latency_ms=latency_ms, caps=_ints(caps), duration_s=duration
    )
    execute(lambda phases, cmd: scenario.run(opts, phases, cmd), as_json)


@bench_app.command()
def isolation(
    chat_clients: int = typer.Option(4, min=1, max=256),
    chat_latency_ms: float = typer.Option(20.0, min=0, max=10_000),
    imagine_clients: int = typer.Option(16, min=1, max=256),
    imagine_latency_ms: float = typer.Option(1000.0, min=1, max=60_000),
    duration: float = typer.Option(8.0, "--duration", "-d", min=0.2, max=120),
    as_json: bool = JsonOpt,
) -> None:
    """Chat latency while slow imagine jobs saturate their worker, against chat alone."""
    from rentahal.bench.scenarios import isolation as scenario

    opts = scenario.IsolationOptions(
        chat_clients=chat_clients,
        chat_latency_ms=chat_latency_ms,
        imagine_clients=imagine_clients,
        imagine_latency_ms=imagine_latency_ms,
        duration_s=duration,
    )
    execute(lambda phases, cmd: scenario.run(opts, phases, cmd), as_json)


@bench_app.command()
def nodes(
    clients: int = typer.Option(32, min=2, max=1024),
    duration: float = DurationOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The same load on 1 and 2 broker nodes sharing redis-server (started here)."""
    from rentahal.bench.scenarios import nodes as scenario

    opts = scenario.NodesOptions(clients=clients, duration_s=duration)
    execute(lambda phases, cmd: scenario.run(opts, phases, cmd), as_json)


@bench_app.command()
def federation(
    concurrency: str = typer.Option("1,8", help="Comma-separated client counts."),
    latency_ms: float = typer.Option(0.0, min=0, max=10_000, help="Worker latency at B."),
    duration: float = DurationOpt,
    as_json: bool = JsonOpt,
) -> None:
    """What one federated hop adds: chat through installation A to B, against B directly."""
    from rentahal.bench.scenarios import federation as scenario

    levels = tuple(int(c) for c in concurrency.split(",") if c.strip())
    opts = scenario.FederationOptions(
        concurrency=levels, latency_ms=latency_ms, duration_s=duration
    )
    execute(lambda phases, cmd: scenario.run(opts, phases, cmd), as_json)
