"""The Redis bus's one-step submit and finish: all or nothing, and what each leaves behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from tests.support.redis_server import RedisServer

from rentahal.bus import keys
from rentahal.bus.redis import QUEUE_FULL, RedisBus
from rentahal.bus.state.redis import RedisState
from rentahal.models import Job, Query

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def make_job(prompt: str, user: str = "user-1") -> Job:
    """A chat job of ``user``."""
    return Job(user_guid=user, query=Query(prompt=prompt, query_type="chat"))


@pytest.fixture
async def bus(redis_server: RedisServer) -> AsyncIterator[RedisBus]:
    """One started node."""
    node = RedisBus(redis_server.url, "a", claim_idle_ms=5000)
    await node.start()
    yield node
    await node.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client to look at what the scripts left."""
    client: Redis = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def _names() -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"running-{tag}", f"share:user:{tag}", f"share:address:{tag}"


async def test_submit_queues_counts_and_places(bus: RedisBus, raw: Redis, queue: str) -> None:
    running, user, address = _names()
    await raw.hset(running, "elsewhere", "b|someone")  # one job running on another node
    placed = []
    for i in range(3):
        got = await bus.submit(
            queue,
            make_job(f"q{i}", user=f"u{i}"),
            depth_of=[queue],
            running_key=running,
            max_depth=10,
            shares={user: 5, address: 5},
            lease_s=60,
        )
        assert got.full is None
        placed.append((got.depth, got.position))
    assert placed == [(2, 1), (3, 2), (4, 3)]
    assert [j.query.prompt for j in await bus.waiting(queue)] == ["q0", "q1", "q2"]
    assert await raw.zcard(user) == 3 and await raw.zcard(address) == 3


async def test_submit_refused_by_depth_or_share_changes_nothing(
    bus: RedisBus, raw: Redis, queue: str
) -> None:
    running, user, address = _names()
    opts: dict[str, Any] = {"depth_of": [queue], "running_key": running, "lease_s": 60}
    first = make_job("first")
    ok = await bus.submit(queue, first, max_depth=1, shares={user: 1, address: 5}, **opts)
    assert ok.full is None
    deep = await bus.submit(
        queue, make_job("deep"), max_depth=1, shares={user: 5, address: 5}, **opts
    )
    assert (deep.full, deep.depth) == (QUEUE_FULL, 1)
    share = await bus.submit(
        queue, make_job("share"), max_depth=10, shares={address: 5, user: 1}, **opts
    )
    assert share.full == user
    assert [j.job_id for j in await bus.waiting(queue)] == [first.job_id]
    assert await raw.zrange(address, 0, -1) == [first.job_id]  # no lease of the refused


async def test_finish_keeps_clears_acks_publishes_and_frees_shares(
    bus: RedisBus, raw: Redis, queue: str
) -> None:
    running, user, address = _names()
    job = make_job("done")
    got = await bus.submit(
        queue,
        job,
        depth_of=[queue],
        running_key=running,
        max_depth=10,
        shares={user: 5, address: 5},
        lease_s=60,
    )
    assert got.full is None
    taken = await bus.take(queue, timeout_s=1.0)
    assert taken is not None and taken.job_id == job.job_id
    await raw.hset(running, job.job_id, f"a|{job.user_guid}")
    heard: list[dict[str, Any]] = []
    channel = f"results-{uuid.uuid4().hex[:8]}"

    async def on_result(message: dict[str, Any]) -> None:
        heard.append(message)

    bus.subscribe(channel, on_result)
    await asyncio.sleep(0.5)  # the listener subscribes on its next turn
    mailbox = f"mailbox-{uuid.uuid4().hex[:8]}"
    result = {"job_id": job.job_id, "user_guid": job.user_guid, "result": "ok"}
    await bus.finish(
        queue,
        job.job_id,
        result,
        mailbox=(mailbox, 50, 600),
        running_key=running,
        channel=channel,
        shares=[user, address],
    )
    assert [orjson.loads(r) for r in await raw.lrange(mailbox, 0, -1)] == [result]
    assert 0 < await raw.ttl(mailbox) <= 600
    assert not await raw.hexists(running, job.job_id)
    assert await bus.holding(queue, [job.job_id]) == set()
    assert await raw.zcard(user) == 0 and await raw.zcard(address) == 0
    for _ in range(50):
        if heard:
            break
        await asyncio.sleep(0.02)
    assert heard == [result]


async def test_a_taken_job_is_running_until_handed_back_or_acked(
    bus: RedisBus, raw: Redis, queue: str
) -> None:
    first, second = make_job("first", user="u-first"), make_job("second", user="u-second")
    await bus.enqueue(queue, first)
    await bus.enqueue(queue, second)
    taken = await bus.take(queue, timeout_s=1.0)
    assert taken is not None and taken.job_id == first.job_id
    assert await raw.hget(keys.running_key(), first.job_id) == "a|u-first"
    assert not await raw.hexists(keys.running_key(), second.job_id)  # still waiting
    await bus.requeue(queue, taken)
    assert not await raw.hexists(keys.running_key(), first.job_id)
    again = await bus.take(queue, timeout_s=1.0)
    assert again is not None and again.job_id == first.job_id
    await bus.ack(queue, first.job_id)
    assert not await raw.hexists(keys.running_key(), first.job_id)


async def test_state_calls_of_one_turn_share_a_pipeline_and_keep_their_replies(
    redis_server: RedisServer, raw: Redis
) -> None:
    state = RedisState(redis_server.url)
    try:
        ids = [f"job-{uuid.uuid4().hex[:8]}" for _ in range(20)]
        first = await asyncio.gather(*(state.mark_delivered(j) for j in ids))
        again = await asyncio.gather(
            *(state.mark_delivered(j) for j in [*ids[:5], "new-" + ids[0]])
        )
        assert first == [True] * 20
        assert again == [False] * 5 + [True]
        worker = f"w-{uuid.uuid4().hex[:8]}"
        holders = [f"h{i}" for i in range(6)]
        assert all([await state.acquire_slot(worker, 10, h, 60) for h in holders])
        await asyncio.gather(*(state.release_slot(worker, h) for h in holders[:4]))
        assert sorted(await raw.zrange(keys.slots_key(worker), 0, -1)) == holders[4:]
    finally:
        await state.close()
