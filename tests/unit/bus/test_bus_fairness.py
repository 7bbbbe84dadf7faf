"""Fair queuing between users, run against the memory bus and the Redis bus alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from rentahal.models import Job, Query

if TYPE_CHECKING:
    from tests.unit.bus.conftest import Bus, Nodes

pytestmark = pytest.mark.timeout(30)


def job_of(user: str, prompt: str = "") -> Job:
    """A chat job of ``user``; the prompt defaults to the user's name."""
    return Job(user_guid=user, query=Query(prompt=prompt or user, query_type="chat"))


def users(jobs: list[Job]) -> list[str]:
    """Whose jobs these are, in order."""
    return [job.user_guid for job in jobs]


async def take_all(bus: Bus, queue: str) -> list[Job]:
    """Take (and ack) every waiting job, in the order the queue offers them."""
    taken: list[Job] = []
    while (job := await bus.take(queue, timeout_s=0.2)) is not None:
        taken.append(job)
        await bus.ack(queue, job.job_id)
    return taken


async def test_a_backlog_delays_another_users_job_by_about_one_job(
    nodes: Nodes, queue: str
) -> None:
    bus = await nodes.node()
    for i in range(200):
        await bus.enqueue(queue, job_of("flooder", f"f{i}"))
    await bus.enqueue(queue, job_of("light"))
    waiting = users(await bus.waiting(queue))
    assert waiting.index("light") <= 1, "the light user waits behind the backlog"
    assert await bus.depth(queue) == 201
    first = [await bus.take(queue, timeout_s=1.0) for _ in range(2)]
    assert "light" in users([j for j in first if j is not None])


async def test_users_take_turns_and_keep_their_own_order(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    for i in range(3):
        await bus.enqueue(queue, job_of("a", f"a{i}"))
    for i in range(3):
        await bus.enqueue(queue, job_of("b", f"b{i}"))
    await bus.enqueue(queue, job_of("c", "c0"))
    order = ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]
    assert [j.query.prompt for j in await bus.waiting(queue)] == order
    assert [j.query.prompt for j in await take_all(bus, queue)] == order


async def test_a_newcomer_starts_at_the_clock_not_behind_or_before_it(
    nodes: Nodes, queue: str
) -> None:
    bus = await nodes.node()
    for i in range(6):
        await bus.enqueue(queue, job_of("a", f"a{i}"))
    for _ in range(3):  # a0..a2 run: the clock is at a2
        job = await bus.take(queue, timeout_s=1.0)
        assert job is not None
        await bus.ack(queue, job.job_id)
    await bus.enqueue(queue, job_of("b", "b0"))
    await bus.enqueue(queue, job_of("b", "b1"))
    # b has no credit from the time it was idle, and no debt either.
    expected = ["b0", "a3", "b1", "a4", "a5"]
    assert [j.query.prompt for j in await bus.waiting(queue)] == expected


async def test_weights_share_the_queue(nodes: Nodes, queue: str) -> None:
    def weight(job: Job) -> float:
        return 2.0 if job.user_guid == "heavy" else 1.0

    bus = await nodes.node("a", weight=weight)
    for i in range(6):
        await bus.enqueue(queue, job_of("heavy", f"h{i}"))
        await bus.enqueue(queue, job_of("plain", f"p{i}"))
    first_six = users((await take_all(bus, queue))[:6])
    assert first_six.count("heavy") == 4 and first_six.count("plain") == 2


async def test_cancelled_jobs_give_their_time_back(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    backlog = [job_of("a", f"a{i}") for i in range(50)]
    for job in backlog:
        await bus.enqueue(queue, job)
    for job in backlog:
        assert await bus.remove(queue, job.job_id) is not None
    for i in range(5):
        await bus.enqueue(queue, job_of("b", f"b{i}"))
    await bus.enqueue(queue, job_of("a", "again"))
    assert users(await bus.waiting(queue)).index("a") <= 1


async def test_requeued_job_keeps_its_place_in_the_fair_order(nodes: Nodes, queue: str) -> None:
    bus = await nodes.node()
    await bus.enqueue(queue, job_of("a", "a0"))
    await bus.enqueue(queue, job_of("a", "a1"))
    await bus.enqueue(queue, job_of("b", "b0"))
    job = await bus.take(queue, timeout_s=1.0)
    assert job is not None and job.query.prompt == "a0"
    await bus.requeue(queue, job)
    assert [j.query.prompt for j in await bus.waiting(queue)] == ["a0", "b0", "a1"]


async def test_nodes_share_one_fair_order(nodes: Nodes, queue: str) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    for i in range(20):
        await a.enqueue(queue, job_of("flooder", f"f{i}"))
    await b.enqueue(queue, job_of("light"))
    assert users(await a.waiting(queue)).index("light") <= 1
    first = [await b.take(queue, timeout_s=1.0), await a.take(queue, timeout_s=1.0)]
    assert "light" in users([j for j in first if j is not None])
