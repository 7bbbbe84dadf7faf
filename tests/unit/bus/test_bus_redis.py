"""Behaviour only the distributed bus has: reclaim, races between nodes, restarts."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.support.redis_server import RedisServer

from rentahal.bus import keys
from rentahal.bus.redis import RedisBus
from rentahal.bus.state.redis import RedisState
from rentahal.errors import BusError
from rentahal.models import Job, Query

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

CLAIM_IDLE_MS = 200


def make_job(prompt: str) -> Job:
    """A chat job with a recognisable prompt."""
    return Job(user_guid="user-1", query=Query(prompt=prompt, query_type="chat"))


class Cluster:
    """RedisBus nodes on one server, closed after the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.buses: list[RedisBus] = []

    async def node(self, node_id: str, **options: Any) -> RedisBus:
        """A started bus for ``node_id``."""
        options.setdefault("claim_idle_ms", CLAIM_IDLE_MS)
        bus = RedisBus(self.url, node_id, **options)
        await bus.start()
        self.buses.append(bus)
        return bus


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    """Nodes on the session's Redis."""
    result = Cluster(redis_server.url)
    yield result
    for bus in result.buses:
        await bus.close()


async def test_dead_node_job_is_reclaimed_after_claim_idle(cluster: Cluster, queue: str) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    job = make_job("orphan")
    await a.enqueue(queue, job)
    taken = await a.take(queue, timeout_s=1.0)
    assert taken is not None and taken.job_id == job.job_id
    await a.close(hand_back=False)  # as a crash: no requeue, no more heartbeats
    started = time.monotonic()
    again = await b.take(queue, timeout_s=5.0)
    assert again is not None and again.job_id == job.job_id
    assert time.monotonic() - started >= CLAIM_IDLE_MS / 1000 * 0.5


async def test_live_node_keeps_a_long_job(cluster: Cluster, queue: str) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    await a.enqueue(queue, make_job("long"))
    taken = await a.take(queue, timeout_s=1.0)
    assert taken is not None
    await asyncio.sleep(5 * CLAIM_IDLE_MS / 1000)  # heartbeats keep it a's
    assert await b.take(queue, timeout_s=0.5) is None
    await a.ack(queue, taken.job_id)
    assert await b.depth(queue) == 0


async def test_close_hands_taken_jobs_back_at_once(cluster: Cluster, queue: str) -> None:
    a = await cluster.node("a", claim_idle_ms=60000)
    b = await cluster.node("b", claim_idle_ms=60000)
    for p in ("1", "2"):
        await a.enqueue(queue, make_job(p))
    assert await a.take(queue, timeout_s=1.0) is not None
    await a.close()
    assert [j.query.prompt for j in await b.waiting(queue)] == ["1", "2"]
    first = await b.take(queue, timeout_s=1.0)
    assert first is not None and first.query.prompt == "1"


async def test_node_restarted_under_same_id_recovers_its_jobs(cluster: Cluster, queue: str) -> None:
    a = await cluster.node("a", claim_idle_ms=60000)
    await a.enqueue(queue, make_job("mine"))
    assert await a.take(queue, timeout_s=1.0) is not None
    await a.close(hand_back=False)
    reborn = await cluster.node("a", claim_idle_ms=60000)
    job = await reborn.take(queue, timeout_s=1.0)
    assert job is not None and job.query.prompt == "mine"


async def test_requeued_job_is_visible_and_removable_from_other_nodes(
    cluster: Cluster, queue: str
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    job = make_job("held")
    await a.enqueue(queue, job)
    taken = await a.take(queue, timeout_s=1.0)
    assert taken is not None
    await a.requeue(queue, taken)
    assert [j.job_id for j in await b.waiting(queue)] == [job.job_id]
    assert await b.depth(queue) == 1
    removed = await b.remove(queue, job.job_id)
    assert removed is not None and removed.job_id == job.job_id
    assert await a.take(queue, timeout_s=0.2) is None


@pytest.mark.parametrize("held", [False, True], ids=["new", "held"])
async def test_remove_and_take_never_both_win(
    cluster: Cluster, redis_server: RedisServer, queue: str, held: bool
) -> None:
    a, b, c = await cluster.node("a"), await cluster.node("b"), await cluster.node("c")
    jobs = [make_job(str(i)) for i in range(80)]
    for job in jobs:
        await a.enqueue(queue, job)
    if held:  # refused once, so they all wait among the held jobs
        assert await a.take(queue, accept=lambda _j: False, timeout_s=1.0) is None
        client = Redis.from_url(redis_server.url, decode_responses=True)
        try:
            summary = await client.xpending(keys.stream_key(queue), a.group)
        finally:
            await client.aclose()
        assert summary["consumers"] == [{"name": keys.HELD_CONSUMER, "pending": len(jobs)}]
    taken: list[str] = []
    removed: list[str] = []

    async def take_all(bus: RedisBus) -> None:
        while (job := await bus.take(queue, timeout_s=0.2)) is not None:
            taken.append(job.job_id)
            await bus.ack(queue, job.job_id)

    async def remove_all() -> None:
        for job in random.sample(jobs, len(jobs)):
            if await a.remove(queue, job.job_id) is not None:
                removed.append(job.job_id)

    await asyncio.gather(take_all(b), take_all(c), remove_all())
    assert not set(taken) & set(removed)
    assert sorted(taken + removed) == sorted(j.job_id for j in jobs)
    assert taken and removed, "the race did not happen: adjust the sizes"
    assert await a.depth(queue) == 0


async def test_two_nodes_share_a_queue_without_duplicates(cluster: Cluster, queue: str) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    jobs = [make_job(str(i)) for i in range(100)]
    for job in jobs:
        await a.enqueue(queue, job)
    seen: list[str] = []

    async def consume(bus: RedisBus) -> None:
        while (job := await bus.take(queue, timeout_s=0.3)) is not None:
            seen.append(job.job_id)
            await bus.ack(queue, job.job_id)

    await asyncio.gather(consume(a), consume(b), consume(a))
    assert sorted(seen) == sorted(j.job_id for j in jobs)


async def test_mark_delivered_is_true_once(cluster: Cluster) -> None:
    a, b = RedisState(cluster.url), RedisState(cluster.url)
    try:
        results = await asyncio.gather(*(s.mark_delivered("job-42") for s in [a, b] * 5))
        assert results.count(True) == 1
        assert await a.mark_delivered("job-43") is True
    finally:
        await a.close()
        await b.close()


def test_node_id_may_not_be_the_held_consumer() -> None:
    with pytest.raises(ValueError):
        RedisBus("redis://127.0.0.1:1/0", "__held__")


async def test_unreachable_redis_is_a_bus_error() -> None:
    with RedisServer() as server:
        url = server.url
    bus = RedisBus(url, "a", retry_s=0.3, connect_timeout_s=0.5)
    with pytest.raises(BusError):
        await bus.start()
    await bus.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis this test may restart."""
    with RedisServer() as server:
        yield server


async def test_bus_carries_on_after_redis_restart(own_redis: RedisServer, queue: str) -> None:
    cluster = Cluster(own_redis.url)
    try:
        a, b = await cluster.node("a"), await cluster.node("b")
        received: list[dict[str, Any]] = []

        async def handler(message: dict[str, Any]) -> None:
            received.append(message)

        b.subscribe("news", handler)
        await a.enqueue(queue, make_job("before"))
        assert await b.take(queue, timeout_s=1.0) is not None

        await asyncio.to_thread(own_redis.restart)
        started = time.monotonic()

        await a.enqueue(queue, make_job("after"))  # retries until Redis is back
        job = await b.take(queue, timeout_s=5.0)
        assert job is not None and job.query.prompt == "after"
        await b.ack(queue, job.job_id)

        while not received:  # the listener resubscribes with back-off
            assert time.monotonic() - started < 10, "pub/sub did not recover"
            await a.publish("news", {"n": 1})
            await asyncio.sleep(0.1)
        assert received[0] == {"n": 1}
        assert time.monotonic() - started < 10
    finally:
        for bus in cluster.buses:
            await bus.close()


async def test_held_job_changed_by_another_node_is_read_afresh(
    cluster: Cluster, queue: str
) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    job = make_job("changing")
    await a.enqueue(queue, job)
    assert await a.take(queue, accept=lambda _j: False, timeout_s=0.1) is None  # a caches it
    taken = await b.take(queue, timeout_s=1.0)
    assert taken is not None
    taken.attempts = 3
    await b.requeue(queue, taken)
    again = await a.take(queue, timeout_s=1.0)
    assert again is not None and again.job_id == job.job_id and again.attempts == 3
