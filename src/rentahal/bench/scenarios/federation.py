"""``federation``: what one federated hop adds. Installation A has no chat worker and
sends every chat query to installation B, which has one; the same closed-loop clients
run against B directly and through A, and both ledgers are counted afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import httpx
import yaml

from rentahal.bench.load import Client, WSQueryClient, close_clients, closed_loop, open_clients
from rentahal.bench.procs import BenchSetupError, BrokerConfig, Child, Cluster, chat_worker
from rentahal.bench.report import ScenarioReport
from rentahal.bench.scenarios._common import Phases, ws_url
from rentahal.federation.routing import account_guid

JOIN_TOKEN = "bench-federation-join-token"


@dataclass
class FederationOptions:
    """Knobs of the ``federation`` scenario."""

    concurrency: tuple[int, ...] = (1, 8)
    latency_ms: float = 0.0
    duration_s: float = 4.0
    warmup_s: float = 0.5
    max_requests: int = 100_000


def _realms_file(cluster: Cluster, bootstrap: list[str]) -> None:
    doc = {
        "federation": {"trust": "token", "join_token": JOIN_TOKEN},
        "discovery": {"bootstrap_nodes": bootstrap, "advertise_interval": 0.5},
    }
    (cluster.dir / "realms.yml").write_text(yaml.safe_dump(doc))


def _status(child: Child) -> dict[str, object]:
    return httpx.get(f"http://{child.address}/api/federation/status", timeout=5).json()  # type: ignore[no-any-return]


def _wait_for_chat_peer(home: Child, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, TypeError):
            for peer in _status(home)["remote_federations"]:  # type: ignore[attr-defined]
                if peer["state"] == "active" and peer["services"].get("chat", {}).get("workers"):
                    return str(peer["federation_id"])
        time.sleep(0.2)
    raise BenchSetupError("installation A never learned B's chat service")


def _count(db: object, sql: str, *args: object) -> int:
    with contextlib.closing(sqlite3.connect(str(db), timeout=30)) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


async def run(opts: FederationOptions, phases: Phases, command: str) -> ScenarioReport:
    """Run the scenario and build its report."""
    report = ScenarioReport(
        scenario="federation",
        command=command,
        columns=["path", "clients", "queries/s", "p50 ms", "p99 ms", "errors", "added p50 ms"],
    )
    with Cluster() as away, Cluster() as home:
        phases.start("starting installations B (with a chat worker) and A (without)")
        (worker,) = away.start_workers(1, latency_ms=opts.latency_ms, prefix="chat")
        away.seed([chat_worker(worker, max_concurrency=64)])
        _realms_file(away, [])
        b = away.start_broker(BrokerConfig(), name="installation-b")
        home.seed([])
        _realms_file(home, [f"http://{b.address}"])
        a = home.start_broker(BrokerConfig(), name="installation-a")
        b_id = await asyncio.to_thread(_wait_for_chat_peer, a)
        a_id = str((await asyncio.to_thread(_status, a))["federation_id"])
        rows: dict[tuple[str, int], dict[str, object]] = {}
        answered_a = 0
        for clients_n in opts.concurrency:
            for label, target in (("B direct", b), ("A -> B (federated)", a)):
                url = ws_url(target)

                def opener(u: str = url) -> Awaitable[WSQueryClient]:
                    return WSQueryClient.open(u)

                clients: list[Client] = await open_clients(opener, clients_n)
                try:
                    tick = phases.start(f"{label}, {clients_n} clients")
                    result = await closed_loop(
                        clients,
                        label,
                        duration_s=opts.duration_s,
                        max_requests=opts.max_requests,
                        warmup_s=opts.warmup_s,
                        on_progress=tick,
                    )
                finally:
                    await close_clients(clients)
                if target is a:
                    answered_a += result.answered
                rows[(label, clients_n)] = result.summary()
                direct = rows.get(("B direct", clients_n), {}).get("p50_ms")
                added = (
                    None
                    if target is b or result.p50_ms is None or not isinstance(direct, float)
                    else result.p50_ms - direct
                )
                report.add_row(
                    label,
                    clients_n,
                    result.throughput,
                    result.p50_ms,
                    result.p99_ms,
                    result.errors,
                    added,
                )
        phases.done()
        await asyncio.sleep(1.0)  # the last ledger batches commit
        a_done = _count(home.db_path, "SELECT COUNT(*) FROM queries WHERE status = 'done'")
        b_for_a = _count(
            away.db_path,
            "SELECT COUNT(*) FROM queries WHERE status = 'done' AND user_guid = ?",
            account_guid(a_id),
        )
    lost = max(0, a_done - b_for_a)
    twice = max(0, b_for_a - a_done)
    report.data = {
        "rows": {f"{k[0]} c{k[1]}": v for k, v in rows.items()},
        "a_done": a_done,
        "b_rows_for_a": b_for_a,
        "answered_through_a": answered_a,
        "peer": b_id,
    }
    report.target(
        "queries routed and answered",
        "A's rows = B's rows for A",
        f"{a_done} / {b_for_a}",
        a_done == b_for_a == answered_a,
    )
    report.notes += [
        f"A ({a_id}) has no chat worker; B ({b_id}) has one reference worker "
        f"({opts.latency_ms:g} ms, max_concurrency 64).",
        f"Answered through A: {answered_a}; A's done rows {a_done}; B's rows for A's federation "
        f"account {b_for_a}; lost {lost}, run twice {twice}.",
        "Added p50 = p50 through A minus p50 at B in the same run (a signed route call, "
        "a signed result poll, and A's own queue and ledger).",
    ]
    report.ok = lost == 0 and twice == 0 and answered_a > 0
    return report
