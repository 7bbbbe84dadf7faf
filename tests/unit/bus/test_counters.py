"""Share counters, memory and Redis: caps hold under concurrency, leases expire and renew."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support.redis_server import RedisServer

from rentahal.bus.counters import MemoryCounters, RedisCounters, ShareCounters


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[list[ShareCounters]]:
    """Three handles on one set of counters (three nodes, for Redis)."""
    if request.param == "memory":
        one = MemoryCounters()
        yield [one, one, one]
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    handles = [RedisCounters(server.url) for _ in range(3)]
    yield list(handles)
    for handle in handles:
        await handle.close()


def _key(name: str) -> str:
    return f"test:{name}:{uuid.uuid4().hex}"


async def test_cap_holds_for_concurrent_acquires(counters: list[ShareCounters]) -> None:
    user, address = _key("user"), _key("address")
    caps = {user: 10, address: 100}
    got = await asyncio.gather(*(counters[n % 3].acquire(f"job{n}", caps, 60) for n in range(30)))
    assert got.count(None) == 10
    assert set(got) == {None, user}
    assert await counters[0].count(user) == 10 and await counters[1].count(address) == 10


async def test_nothing_taken_when_one_cap_is_full(counters: list[ShareCounters]) -> None:
    user, address = _key("user"), _key("address")
    assert await counters[0].acquire("a", {address: 1}, 60) is None
    assert await counters[1].acquire("b", {user: 5, address: 1}, 60) == address
    assert await counters[2].count(user) == 0
    assert await counters[0].acquire("a", {address: 1}, 60) is None  # a holder again: fine


async def test_release_and_expiry(counters: list[ShareCounters]) -> None:
    key = _key("user")
    assert await counters[0].acquire("kept", {key: 2}, 0.3) is None
    assert await counters[0].acquire("gone", {key: 2}, 60) is None
    await counters[1].release("gone", [key])
    assert await counters[2].count(key) == 1
    await counters[0].renew([(key, "kept")], 60)  # renewed: outlives its first lease
    await asyncio.sleep(0.5)
    assert await counters[1].count(key) == 1
    assert await counters[0].acquire("short", {key: 2}, 0.2) is None
    await asyncio.sleep(0.4)  # a dead node's lease expires on its own
    assert await counters[2].count(key) == 1
