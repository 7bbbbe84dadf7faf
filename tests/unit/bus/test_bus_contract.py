"""The ``Bus`` contract, run against the memory bus and the Redis bus alike."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from tests.unit.bus.conftest import Slots

from rentahal.models import Job, Query

if TYPE_CHECKING:
    from tests.unit.bus.conftest import Nodes

pytestmark = pytest.mark.timeout(30)


def make_job(prompt: str, query_type: str = "chat") -> Job:
    """A job with a recognisable prompt."""
    return Job(user_guid="user-1", query=Query(prompt=prompt, query_type=query_type))  # type: ignore[arg-type]


def prompts(jobs: list[Job]) -> list[str]:
    """The prompts of ``jobs``, in order."""
    return [job.query.prompt for job in jobs]


def is_chat(job: Job) -> bool:
    """``accept`` predicate: chat jobs only."""
    return job.query.query_type == "chat"


async def test_fifo_order(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    for p in ("1", "2", "3"):
        await bus.enqueue(queue, make_job(p))
    taken = [await bus.take(queue, timeout_s=1.0) for _ in range(3)]
    assert prompts([j for j in taken if j is not None]) == ["1", "2", "3"]
    assert await bus.take(queue, timeout_s=0.1) is None


async def test_take_times_out_on_empty_queue(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    started = time.monotonic()
    assert await bus.take(queue, timeout_s=0.3) is None
    assert 0.25 <= time.monotonic() - started < 1.5


async def test_accept_skips_without_losing(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    for p, t in (("v", "vision"), ("c1", "chat"), ("c2", "chat")):
        await bus.enqueue(queue, make_job(p, t))
    first = await bus.take(queue, accept=is_chat, timeout_s=1.0)
    assert first is not None and first.query.prompt == "c1"
    assert prompts(await bus.waiting(queue)) == ["v", "c2"]
    assert await bus.depth(queue) == 2
    second = await bus.take(queue, accept=is_chat, timeout_s=1.0)
    assert second is not None and second.query.prompt == "c2"
    assert await bus.take(queue, accept=is_chat, timeout_s=0.1) is None
    skipped = await bus.take(queue, timeout_s=1.0)
    assert skipped is not None and skipped.query.prompt == "v"
    assert await bus.depth(queue) == 0


async def test_requeue_puts_job_back_at_head_with_its_new_state(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    for p in ("a", "b"):
        await bus.enqueue(queue, make_job(p))
    job = await bus.take(queue, timeout_s=1.0)
    assert job is not None and job.query.prompt == "a"
    job.attempts = 1
    await bus.requeue(queue, job)
    assert prompts(await bus.waiting(queue)) == ["a", "b"]
    again = await bus.take(queue, timeout_s=1.0)
    assert again is not None and again.job_id == job.job_id and again.attempts == 1


async def test_remove_only_waiting_jobs(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    a, b, c = make_job("a"), make_job("b"), make_job("c")
    for job in (a, b, c):
        await bus.enqueue(queue, job)
    removed = await bus.remove(queue, b.job_id)
    assert removed is not None and removed.job_id == b.job_id
    assert await bus.remove(queue, b.job_id) is None
    assert prompts(await bus.waiting(queue)) == ["a", "c"]
    taken = await bus.take(queue, timeout_s=1.0)
    assert taken is not None and taken.job_id == a.job_id
    assert await bus.remove(queue, a.job_id) is None  # taken, not waiting
    assert await bus.remove(queue, "no-such-job") is None
    assert await bus.depth(queue) == 1


async def test_depth_and_waiting(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    assert await bus.depth(queue) == 0
    assert await bus.waiting(queue) == []
    jobs = [make_job(str(i)) for i in range(5)]
    for job in jobs:
        await bus.enqueue(queue, job)
    assert await bus.depth(queue) == 5
    assert [j.job_id for j in await bus.waiting(queue)] == [j.job_id for j in jobs]
    taken = [await bus.take(queue, timeout_s=1.0) for _ in range(2)]
    assert await bus.depth(queue) == 3
    for done in taken:
        assert done is not None
        await bus.ack(queue, done.job_id)
    assert await bus.depth(queue) == 3
    assert prompts(await bus.waiting(queue)) == ["2", "3", "4"]


async def test_ack_forgets_the_job(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    job = make_job("x")
    await bus.enqueue(queue, job)
    taken = await bus.take(queue, timeout_s=1.0)
    assert taken is not None
    await bus.ack(queue, taken.job_id)
    await bus.ack(queue, taken.job_id)  # twice is harmless
    assert await bus.depth(queue) == 0
    assert await bus.remove(queue, job.job_id) is None
    assert await bus.take(queue, timeout_s=0.1) is None


async def eventually(check: Any, timeout_s: float = 5.0) -> None:
    """Wait until ``check()`` is true, polling."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_publish_reaches_subscriber_on_another_node(nodes: Nodes, queue: str) -> None:
    sender, receiver = await nodes.node("a"), await nodes.node("b")
    received: list[dict[str, Any]] = []

    async def handler(message: dict[str, Any]) -> None:
        received.append(message)

    channel = f"results:{queue}"
    receiver.subscribe(channel, handler)
    # A subscription made after start becomes active shortly: ping until it is.
    deadline = time.monotonic() + 5
    while not received:
        assert time.monotonic() < deadline, "subscription never became active"
        await sender.publish(channel, {"ping": True})
        await asyncio.sleep(0.05)
    received.clear()
    await asyncio.sleep(0.1)
    received.clear()
    await sender.publish(channel, {"job_id": "j1", "result": "ok", "n": [1, 2]})
    await eventually(lambda: len(received) >= 1)
    await asyncio.sleep(0.1)
    assert received == [{"job_id": "j1", "result": "ok", "n": [1, 2]}]


async def test_wake_makes_take_look_again(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    ready = False
    task = asyncio.create_task(bus.take(queue, accept=lambda _job: ready, timeout_s=10.0))
    try:
        await bus.enqueue(queue, make_job("later"))
        await asyncio.sleep(0.3)
        assert not task.done()
        ready = True
        woken_at = time.monotonic()
        bus.wake(queue)
        job = await asyncio.wait_for(task, timeout=2.0)
        assert job is not None and job.query.prompt == "later"
        assert time.monotonic() - woken_at < 1.0
    finally:
        task.cancel()


async def test_a_batch_take_starts_only_jobs_with_a_worker_held(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    assert await bus.take(queue, timeout_s=0.01) is None
    jobs = [make_job(str(i)) for i in range(12)]
    for job in jobs:
        await bus.enqueue(queue, job)
    slots = Slots(free=4)
    batch = await bus.take_batch(queue, accept=is_chat, reserve=slots, timeout_s=1.0)
    # In fair order, at most one job more than the holds (a bus may answer its first
    # job without one), and every other job has its worker held.
    assert prompts(batch) == [str(i) for i in range(len(batch))]
    assert slots.free <= len(batch) <= slots.free + 1  # one look started them all
    unheld = [job for job in batch if job.job_id not in slots.held]
    assert unheld in ([], batch[:1])
    rest = []
    while len(rest) < len(jobs) - len(batch):
        more = await bus.take_batch(queue, timeout_s=1.0)  # no reserver: one each
        assert len(more) == 1
        rest += more
    assert prompts(batch + rest) == [str(i) for i in range(12)]
    assert await bus.take_batch(queue, reserve=Slots(free=4), timeout_s=0.05) == []
