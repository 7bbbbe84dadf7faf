"""User data sharded over four SQLite and two PostgreSQL shards (real servers)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BrokerFactory
from tests.support.client import WSClient
from tests.support.postgres_server import PostgresServer
from tests.support.servers import BrokerServer, demo_worker_records
from tests.support.shards import db_command, guid_with, rows, url_of, write_installation

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
async def sockets() -> AsyncIterator[list[WSClient]]:
    """Clients of a test, closed after it (also when it fails)."""
    opened: list[WSClient] = []
    yield opened
    for client in opened:
        await client.close()


@pytest.fixture(scope="module")
def pg_pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """Two PostgreSQL servers; each test makes its own databases on them."""
    with PostgresServer() as first, PostgresServer() as second:
        yield first, second


def _seed_url(server: PostgresServer, name: str) -> str:
    """A new database on ``server``, written as the seed writes it (``postgresql://``)."""
    return server.create_database(name).replace("postgresql+asyncpg://", "postgresql://")


async def _system_totals(server: BrokerServer) -> tuple[int, float, float]:
    (found,) = await rows(
        server.settings.database.url,
        "SELECT total_queries, total_processing_time, total_cost FROM system_stats WHERE id = 1",
    )
    return int(found[0]), float(found[1]), float(found[2])


async def _wait_totals(server: BrokerServer, count: int) -> tuple[int, float, float]:
    """The system totals once they count ``count`` queries (the main database lags a commit)."""
    for _ in range(50):
        found = await _system_totals(server)
        if found[0] >= count:
            return found
        await asyncio.sleep(0.1)
    return await _system_totals(server)


async def test_users_spread_over_six_shards_with_exact_totals(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    ref_workers: dict[str, str],
    pg_pair: tuple[PostgresServer, PostgresServer],
    sockets: list[WSClient],
) -> None:
    first, second = pg_pair
    shards = [(f"s{i}", f"shards/s{i}.db") for i in range(4)]
    shards += [("p0", _seed_url(first, "spread_p0")), ("p1", _seed_url(second, "spread_p1"))]
    home = tmp_path / "broker0"
    write_installation(home, shards)
    server = broker_factory(demo_worker_records(ref_workers))
    urls = {name: url_of(home, conn) for name, conn in shards}
    # Prefix 00..0b: the seed's rule (hex value modulo 6) puts two users in every shard.
    guids = [guid_with(f"{i:02x}") for i in range(12)]
    clients = [await WSClient.connect(server.ws_url, g) for g in guids]
    sockets.extend(clients)
    sequences = [await c.connect_sequence() for c in clients]
    # The first user created (in any shard) is the only sysop.
    sysops = [c for c, seq in zip(clients, sequences, strict=True) if seq[0]["data"]["is_sysop"]]
    assert len(sysops) == 1
    results: dict[str, list[dict[str, Any]]] = {g: [] for g in guids}

    async def three(client: WSClient) -> None:
        for n in range(3):
            results[client.guid or ""].append(await client.query(f"{client.guid} #{n}"))

    await asyncio.gather(*(three(c) for c in clients))
    assert all(r["type"] == "query_result" for rs in results.values() for r in rs)

    for i, guid in enumerate(guids):
        url = urls[shards[i % 6][0]]
        (user,) = await rows(
            url, "SELECT query_count, total_cost FROM users WHERE guid = :g", g=guid
        )
        history = await rows(
            url, "SELECT prompt, cost FROM queries WHERE user_guid = :g ORDER BY id", g=guid
        )
        assert [h[0] for h in history] == [f"{guid} #{n}" for n in range(3)]
        assert user[0] == 3
        assert math.isclose(user[1], sum(r["cost"] for r in results[guid]), abs_tol=1e-9)
        for name, other in urls.items():  # nowhere else
            if name != shards[i % 6][0]:
                assert await rows(other, "SELECT 1 FROM users WHERE guid = :g", g=guid) == []
    assert await rows(server.settings.database.url, "SELECT COUNT(*) FROM users") == [(0,)]

    every = [r for rs in results.values() for r in rs]
    count, processing_time, cost = await _wait_totals(server, len(every))
    assert count == 36
    assert math.isclose(processing_time, sum(r["processing_time"] for r in every), abs_tol=1e-9)
    assert math.isclose(cost, sum(r["cost"] for r in every), abs_tol=1e-9)

    # Sysop views gather every shard.
    sysop = sysops[0]
    await sysop.send({"type": "get_stats"})
    listed = (await sysop.expect("user_stats"))["data"]
    assert sorted(u["guid"] for u in listed) == sorted(guids)
    # Nicknames stay unique across shards; an API key is found from the key alone.
    await clients[1].send({"type": "set_nickname", "nickname": "hal"})
    assert (await clients[1].expect("user_info"))["data"]["nickname"] == "hal"
    await clients[4].send({"type": "set_nickname", "nickname": "hal"})
    assert "taken" in (await clients[4].expect("error"))["message"]
    await clients[4].send({"type": "create_api_key", "name": "laptop"})
    key = (await clients[4].expect("api_key_created"))["key"]
    owner = server.call(server.broker.user_of_key(key))
    assert owner is not None and owner.guid == guids[4]
    assert len(await rows(urls["p0"], "SELECT 1 FROM api_keys")) == 1
    assert await rows(server.settings.database.url, "SELECT COUNT(*) FROM api_keys") == [(0,)]
    checked = db_command(home, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_stopped_postgresql_shard_affects_only_its_users(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    ref_workers: dict[str, str],
    pg_pair: tuple[PostgresServer, PostgresServer],
    sockets: list[WSClient],
) -> None:
    first, second = pg_pair
    shards = [("s0", "shards/s0.db")]
    shards += [("p0", _seed_url(first, "down_p0")), ("p1", _seed_url(second, "down_p1"))]
    home = tmp_path / "broker0"
    write_installation(home, shards)
    server = broker_factory(demo_worker_records(ref_workers), database={"spool_replay_s": 0.5})
    # 00 -> s0, 01 -> p0 (the server we stop), 02 -> p1
    lite, down, other = guid_with("00"), guid_with("01"), guid_with("02")
    clients = {g: await WSClient.connect(server.ws_url, g) for g in (lite, down, other)}
    sockets.extend(clients.values())
    for client in clients.values():
        await client.connect_sequence()
        assert (await client.query("before"))["type"] == "query_result"
    answered = ["before"]
    first.pause()
    try:
        # In flight as it goes down: answered, and kept in the spool until it is back.
        answer = await clients[down].query("while down")
        assert answer["type"] == "query_result"
        answered.append("while down")
        later = await clients[down].expect("error")
        assert "recorded when the database is back" in later["message"]
        refused: dict[str, Any] = {}
        for n in range(40):
            refused = await clients[down].query(f"refused {n}")
            if refused["type"] == "error" and "holding your account" in refused["message"]:
                break
            if refused["type"] == "query_result":  # before its shard was known to be down
                answered.append(f"refused {n}")
            await asyncio.sleep(0.1)
        assert "database holding your account is unavailable" in refused["message"]
        for guid in (lite, other):
            for n in range(3):
                assert (await clients[guid].query(f"up {n}"))["type"] == "query_result"
    finally:
        first.resume()
    p0 = url_of(home, shards[1][1])
    found: list[tuple[Any, ...]] = []
    for _ in range(100):
        found = await rows(p0, "SELECT prompt FROM queries ORDER BY id")
        if len(found) == len(answered):
            break
        await asyncio.sleep(0.1)
    assert [r[0] for r in found] == answered
    (user,) = await rows(p0, "SELECT query_count FROM users")
    assert user == (len(answered),)
    assert (await _wait_totals(server, 2 + len(answered) + 6))[0] == 2 + len(answered) + 6
    again: dict[str, Any] = {}
    for _ in range(40):  # the shard answers again: so does its user
        again = await clients[down].query("after")
        if again["type"] == "query_result":
            break
        await asyncio.sleep(0.2)
    assert again["type"] == "query_result"
    checked = db_command(home, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
