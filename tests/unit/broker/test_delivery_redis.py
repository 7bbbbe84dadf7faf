"""Results in Redis mode: the finishing node delivers at once; the echo is not a second try."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support.redis_server import RedisServer

from rentahal.broker.delivery import Delivery
from rentahal.bus.redis import RedisBus
from rentahal.bus.state.redis import RedisState
from rentahal.models import Job, Query, Result
from rentahal.realms.connections import RealmConnectionManager

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def redis_server() -> AsyncIterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Node:
    """A bus, the cluster state and a Delivery of one node, noting what reached it."""

    def __init__(self, url: str, node_id: str) -> None:
        self.bus = RedisBus(url, node_id)
        self.state = RedisState(url)
        self.reached: list[str] = []
        self.delivery = Delivery(self.bus, self.state, RealmConnectionManager(), self._reached)

    async def _reached(self, job_id: str) -> None:
        self.reached.append(job_id)

    async def start(self) -> Node:
        self.delivery.subscribe()
        await self.bus.start()
        return self

    async def close(self) -> None:
        self.delivery.close()
        await self.bus.close()
        await self.state.close()


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[list[Node]]:
    started = [await Node(redis_server.url, "a").start(), await Node(redis_server.url, "b").start()]
    yield started
    for node in started:
        await node.close()


async def _finished(node: Node, queue: str) -> Result:
    """A job queued and taken on ``node``, kept and published as done, with a waiter."""
    job = Job(user_guid="user-1", query=Query(prompt="hi", query_type="chat"), realm=queue)
    await node.bus.enqueue(queue, job)
    taken = await node.bus.take(queue, timeout_s=2.0)
    assert taken is not None and taken.job_id == job.job_id
    node.delivery.expect(job.job_id)
    result = Result.of(job, "done", result="hello")
    assert await node.delivery.keep_and_publish(queue, job.job_id, result.model_dump(), [])
    return result


async def test_the_finishing_node_hands_its_result_out_at_once_and_only_once(
    nodes: list[Node],
) -> None:
    a, b = nodes
    queue = f"q-{uuid.uuid4().hex[:8]}"
    result = await _finished(a, queue)
    await a.delivery.deliver_finished(result)
    # The waiter has it now, before the results channel could bring it back.
    got = await asyncio.wait_for(a.delivery.wait(result.job_id), 0.01)
    assert got.result == "hello"
    await asyncio.sleep(0.5)  # the echo came back meanwhile, and went to node b too
    assert a.reached == [result.job_id]
    assert b.reached == [result.job_id]


async def test_a_result_finished_elsewhere_still_arrives_by_the_channel(
    nodes: list[Node],
) -> None:
    a, b = nodes
    queue = f"q-{uuid.uuid4().hex[:8]}"
    result = await _finished(a, queue)  # a waits for it but does not deliver it itself
    got = await asyncio.wait_for(a.delivery.wait(result.job_id), 5.0)
    assert got.job_id == result.job_id
    assert a.reached == [result.job_id]
    assert b.reached == [result.job_id]
