"""How often the Redis bus asks Redis: a queue known to be empty costs no round trip,
and no job waits longer for that than the ``block_ms`` poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.support.redis_server import RedisServer
from tests.unit.bus.conftest import Slots

from rentahal.bus import keys
from rentahal.bus.redis import GRAB_TAKES, HEAD_PAGE, RedisBus
from rentahal.models import Job, Query

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def make_job(prompt: str, user: str = "user-1") -> Job:
    """A chat job with a recognisable prompt."""
    return Job(user_guid=user, query=Query(prompt=prompt, query_type="chat"))


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client of the session's Redis, to read its command counters."""
    client: Redis = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def buses(redis_server: RedisServer) -> AsyncIterator[list[RedisBus]]:
    """Started buses, closed after the test."""
    started: list[RedisBus] = []
    yield started
    for bus in started:
        await bus.close()


async def _node(buses: list[RedisBus], url: str, node_id: str, **options: Any) -> RedisBus:
    bus = RedisBus(url, node_id, **options)
    await bus.start()
    buses.append(bus)
    return bus


async def _calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_known_empty_queue_costs_no_round_trip(
    buses: list[RedisBus], redis_server: RedisServer, redis: Redis, queue: str
) -> None:
    bus = await _node(buses, redis_server.url, "a", block_ms=5000)
    assert await bus.take(queue, timeout_s=0.01) is None  # a look: the queue is empty
    before = await _calls(redis)
    taking = asyncio.create_task(bus.take(queue, timeout_s=0.5))
    for _ in range(20):  # worker slots freed, say: each wakes the take
        bus.wake(queue)
        assert await bus.depth(queue) == 0
        assert await bus.waiting(queue) == []
        await asyncio.sleep(0.01)
    assert await taking is None
    after = await _calls(redis)
    # Only the take's last look at its deadline asked Redis (one script, no ZCARD).
    assert after.get("evalsha", 0) - before.get("evalsha", 0) <= 1
    assert after.get("zcard", 0) == before.get("zcard", 0)


async def test_a_job_from_another_node_is_taken_at_its_wake_up(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a", block_ms=10_000)  # no poll within the test
    b = await _node(buses, redis_server.url, "b")
    assert await a.take(queue, timeout_s=0.01) is None
    taking = asyncio.create_task(a.take(queue, timeout_s=5.0))
    await asyncio.sleep(0.1)
    job = make_job("from b")
    started = time.monotonic()
    await b.enqueue(queue, job)
    taken = await taking
    assert taken is not None and taken.job_id == job.job_id
    assert time.monotonic() - started < 2.0  # the wake-up message, not a poll
    assert await a.depth(queue) == 0


async def test_a_lost_wake_up_is_caught_by_the_poll(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a", block_ms=100)
    b = await _node(buses, redis_server.url, "b")
    assert await a.take(queue, timeout_s=0.01) is None
    job = make_job("no wake-up")
    # b's enqueue script, its wake-up sent to a channel nobody listens on.
    script_keys = [
        keys.stream_key(queue),
        keys.job_index_key(queue),
        keys.jobs_key(queue),
        keys.fair_order_key(queue),
        keys.fair_tags_key(queue),
        keys.fair_finish_key(queue),
        keys.fair_flows_key(queue),
        "nobody-listens",
    ]
    args = [b.group, job.job_id, job.model_dump_json(), keys.HELD_CONSUMER, job.user_guid]
    await b._scripts["enqueue"](keys=script_keys, args=[*args, "1", "{}"])
    started = time.monotonic()
    taken = await a.take(queue, timeout_s=5.0)
    assert taken is not None and taken.job_id == job.job_id
    assert time.monotonic() - started < 2.0


async def test_take_reads_past_a_page_of_refused_jobs(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a")
    b = await _node(buses, redis_server.url, "b")  # b parses every job (a has them cached)
    jobs = [make_job(f"job {i}", user=f"user-{i}") for i in range(3 * HEAD_PAGE)]
    for job in jobs:
        await a.enqueue(queue, job)
    wanted = jobs[2 * HEAD_PAGE + 1]
    taken = await b.take(queue, accept=lambda j: j.job_id == wanted.job_id, timeout_s=1.0)
    assert taken is not None and taken.job_id == wanted.job_id
    assert taken.query.prompt == wanted.query.prompt
    assert await b.depth(queue) == len(jobs) - 1
    # The rest keeps its order for any node.
    first = await a.take(queue, timeout_s=1.0)
    assert first is not None and first.job_id == jobs[0].job_id


async def test_a_node_takes_the_jobs_it_queued_without_fetching_their_bodies(
    buses: list[RedisBus], redis_server: RedisServer, redis: Redis, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a")
    jobs = [make_job(f"job {i}", user=f"user-{i}") for i in range(4 * HEAD_PAGE)]
    for job in jobs:
        await a.enqueue(queue, job)
    before = await _calls(redis)
    taken = []
    for _ in jobs:  # far more than the first page: each job waits through many looks
        job = await a.take(queue, timeout_s=1.0)
        assert job is not None
        taken.append(job.job_id)
    assert taken == [j.job_id for j in jobs]
    after = await _calls(redis)
    assert after.get("hmget", 0) == before.get("hmget", 0)  # every body was known here
    assert await a.take(queue, timeout_s=0.05) is None


async def test_jobs_with_images_are_fetched_again_rather_than_kept(
    buses: list[RedisBus], redis_server: RedisServer, redis: Redis, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a")
    jobs = [
        Job(user_guid=f"user-{i}", query=Query(prompt=f"p{i}", query_type="vision", image="aGk="))
        for i in range(2 * HEAD_PAGE)
    ]
    for job in jobs:
        await a.enqueue(queue, job)
    before = await _calls(redis)
    for expected in jobs:
        job = await a.take(queue, timeout_s=1.0)
        assert job is not None and job.job_id == expected.job_id
        assert job.query.image == "aGk="
    after = await _calls(redis)
    # Those beyond the first page were not kept in memory, so they were read back.
    assert after.get("hmget", 0) > before.get("hmget", 0)


async def test_a_node_takes_each_job_it_queued_in_one_script_call(
    buses: list[RedisBus], redis_server: RedisServer, redis: Redis, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a", claim_idle_ms=600_000)  # no reclaim pass
    jobs = [make_job(f"job {i}", user=f"user-{i % 3}") for i in range(3 * HEAD_PAGE)]
    for job in jobs:
        await a.enqueue(queue, job)
    first = await a.take(queue, timeout_s=1.0)  # the queue's first look also repairs
    assert first is not None
    before = await _calls(redis)
    taken = [first.job_id]
    for _ in jobs[1:]:
        job = await a.take(queue, timeout_s=1.0)
        assert job is not None
        taken.append(job.job_id)
    after = await _calls(redis)
    # Fair order between the three users, then each user's own order.
    by_user = {
        f"user-{u}": [j.job_id for j in jobs if j.user_guid == f"user-{u}"] for u in range(3)
    }
    expected = [by_user[f"user-{i % 3}"][i // 3] for i in range(len(jobs))]
    assert taken == expected
    # The look and the take were one script each time, and no body was read back.
    assert after.get("evalsha", 0) - before.get("evalsha", 0) == len(jobs) - 1
    assert after.get("hmget", 0) == before.get("hmget", 0)


async def test_a_job_of_another_node_ahead_is_taken_first(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a")
    b = await _node(buses, redis_server.url, "b")
    theirs, mine = make_job("queued on b", user="user-b"), make_job("queued on a", user="user-a")
    await b.enqueue(queue, theirs)
    await a.enqueue(queue, mine)
    first = await a.take(queue, timeout_s=1.0)
    second = await a.take(queue, timeout_s=1.0)
    assert first is not None and first.job_id == theirs.job_id
    assert first.query.prompt == "queued on b"
    assert second is not None and second.job_id == mine.job_id


async def test_a_take_cancelled_while_its_look_waits_on_redis_hands_the_job_back(
    buses: list[RedisBus], redis_server: RedisServer, redis: Redis, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a", claim_idle_ms=600_000)
    b = await _node(buses, redis_server.url, "b", claim_idle_ms=600_000)
    assert await a.take(queue, timeout_s=0.01) is None  # the queue is set up, empty
    job = make_job("taken late")
    await a.enqueue(queue, job)
    await redis.execute_command("CLIENT", "PAUSE", 400, "WRITE")  # scripts wait
    taking = asyncio.create_task(a.take(queue, timeout_s=5.0))
    await asyncio.sleep(0.15)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    # The look ran once Redis resumed and took the job; a hands it back at once
    # (not after claim_idle_ms), so b gets it.
    again = await b.take(queue, timeout_s=3.0)
    assert again is not None and again.job_id == job.job_id


async def test_one_look_takes_as_many_jobs_as_have_a_worker_held(
    buses: list[RedisBus], redis_server: RedisServer, redis: Redis, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a", claim_idle_ms=600_000)
    assert await a.take(queue, timeout_s=0.01) is None  # set up, empty
    jobs = [make_job(f"job {i}", user=f"user-{i % 2}") for i in range(12)]
    for job in jobs:
        await a.enqueue(queue, job)
    fair = [j.job_id for j in jobs]  # two users alternating: fair order is queue order
    before = await _calls(redis)
    slots = Slots(free=5)
    first = await a.take_batch(queue, reserve=slots, timeout_s=1.0)
    after = await _calls(redis)
    assert [j.job_id for j in first] == fair[:5]
    assert slots.held == fair[:5] and slots.released == []
    assert after.get("evalsha", 0) - before.get("evalsha", 0) == 1
    assert await a.depth(queue) == 7
    slots = Slots(free=100)  # more than one look takes (GRAB_TAKES)
    second = await a.take_batch(queue, reserve=slots, timeout_s=1.0)
    assert [j.job_id for j in second] == fair[5 : 5 + GRAB_TAKES]
    assert slots.held == fair[5 : 5 + GRAB_TAKES] and slots.released == []
    rest = await a.take_batch(queue, timeout_s=1.0)  # without a reserver: one
    assert [j.job_id for j in rest] == fair[5 + GRAB_TAKES : 6 + GRAB_TAKES]


async def test_holds_for_jobs_a_look_did_not_take_are_given_back(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a")
    b = await _node(buses, redis_server.url, "b")
    theirs = make_job("queued on b", user="user-b")
    await b.enqueue(queue, theirs)
    mine = [make_job(f"queued on a {i}", user="user-a") for i in range(3)]
    for job in mine:
        await a.enqueue(queue, job)
    slots = Slots(free=10)
    taken = await a.take_batch(queue, reserve=slots, timeout_s=1.0)
    # b's job stands first and a has not parsed it: the look takes nothing at once;
    # a then takes b's job the slow way, one job, with every hold given back.
    assert [j.job_id for j in taken] == [theirs.job_id]
    assert slots.held == []
    assert sorted(slots.released) == sorted(j.job_id for j in mine)
    again = await a.take_batch(queue, reserve=slots, timeout_s=1.0)
    assert [j.job_id for j in again] == [j.job_id for j in mine]


async def test_a_cancelled_batch_take_gives_back_its_holds_and_its_jobs(
    buses: list[RedisBus], redis_server: RedisServer, redis: Redis, queue: str
) -> None:
    a = await _node(buses, redis_server.url, "a", claim_idle_ms=600_000)
    b = await _node(buses, redis_server.url, "b", claim_idle_ms=600_000)
    assert await a.take(queue, timeout_s=0.01) is None
    jobs = [make_job(f"late {i}") for i in range(3)]
    for job in jobs:
        await a.enqueue(queue, job)
    slots = Slots(free=3)
    await redis.execute_command("CLIENT", "PAUSE", 400, "WRITE")
    taking = asyncio.create_task(a.take_batch(queue, reserve=slots, timeout_s=5.0))
    await asyncio.sleep(0.15)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    assert slots.held == []
    got = [await b.take(queue, timeout_s=3.0) for _ in jobs]
    assert [j.job_id for j in got if j is not None] == [j.job_id for j in jobs]


async def _first_taken_by_b(
    buses: list[RedisBus], redis_server: RedisServer, queue: str, count: int
) -> tuple[RedisBus, RedisBus, list[Job]]:
    """Nodes a and b; ``count`` jobs queued (and so parsed) on a, the first taken by b."""
    a = await _node(buses, redis_server.url, "a", claim_idle_ms=600_000)
    b = await _node(buses, redis_server.url, "b", claim_idle_ms=600_000)
    assert await a.take(queue, timeout_s=0.01) is None
    jobs = [make_job(f"job {i}") for i in range(count)]
    for job in jobs:
        await a.enqueue(queue, job)
    taken_by_b = await b.take(queue, timeout_s=1.0)
    assert taken_by_b is not None and taken_by_b.job_id == jobs[0].job_id
    return a, b, jobs


class Workers:
    """A JobReserver over named workers, the best first: a hold takes the best free one."""

    def __init__(self, names: list[str]) -> None:
        self.free = list(names)
        self.held: dict[str, str] = {}

    def reserve(self, job: Job) -> bool:
        if not self.free:
            return False
        self.held[job.job_id] = self.free.pop(0)
        return True

    def release(self, job: Job) -> None:
        self.free.append(self.held.pop(job.job_id))
        self.free.sort(key=["best", "second", "third"].index)


async def test_a_job_another_node_took_holds_no_worker_a_taken_job_needs(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a, _b, jobs = await _first_taken_by_b(buses, redis_server, queue, 4)
    # a holds a worker for each parsed job before its look, job 0 among them, though b
    # has it. The best worker must go to job 1, the first job the look takes, as if
    # job 0 had never been held for.
    workers = Workers(["best", "second", "third"])
    first = await a.take_batch(queue, reserve=workers, timeout_s=1.0)
    assert [j.job_id for j in first] == [jobs[1].job_id, jobs[2].job_id]
    assert workers.held == {jobs[1].job_id: "best", jobs[2].job_id: "second"}
    assert (await a.take(queue, timeout_s=1.0)) == jobs[3]
    # The look said job 0 no longer waits: a forgets it and never holds for it again.
    again = make_job("job 5")
    await a.enqueue(queue, again)
    slots = Slots(free=3)
    rest = await a.take_batch(queue, reserve=slots, timeout_s=1.0)
    assert [j.job_id for j in rest] == [again.job_id]
    assert slots.held == [again.job_id] and slots.released == []


async def test_a_taken_job_that_finds_no_worker_once_held_in_fair_order_waits_again(
    buses: list[RedisBus], redis_server: RedisServer, queue: str
) -> None:
    a, b, jobs = await _first_taken_by_b(buses, redis_server, queue, 3)

    class Shrinking(Slots):
        """Two slots for the look's holds, then one: a worker went while it looked."""

        def release(self, job: Job) -> None:
            super().release(job)
            self.free = 1

    slots = Shrinking(free=3)
    got = await a.take_batch(queue, reserve=slots, timeout_s=1.0)
    assert [j.job_id for j in got] == [jobs[1].job_id]
    assert slots.held == [jobs[1].job_id]
    # Job 2 was taken with job 1 but found no worker: it waits again, at once.
    again = await b.take(queue, timeout_s=2.0)
    assert again is not None and again.job_id == jobs[2].job_id
