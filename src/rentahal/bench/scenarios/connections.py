"""``connections``: N idle WebSocket clients on one node; memory per connection and the
fan-out of one ``sysop_message`` to all of them."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from rentahal.bench import holder
from rentahal.bench.procs import BenchSetupError, BrokerConfig, Cluster
from rentahal.bench.report import ScenarioReport
from rentahal.bench.scenarios._common import Phases, fmt, ws_url

CLIENTS_PER_HOLDER = 2500
KIB = 1024
TARGET_OPEN_S = 60.0


@dataclass
class ConnectionsOptions:
    """Knobs of the ``connections`` scenario."""

    clients: int = 10_000
    parallel: int = 16  # handshakes in flight per holder process
    connect_timeout_s: float = 90.0
    fanout_timeout_s: float = 30.0
    deflate: bool = True  # browsers negotiate permessage-deflate
    sysop_first: bool = True


class _SysopDrain:
    """The sysop's socket: reads (and counts) everything the broker pushes to it."""

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                self.frames += 1
                self.bytes += len(raw)


async def _sysop(url: str, guid: str, drain: _SysopDrain) -> Any:
    ws = await websockets.connect(
        url,
        additional_headers={"Cookie": f"user_guid={guid}"},
        ping_interval=None,
        max_size=256 * 1024 * 1024,
        open_timeout=60,
    )
    drain.task = asyncio.create_task(drain.run(ws))
    return ws


async def _start_holder(
    url: str, count: int, marker: str, opts: ConnectionsOptions
) -> asyncio.subprocess.Process:
    # As a script: ``-m rentahal.bench.holder`` would import the whole package first.
    cmd = [sys.executable, "-P", holder.__file__, "--url", url, "--count", str(count)]
    cmd += ["--marker", marker, "--parallel", str(opts.parallel)]
    cmd += ["--connect-timeout-s", str(opts.connect_timeout_s)]
    cmd += ["--wait-s", str(opts.fanout_timeout_s + opts.connect_timeout_s)]
    cmd += ["--deflate" if opts.deflate else "--no-deflate"]
    return await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )


async def _event(proc: asyncio.subprocess.Process, timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        line = await proc.stdout.readline()
    if not line:
        raise BenchSetupError(f"holder process exited early (code {await proc.wait()})")
    return orjson.loads(line)  # type: ignore[no-any-return]


async def run(opts: ConnectionsOptions, phases: Phases, command: str) -> ScenarioReport:
    """Run the scenario and build its report."""
    report = ScenarioReport(scenario="connections", command=command, columns=["figure", "value"])
    marker = f"bench-fanout-{uuid.uuid4().hex[:12]}"
    holders: list[asyncio.subprocess.Process] = []
    drain = _SysopDrain()
    sysop_ws: Any = None
    with Cluster() as cluster:
        phases.start("starting broker")
        sysop_guid = cluster.seed([])
        broker = cluster.start_broker(BrokerConfig(max_connections=opts.clients + 100))
        url = ws_url(broker)
        try:
            if opts.sysop_first:
                sysop_ws = await _sysop(url, sysop_guid, drain)
                await asyncio.sleep(0.5)
            rss_before = broker.rss_bytes()
            tick = phases.start(f"connecting {opts.clients} idle clients")
            n_holders = max(1, math.ceil(opts.clients / CLIENTS_PER_HOLDER))
            shares = [opts.clients // n_holders] * n_holders
            shares[0] += opts.clients - sum(shares)
            started = time.monotonic()
            holders = [await _start_holder(url, n, marker, opts) for n in shares]
            connected = [0] * n_holders
            samples: list[tuple[float, int]] = []
            ready: list[dict[str, Any]] = [{}] * n_holders

            async def follow(i: int, proc: asyncio.subprocess.Process) -> None:
                while True:
                    event = await _event(proc, opts.connect_timeout_s + 30)
                    connected[i] = event["connected"]
                    samples.append((time.monotonic() - started, sum(connected)))
                    tick(sum(connected) / opts.clients)
                    if event["event"] == "ready":
                        ready[i] = event
                        return

            await asyncio.gather(*(follow(i, p) for i, p in enumerate(holders)))
            connect_s = time.monotonic() - started
            total = sum(connected)
            accepted = sum(int(r.get("deflate_accepted", 0)) for r in ready)
            if sysop_ws is None:
                sysop_ws = await _sysop(url, sysop_guid, drain)
            await asyncio.sleep(1.0)  # let the connect sequences settle
            rss_after = broker.rss_bytes()

            tick = phases.start("sysop_message fan-out")
            sent_at = time.time()
            await sysop_ws.send(orjson.dumps({"type": "sysop_message", "message": marker}).decode())
            times: list[float] = []
            missing = 0
            for proc in holders:
                event = await _event(proc, opts.fanout_timeout_s + opts.connect_timeout_s + 30)
                times += event["times"]
                missing += event["missing"]
            tick(1.0)
        finally:
            for proc in holders:
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in holders:
                try:
                    async with asyncio.timeout(15):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            if sysop_ws is not None:
                await sysop_ws.close()
            if drain.task is not None:
                drain.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain.task
        phases.done()

    per_conn = (rss_after - rss_before) / total if total else None
    delays_ms = sorted((t - sent_at) * 1000 for t in times)
    rates = _rates(samples)
    report.add_row("clients asked / connected", f"{opts.clients} / {total}")
    report.add_row("connect time (s)", connect_s)
    report.add_row("connect rate, first / last quarter (/s)", f"{rates[0]:.0f} / {rates[1]:.0f}")
    report.add_row(
        "broker RSS before / after (MiB)", f"{rss_before / 2**20:.1f} / {rss_after / 2**20:.1f}"
    )
    report.add_row("RSS per connection (KiB)", None if per_conn is None else per_conn / KIB)
    report.add_row("sysop_message received", f"{len(times)} / {total}")
    report.add_row("fan-out p50 / max (ms)", f"{_pct(delays_ms, 50)} / {_pct(delays_ms, 100)}")
    report.add_row("bytes pushed to the sysop socket (MiB)", drain.bytes / 2**20)
    report.data = {
        "clients": opts.clients,
        "connected": total,
        "connect_s": connect_s,
        "connect_samples": samples,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "rss_per_connection_bytes": per_conn,
        "received": len(times),
        "missing": missing,
        "fanout_ms": {"p50": _pct(delays_ms, 50), "max": _pct(delays_ms, 100)},
        "sysop_bytes": drain.bytes,
        "sysop_frames": drain.frames,
        "deflate": opts.deflate,
        "deflate_accepted": accepted,
        "holder_errors": [r.get("first_error") for r in ready if r.get("failed")],
    }
    report.target(
        "clients held, open within 60 s",
        ">= 10,000 in <= 60 s",
        f"{total:,} in {connect_s:.1f} s",
        total >= 10_000 and connect_s <= TARGET_OPEN_S,
    )
    report.target(
        "memory per connection",
        "<= 64 KiB",
        fmt(None if per_conn is None else per_conn / KIB, " KiB", 1),
        None if per_conn is None else per_conn <= 64 * KIB,
    )
    report.target(
        "every client gets the broadcast",
        f"{total}",
        f"{len(times)}",
        total > 0 and len(times) == total,
    )
    report.notes += [
        "Clients are held by separate holder processes; only the broker's RSS is measured.",
        (
            "permessage-deflate offered by the clients (as browsers do); the broker "
            f"accepted it on {accepted:,} of {total:,} connections "
            "(its websocket.per_message_deflate setting)."
            if opts.deflate
            else "permessage-deflate not offered by the clients."
        ),
        "The sysop socket was connected "
        + (
            "first (it receives active_users with every connect)."
            if opts.sysop_first
            else "after the clients."
        ),
        "Fan-out is measured with wall clocks of one machine (sysop send to client receive).",
    ]
    report.ok = total > 0 and len(times) == total
    return report


def _pct(values: list[float], pct: float) -> str:
    if not values:
        return "n/a"
    index = min(len(values) - 1, max(0, math.ceil(pct / 100 * len(values)) - 1))
    return f"{values[index]:.0f}"


def _rates(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """Connects per second over the first and the last quarter of the clients."""
    if len(samples) < 2:
        return 0.0, 0.0
    samples = sorted(samples)
    final = samples[-1][1]

    def rate(lo: float, hi: float) -> float:
        inside = [(t, n) for t, n in samples if lo * final <= n <= hi * final]
        if len(inside) < 2 or inside[-1][0] == inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    return rate(0.0, 0.25) or statistics.fmean([0.0]), rate(0.75, 1.0)
