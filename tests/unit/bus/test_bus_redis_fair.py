"""The fair order on Redis: reclaim, repair, wake-ups across nodes, bounded state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from tests.support.redis_server import RedisServer

from rentahal.bus import keys
from rentahal.bus.redis import RedisBus
from rentahal.models import Job, Query

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def job_of(user: str, prompt: str) -> Job:
    """A chat job of ``user``."""
    return Job(user_guid=user, query=Query(prompt=prompt, query_type="chat"))


def prompts(jobs: list[Job]) -> list[str]:
    """The prompts of ``jobs``, in order."""
    return [job.query.prompt for job in jobs]


@pytest.fixture
async def buses(redis_server: RedisServer) -> AsyncIterator[list[RedisBus]]:
    """Started buses appended by the test, closed after it."""
    started: list[RedisBus] = []
    yield started
    for bus in started:
        await bus.close()


async def node(buses: list[RedisBus], url: str, node_id: str, **options: object) -> RedisBus:
    """A started bus named ``node_id``."""
    bus = RedisBus(url, node_id, claim_idle_ms=200, **options)  # type: ignore[arg-type]
    await bus.start()
    buses.append(bus)
    return bus


async def test_a_reclaimed_job_waits_at_its_fair_place(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await node(buses, redis_server.url, "a")
    b = await node(buses, redis_server.url, "b")
    for job in (job_of("x", "x0"), job_of("x", "x1"), job_of("y", "y0")):
        await a.enqueue(queue, job)
    taken = await a.take(queue, timeout_s=1.0)
    assert taken is not None and taken.query.prompt == "x0"
    await a.close(hand_back=False)  # a crash
    await asyncio.sleep(0.5)  # longer than claim_idle_ms
    assert await b.take(queue, accept=lambda _job: False, timeout_s=0.3) is None  # reclaims
    assert prompts(await b.waiting(queue)) == ["x0", "y0", "x1"]


async def test_a_held_job_missing_from_the_order_is_filed_again(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await node(buses, redis_server.url, "a")
    await a.enqueue(queue, job_of("x", "lost"))
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.delete(keys.fair_order_key(queue))
    finally:
        await client.aclose()
    assert await a.depth(queue) == 0
    c = await node(buses, redis_server.url, "c")  # a node's first look repairs the order
    job = await c.take(queue, timeout_s=1.0)
    assert job is not None and job.query.prompt == "lost"


async def test_an_enqueue_wakes_other_nodes_at_once(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await node(buses, redis_server.url, "a")
    b = await node(buses, redis_server.url, "b", block_ms=10_000)
    taker = asyncio.create_task(b.take(queue, timeout_s=20.0))
    await asyncio.sleep(0.5)
    sent = time.monotonic()
    await a.enqueue(queue, job_of("x", "ping"))
    job = await asyncio.wait_for(taker, timeout=5.0)
    assert job is not None and job.query.prompt == "ping"
    assert time.monotonic() - sent < 2.0  # not the 10 s poll


async def test_the_fair_state_forgets_users_once_served(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await node(buses, redis_server.url, "a")
    for i in range(50):
        await a.enqueue(queue, job_of(f"user-{i}", f"p{i}"))
    while (job := await a.take(queue, timeout_s=0.2)) is not None:
        await a.ack(queue, job.job_id)
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await client.hlen(keys.fair_tags_key(queue)) == 0
        assert await client.zcard(keys.fair_order_key(queue)) == 0
        assert await client.zcard(keys.fair_finish_key(queue)) <= 1
        assert set(await client.hkeys(keys.fair_flows_key(queue))) <= {"clock", "seq"}
    finally:
        await client.aclose()
