"""Fixtures of the bus tests: one Redis server for the session, buses of both kinds."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tests.support.redis_server import RedisServer

from rentahal.bus.memory import MemoryBus
from rentahal.bus.redis import RedisBus
from rentahal.models import Job

Bus = MemoryBus | RedisBus


class Slots:
    """A JobReserver with ``free`` worker slots, noting what it holds and gives back."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.held: list[str] = []
        self.released: list[str] = []

    def reserve(self, job: Job) -> bool:
        if len(self.held) >= self.free:
            return False
        self.held.append(job.job_id)
        return True

    def release(self, job: Job) -> None:
        self.held.remove(job.job_id)
        self.released.append(job.job_id)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the session; tests keep apart by unique queue names."""
    with RedisServer() as server:
        yield server


class Nodes:
    """Started buses, one per node id, closed after the test.

    The memory bus is one process: every "node" is the same bus instance.
    """

    def __init__(self, kind: str, url: str = "") -> None:
        self.kind = kind
        self.url = url
        self.buses: dict[str, Bus] = {}

    async def node(self, node_id: str = "a", **options: Any) -> Bus:
        """The bus of ``node_id`` (started on first use)."""
        if self.kind == "memory":
            node_id = "memory"
        if node_id not in self.buses:
            bus: Bus
            if self.kind == "memory":
                bus = MemoryBus(**{k: v for k, v in options.items() if k == "weight"})
            else:
                bus = RedisBus(self.url, node_id, **options)
            await bus.start()
            self.buses[node_id] = bus
        return self.buses[node_id]

    async def close(self) -> None:
        """Close every bus (they may already be closed)."""
        for bus in self.buses.values():
            await bus.close()


@pytest.fixture(
    params=["memory", pytest.param("redis", marks=pytest.mark.redis)],
)
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    """Bus nodes of each implementation (Redis only starts a server when used)."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        result = Nodes("redis", server.url)
    else:
        result = Nodes("memory")
    yield result
    await result.close()


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses."""
    return f"$TEST-{uuid.uuid4().hex[:8]}"
