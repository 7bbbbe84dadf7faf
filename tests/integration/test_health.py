"""The health loop with the original's scoring, its broadcasts, and the sysop's reset."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from starlette.applications import Starlette

from rentahal.models import AIWorker
from tests.support.bad_worker import BadWorker
from tests.support.client import Opener, WSClient
from tests.support.servers import BrokerServer, ThreadServer

BrokerFactory = Callable[..., BrokerServer]


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[ThreadServer]:
    """Run ``app`` on a free loopback port for the block."""
    server = ThreadServer(app, timeout_graceful_shutdown=1)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _worker(name: str, address: str, wtype: str = "chat", **kw: Any) -> AIWorker:
    # ``predict`` for every type, so imagine workers are probed on /health too
    return AIWorker(name=name, address=address, type=wtype, protocol="predict", **kw)  # type: ignore[arg-type]


def _record(update: dict[str, Any], name: str) -> dict[str, Any]:
    [record] = [w for w in update["workers"] if w["name"] == name]
    return record  # type: ignore[no-any-return]


async def _next_update(client: WSClient, timeout_s: float = 5.0) -> dict[str, Any]:
    return await client.expect("worker_update", timeout_s=timeout_s)


def _stored(server: BrokerServer) -> dict[str, AIWorker]:
    return {w.name: w for w in server.call(server.storage.list_workers())}


def _rows(server: BrokerServer, guid: str | None) -> list[dict[str, Any]]:
    assert guid is not None
    return server.call(server.storage.recent_queries(guid))  # type: ignore[no-any-return]


async def test_probes_blacklist_at_zero_and_readmit_at_50(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    sick, painter = BadWorker("down"), BadWorker("down")
    with serve(sick.app()) as sick_srv, serve(painter.app()) as painter_srv:
        server = broker_factory(
            [
                # Seeded low so few probes are needed; the steps are the original's.
                _worker("sick", f"127.0.0.1:{sick_srv.port}", health_score=30),
                _worker("painter", f"127.0.0.1:{painter_srv.port}", "imagine", health_score=20),
            ],
            workers={"health_check_interval": 0.2},
        )
        client = await open_client(server)

        # 503 on /health: minus 10 per probe, blacklisted at 0 (the imagine worker is not)
        sick_seen: list[tuple[float, bool]] = []
        while not sick_seen or not sick_seen[-1][1]:
            record = _record(await _next_update(client), "sick")
            sick_seen.append((record["health_score"], record["is_blacklisted"]))
        scores = [score for score, _ in sick_seen]
        assert scores[-1] == 0
        assert all(a - b == 10 for a, b in itertools.pairwise(scores))
        assert all(not blacklisted for _, blacklisted in sick_seen[:-1])
        assert sick.calls == 0  # probes never run a query
        painter_record = _record(client.seen[-1], "painter")
        assert painter_record["health_score"] == 0
        assert painter_record["is_blacklisted"] is False

        stored = _stored(server)
        assert (stored["sick"].health_score, stored["sick"].is_blacklisted) == (0, True)
        assert (stored["painter"].health_score, stored["painter"].is_blacklisted) == (0, False)

        # a blacklisted worker serves nothing: the query is refused at once
        refused = await client.query("anyone?", timeout_s=2)
        assert refused == {"type": "error", "message": "No chat worker is available"}

        # answering 200 again brings it back at 50, then +10 per probe
        sick.mode = "ok"
        while True:
            record = _record(await _next_update(client), "sick")
            if not record["is_blacklisted"]:
                break
        assert record["health_score"] == 50
        record = _record(await _next_update(client), "sick")
        assert (record["health_score"], record["is_blacklisted"]) == (60, False)

        result = await client.query("back?")
        assert result["type"] == "query_result" and result["worker"] == "sick"
        [row] = [r for r in _rows(server, client.guid) if r["status"] == "done"]
        assert row["worker"] == "sick"


async def test_unanswered_probes_cost_five(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    with serve(BadWorker().app()) as srv:
        port = srv.port
    # nothing listens on ``port`` any more: connection refused, no answer
    server = broker_factory(
        [_worker("gone", f"127.0.0.1:{port}", health_score=20)],
        workers={"health_check_interval": 0.2},
    )
    client = await open_client(server)
    scores: list[float] = []
    while not scores or scores[-1] > 0:
        scores.append(_record(await _next_update(client), "gone")["health_score"])
    assert all(a - b == 5 for a, b in itertools.pairwise(scores))
    assert _record(client.seen[-1], "gone")["is_blacklisted"] is True


async def test_sysop_resets_health_of_one_or_all(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    flaky = BadWorker("500")
    with serve(flaky.app()) as srv:
        address = f"127.0.0.1:{srv.port}"
        server = broker_factory(
            [
                _worker("down-a", address, health_score=0, is_blacklisted=True),
                _worker("down-b", address, health_score=0, is_blacklisted=True),
                _worker("flaky", address, "vision", health_score=40),
            ],
            workers={"circuit_failures": 1, "circuit_open_s": 60},
        )
        sysop = await open_client(server)
        user = await open_client(server)

        # the flaky worker fails once: its circuit opens for a minute
        failed = await sysop.query("look", "vision", image=_PNG)
        assert failed["type"] == "error"
        await sysop.send({"type": "get_stats"})
        health = await sysop.expect("worker_health")
        assert {w["name"]: w["circuit"] for w in health["data"]}["flaky"] == "open"

        await user.send({"type": "reset_worker_health", "worker_name": "down-a"})
        assert (await user.expect("error"))["message"] == "Sysop rights are needed for this"

        await sysop.send({"type": "reset_worker_health", "worker_name": "down-a"})
        update = await sysop.expect("worker_update")
        a, b = _record(update, "down-a"), _record(update, "down-b")
        assert (a["health_score"], a["is_blacklisted"]) == (100, False)
        assert (b["health_score"], b["is_blacklisted"]) == (0, True)
        assert _record(update, "flaky")["circuit"] == "open"
        # everyone sees the broadcast, and the new health is stored
        assert _record(await user.expect("worker_update"), "down-a")["health_score"] == 100
        stored = _stored(server)
        assert (stored["down-a"].health_score, stored["down-a"].is_blacklisted) == (100, False)
        assert stored["down-b"].is_blacklisted

        await sysop.send({"type": "reset_worker_health", "worker_name": "nobody"})
        assert (await sysop.expect("error"))["message"] == "No worker named 'nobody'"

        await sysop.send({"type": "reset_worker_health"})
        update = await sysop.expect("worker_update")
        for record in update["workers"]:
            assert (record["health_score"], record["is_blacklisted"]) == (100, False)
            assert record["circuit"] == "closed"
        assert all(w.health_score == 100 for w in _stored(server).values())

        # the reset circuit lets the worker serve again at once
        flaky.mode = "ok"
        result = await sysop.query("look again", "vision", image=_PNG, timeout_s=3)
        assert result["type"] == "query_result" and result["worker"] == "flaky"


# A 1x1 PNG, enough for a vision query.
_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)
