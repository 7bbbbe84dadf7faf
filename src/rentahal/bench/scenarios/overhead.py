"""``overhead``: the same closed-loop chat load sent straight to an instant
OpenAI-compatible upstream and through the broker, in one run: WebSocket and
``/v1/chat/completions`` on one node in memory mode, ``/v1`` at the broker's default
settings (one key, errors counted), both paths on one node in Redis mode, and
``--vs-url`` (any other OpenAI-compatible proxy in front of the same upstream)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rentahal.bench import profile
from rentahal.bench.load import (
    Client,
    HttpClient,
    LoadResult,
    WSQueryClient,
    close_clients,
    closed_loop,
    open_clients,
    openai_client,
)
from rentahal.bench.procs import (
    BenchSetupError,
    BrokerConfig,
    Child,
    Cluster,
    chat_worker,
    redis_binary,
)
from rentahal.bench.report import ScenarioReport
from rentahal.bench.scenarios._common import Phases, fmt, ledger_rows, ratio, ws_url

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DIRECT = "direct upstream"
WS, V1, V1_DEFAULTS, WS_REDIS, V1_REDIS = "ws", "/v1", "/v1 defaults", "ws redis", "/v1 redis"
# A Redis-mode path and the memory-mode path it is compared with.
MEMORY_TWIN = {WS_REDIS: WS, V1_REDIS: V1}

COLUMNS = [
    "path",
    "conc",
    "queries/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "x direct",
    "+p50 ms",
    "+p99 ms",
    "x memory",
]


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
    redis: bool = True  # also a node in Redis mode (skipped with a note without redis-server)
    defaults: bool = True  # also /v1 on a node at default settings
    upstream_port: int = 0  # 0: a free port (a fixed one lets --vs-url front the same upstream)
    py_spy_dir: str = ""  # record every broker phase with py-spy into this directory


@dataclass
class _Path:
    label: str
    factory: Callable[[], Awaitable[Client]]
    node: str = ""  # the broker node it loads ("" for direct and --vs-url)


@dataclass
class _Node:
    child: Child
    api_key: str
    db_path: Path
    answered: int = 0


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


async def _ready(client: HttpClient) -> Client:
    return client


def _http(url: str, model: str, key: str) -> Callable[[], Awaitable[Client]]:
    return lambda: _ready(openai_client(url, model, key))


def _ws(url: str) -> Callable[[], Awaitable[Client]]:
    return lambda: WSQueryClient.open(url)


def _start_node(
    cluster: Cluster,
    name: str,
    upstream: Child,
    top: int,
    *,
    redis_url: str = "",
    defaults: bool = False,
) -> _Node:
    """A broker with its own database (so each ledger is checked on its own)."""
    db_path = cluster.database(name)
    cluster.seed(
        [chat_worker(upstream, max_concurrency=max(256, top), protocol="openai")], db_path=db_path
    )
    key = cluster.create_api_key(name=f"bench {name}", db_path=db_path)
    broker = BrokerConfig(
        max_connections=max(1000, 4 * top), redis_url=redis_url, defaults=defaults, db_path=db_path
    )
    return _Node(cluster.start_broker(broker, name=name), key, db_path)


async def run(opts: OverheadOptions, phases: Phases, command: str) -> ScenarioReport:
    """Run the scenario and build its report."""
    if opts.vs_url:
        check_vs_url(opts.vs_url)
    if opts.py_spy_dir and profile.py_spy_binary() is None:
        raise BenchSetupError("--py-spy: py-spy is not installed (pip install py-spy)")
    report = ScenarioReport(scenario="overhead", command=command, columns=COLUMNS)
    top = max(opts.concurrency)
    notes: list[str] = []
    with Cluster() as cluster:
        phases.start("starting the upstream and the broker nodes")
        upstream = cluster.start_upstream(opts.upstream_port)
        upstream_url = f"http://{upstream.address}"
        nodes = {"memory": _start_node(cluster, "memory", upstream, top)}
        if opts.defaults:
            nodes["defaults"] = _start_node(cluster, "defaults", upstream, top, defaults=True)
        if opts.redis:
            if redis_binary() is not None:
                redis = cluster.start_redis()
                nodes["redis"] = _start_node(
                    cluster, "redis", upstream, top, redis_url=f"redis://{redis.address}/0"
                )
            else:
                notes.append("Redis mode skipped: redis-server is not installed.")

        paths = [_Path(DIRECT, _http(upstream_url, opts.model, ""))]
        for mode, ws_label, v1_label in (
            ("memory", WS, V1),
            ("defaults", "", V1_DEFAULTS),
            ("redis", WS_REDIS, V1_REDIS),
        ):
            node = nodes.get(mode)
            if node is None:
                continue
            if ws_label:
                paths.append(_Path(ws_label, _ws(ws_url(node.child)), mode))
            url = f"http://{node.child.address}"
            problem = await _probe(openai_client(url, opts.model, node.api_key))
            if problem:
                notes.append(f"{v1_label} unavailable: {problem}")
            else:
                paths.append(_Path(v1_label, _http(url, opts.model, node.api_key), mode))
        if opts.vs_url:
            problem = await _probe(openai_client(opts.vs_url, opts.vs_model, opts.vs_api_key))
            notes.append(
                f"--vs-url {opts.vs_url}: "
                + (f"unavailable: {problem}" if problem else "same clients, same prompt, same run")
            )
            if not problem:
                vs = _http(opts.vs_url, opts.vs_model, opts.vs_api_key)
                paths.append(_Path("vs " + opts.vs_url, vs))

        results: dict[tuple[str, int], LoadResult] = {}
        for conc in opts.concurrency:
            for path in paths:  # interleaved: the paths see the same machine state
                tick = phases.start(f"{path.label} x{conc}")
                clients: list[Client] = await open_clients(path.factory, conc)
                spy = None
                if opts.py_spy_dir and path.node:
                    spy = await _spy(nodes[path.node].child, opts, f"{path.label}-c{conc}")
                try:
                    res = await closed_loop(
                        clients,
                        path.label,
                        duration_s=opts.duration_s,
                        max_requests=opts.max_requests,
                        warmup_s=opts.warmup_s,
                        on_progress=tick,
                    )
                finally:
                    await close_clients(clients)
                    if spy is not None:
                        await _spy_done(*spy)
                results[(path.label, conc)] = res
                if path.node:
                    nodes[path.node].answered += res.answered
        phases.done()
        ledger = {mode: (ledger_rows(n.db_path), n.answered) for mode, n in nodes.items()}

    _rows(report, results, paths, opts.concurrency)
    report.data = {
        "results": [r.summary() for r in results.values()],
        "ledger": {mode: {"rows": r, "answered": a} for mode, (r, a) in ledger.items()},
        "ledger_rows": sum(r for r, _ in ledger.values()),
        "broker_answered": sum(a for _, a in ledger.values()),
    }
    _targets(report, results, opts, [p.label for p in paths])
    report.notes += [
        "Load generator, brokers and upstream share the machine's CPUs: figures are ratios "
        "measured side by side, not absolute capacity.",
        f"direct = POST /v1/chat/completions on the instant upstream ({upstream_url}, "
        "rentahal.bench.upstream) every broker node calls (protocol openai); nodes other "
        "than the one under load are idle.",
        "ws, /v1, ws redis, /v1 redis: max_queued_per_user and the per-address shares raised "
        "so that nothing is refused; /v1 defaults: the shipped settings, one key.",
        "Ledger on (the real configuration), one database per node: "
        + ", ".join(f"{m} {r} rows for {a} answered" for m, (r, a) in ledger.items())
        + " (warm-up and probes included).",
        *notes,
    ]
    if opts.py_spy_dir:
        report.notes.append(
            f"py-spy profiles of every broker phase (raw stacks and .top.txt) in {opts.py_spy_dir}"
        )
    report.notes += [
        f"{r.label} x{r.concurrency}: {r.errors} errors, first: {r.first_error}"
        for r in results.values()
        if r.errors
    ]
    report.ok = all(r.ok > 0 for r in results.values()) and all(
        rows >= answered for rows, answered in ledger.values()
    )
    return report


async def _spy(
    broker: Child, opts: OverheadOptions, name: str
) -> tuple[asyncio.subprocess.Process, Path]:
    folder = Path(opts.py_spy_dir)
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per phase, before load
    out = folder / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".txt")
    return await profile.record(broker.pid, out, opts.duration_s), out


async def _spy_done(proc: asyncio.subprocess.Process, out: Path) -> None:
    try:
        async with asyncio.timeout(30):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
    with contextlib.suppress(OSError):
        collapsed = await asyncio.to_thread(out.read_text)
        top = out.with_suffix(".top.txt")
        await asyncio.to_thread(top.write_text, profile.summary(collapsed))


def _rows(
    report: ScenarioReport,
    results: dict[tuple[str, int], LoadResult],
    paths: list[_Path],
    levels: list[int],
) -> None:
    for conc in levels:
        direct = results[(DIRECT, conc)]
        for path in paths:
            res = results[(path.label, conc)]
            is_direct = res is direct
            twin = results.get((MEMORY_TWIN.get(path.label, ""), conc))
            report.add_row(
                path.label,
                conc,
                res.throughput,
                res.p50_ms,
                res.p99_ms,
                res.errors,
                None if is_direct else ratio(res.throughput, direct.throughput),
                None if is_direct else _diff(res.p50_ms, direct.p50_ms),
                None if is_direct else _diff(res.p99_ms, direct.p99_ms),
                None if twin is None else ratio(res.throughput, twin.throughput),
            )


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _targets(
    report: ScenarioReport,
    results: dict[tuple[str, int], LoadResult],
    opts: OverheadOptions,
    labels: list[str],
) -> None:
    """The targets of the performance issue, each where this run measured it."""

    def at(label: str, conc: int) -> LoadResult | None:
        return results.get((label, conc)) if label in labels else None

    high = max(opts.concurrency)
    for label, goal in ((V1, 1000.0), (WS, 1800.0)):
        res = at(label, high)
        if res is not None and high >= 16:
            report.target(
                f"{label} throughput at c{high}",
                f">= {goal:,.0f}/s (at c64)",
                f"{res.throughput:,.0f}/s",
                res.throughput >= goal,
            )
    vs_label = "vs " + opts.vs_url
    for conc in (c for c in opts.concurrency if c >= 16):
        ours, theirs = at(V1, conc), at(vs_label, conc)
        if ours is not None and theirs is not None:
            x = ratio(ours.throughput, theirs.throughput)
            report.target(
                f"/v1 / --vs-url at c{conc}", ">= 8x", fmt(x, "x"), None if x is None else x >= 8
            )
    defaults = at(V1_DEFAULTS, high)
    if defaults is not None:
        report.target(
            f"/v1 defaults errors at c{high}",
            "0 (one key)",
            str(defaults.errors),
            not defaults.errors,
        )
    direct = results.get((DIRECT, 1))
    for label in (WS, V1):
        res = at(label, 1)
        if res is None or direct is None:
            continue
        p50, p99 = _diff(res.p50_ms, direct.p50_ms), _diff(res.p99_ms, direct.p99_ms)
        report.target(
            f"added p50 at c1 ({label})",
            "<= 1.5 ms",
            fmt(p50, " ms"),
            None if p50 is None else p50 <= 1.5,
        )
        report.target(
            f"added p99 at c1 ({label})",
            "<= 4 ms",
            fmt(p99, " ms"),
            None if p99 is None else p99 <= 4,
        )
    for label, twin in MEMORY_TWIN.items():
        for conc in (c for c in opts.concurrency if c >= 16):
            red, mem = at(label, conc), at(twin, conc)
            if red is None or mem is None:
                continue
            x = ratio(red.throughput, mem.throughput)
            report.target(
                f"{label} / {twin} at c{conc}",
                ">= 0.6x",
                fmt(x, "x"),
                None if x is None else x >= 0.6,
            )
