"""Concurrency, capacity, cancellation, queue limits and several tabs per user."""

from __future__ import annotations

import asyncio

from rentahal.models import AIWorker
from tests.support.client import WSClient
from tests.support.servers import reference_worker, worker_stats


def _chat_worker(name: str, address: str, cap: int) -> AIWorker:
    return AIWorker(name=name, address=address, type="chat", max_concurrency=cap)


async def _open(url: str, guid: str | None = None) -> WSClient:
    client = await WSClient.connect(url, guid)
    await client.connect_sequence()
    return client


async def test_dispatch_is_concurrent_up_to_capacity(broker_factory) -> None:
    with reference_worker(latency_ms=300) as a, reference_worker(latency_ms=300) as b:
        server = broker_factory([_chat_worker("a", a, 2), _chat_worker("b", b, 2)])
        clients = [await _open(server.ws_url) for _ in range(6)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(c.query(f"q{i}") for i, c in enumerate(clients)))
        elapsed = loop.time() - started
        assert all(r["type"] == "query_result" for r in results)
        # six 0.3 s jobs on four slots: two rounds, not six
        assert elapsed < 1.5
        assert worker_stats(a)["max_in_flight_seen"] == 2
        assert worker_stats(b)["max_in_flight_seen"] == 2
        for c in clients:
            await c.close()


async def test_max_concurrency_one_is_never_exceeded(broker_factory) -> None:
    with reference_worker(latency_ms=50) as a:
        server = broker_factory([_chat_worker("solo", a, 1)])
        clients = [await _open(server.ws_url) for _ in range(5)]
        results = await asyncio.gather(*(c.query(f"q{i}") for i, c in enumerate(clients)))
        assert [r["type"] for r in results] == ["query_result"] * 5
        assert worker_stats(a)["max_in_flight_seen"] == 1
        for c in clients:
            await c.close()


async def test_two_tabs_of_one_user_both_get_results(connect) -> None:
    first = await connect()
    second = await connect(first.guid)
    await first.send({"type": "submit_query", "query": {"prompt": "shared", "query_type": "chat"}})
    one = await first.expect("query_result")
    two = await second.expect("query_result")
    assert one["job_id"] == two["job_id"]
    assert "shared" in two["result"]


async def test_cancel_queued_and_running(broker_factory) -> None:
    with reference_worker(latency_ms=2000) as a:
        server = broker_factory([_chat_worker("slow", a, 1)])
        client = await _open(server.ws_url)
        for prompt in ("running", "waiting"):
            await client.send(
                {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat"}}
            )
        running = await client.expect("query_queued")
        waiting = await client.expect("query_queued")
        assert waiting["position"] >= 1
        await client.send({"type": "cancel_query", "job_id": waiting["job_id"]})
        await client.expect("query_cancelled", job_id=waiting["job_id"])
        await asyncio.sleep(0.3)  # let the first one reach the worker
        await client.send({"type": "cancel_query", "job_id": running["job_id"]})
        await client.expect("query_cancelled", job_id=running["job_id"])
        await client.send({"type": "cancel_query", "job_id": running["job_id"]})
        error = await client.expect("error")
        assert error["message"] == "No such query of yours is waiting or running"
        # the broker is free again and nothing was charged
        result = await client.query("after")
        assert result["type"] == "query_result"
        rows = server.call(server.storage.recent_queries(client.guid))
        statuses = sorted(r["status"] for r in rows)
        assert statuses == ["cancelled", "cancelled", "done"]
        assert all(r["cost"] == 0 for r in rows if r["status"] == "cancelled")
        await client.close()


async def test_cannot_cancel_someone_elses_query(broker_factory) -> None:
    with reference_worker(latency_ms=1000) as a:
        server = broker_factory([_chat_worker("slow", a, 1)])
        owner = await _open(server.ws_url)
        other = await _open(server.ws_url)
        await owner.send({"type": "submit_query", "query": {"prompt": "x", "query_type": "chat"}})
        queued = await owner.expect("query_queued")
        await other.send({"type": "cancel_query", "job_id": queued["job_id"]})
        assert (await other.expect("error"))["message"].startswith("No such query of yours")
        assert (await owner.expect("query_result"))["job_id"] == queued["job_id"]
        await owner.close()
        await other.close()


async def test_queue_full_and_per_user_limit(broker_factory) -> None:
    with reference_worker(latency_ms=1500) as a:
        server = broker_factory(
            [_chat_worker("slow", a, 1)],
            queue={"max_queue_size": 3, "max_queued_per_user": 2},
        )
        alice = await _open(server.ws_url)
        bob = await _open(server.ws_url)
        for _ in range(2):
            await alice.send(
                {"type": "submit_query", "query": {"prompt": "a", "query_type": "chat"}}
            )
            await alice.expect("query_queued")
        await alice.send({"type": "submit_query", "query": {"prompt": "a", "query_type": "chat"}})
        limit = await alice.expect("error")
        assert "You already have 2 queries waiting" in limit["message"]
        await bob.send({"type": "submit_query", "query": {"prompt": "b", "query_type": "chat"}})
        await bob.expect("query_queued")
        await bob.send({"type": "submit_query", "query": {"prompt": "b", "query_type": "chat"}})
        full = await bob.expect("error")
        assert full["message"] == "Queue is full, please try again later"
        await alice.close()
        await bob.close()


async def test_queue_update_broadcast(broker_factory) -> None:
    with reference_worker(latency_ms=1000) as a:
        server = broker_factory(
            [_chat_worker("slow", a, 1), AIWorker(name="painter", address=a, type="imagine")]
        )
        client = await _open(server.ws_url)
        watcher = await _open(server.ws_url)
        try:
            for prompt in ("runs", "waits"):
                await client.send(
                    {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat"}}
                )
            # every watcher sees the depth (one running, one waiting) and the worker count
            busy = await watcher.expect("queue_update", depth=2, timeout_s=3)
            assert busy["total"] == 2
            for _ in range(2):
                await client.expect("query_result")
            idle = await watcher.expect("queue_update", depth=0, timeout_s=3)
            assert idle["total"] == 2
        finally:
            await client.close()
            await watcher.close()


async def test_pending_jobs_lists_waiting_and_running(broker_factory) -> None:
    with reference_worker(latency_ms=1500) as a:
        server = broker_factory([_chat_worker("slow", a, 1)])
        client = await _open(server.ws_url)
        other = await _open(server.ws_url)
        try:
            for prompt in ("runs", "waits"):
                await client.send(
                    {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat"}}
                )
            running = (await client.expect("query_queued"))["job_id"]
            waiting = (await client.expect("query_queued"))["job_id"]
            await asyncio.sleep(0.3)
            await client.send({"type": "get_pending_jobs"})
            listed = await client.expect("pending_jobs")
            assert sorted(listed["job_ids"]) == sorted([running, waiting])
            await other.send({"type": "get_pending_jobs"})
            assert (await other.expect("pending_jobs"))["job_ids"] == []
            await client.expect("query_result", job_id=running)
            await client.send({"type": "get_pending_jobs"})
            assert (await client.expect("pending_jobs"))["job_ids"] == [waiting]
        finally:
            await client.close()
            await other.close()
