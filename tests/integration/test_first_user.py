"""The first-user rule is atomic: a fresh database gets exactly one sysop, however many connect."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from rentahal.storage.database import Storage
from tests.support.client import WSClient
from tests.support.postgres_server import PostgresServer

SIMULTANEOUS = 12
ROUNDS = 3


async def _first_connections(ws_url: str) -> list[bool]:
    """Open SIMULTANEOUS cookie-less sockets at once; each one's ``is_sysop``."""
    clients = await asyncio.gather(*(WSClient.connect(ws_url) for _ in range(SIMULTANEOUS)))
    try:
        infos = await asyncio.gather(*(c.expect("user_info") for c in clients))
        return [bool(info["data"]["is_sysop"]) for info in infos]
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_twelve_first_connections_make_one_sysop(broker_factory) -> None:
    for round_ in range(ROUNDS):
        server = broker_factory()
        flags = await _first_connections(server.ws_url)
        assert sum(flags) == 1, f"round {round_}: {sum(flags)} sysops among {len(flags)}"
        users = server.call(server.storage.list_users())
        assert len(users) == SIMULTANEOUS
        assert sum(u.is_sysop for u in users) == 1


async def _concurrent_creations(storage: Storage) -> int:
    guids = [str(uuid.uuid4()) for _ in range(SIMULTANEOUS)]
    users = await asyncio.gather(*(storage.get_or_create_user(g) for g in guids))
    stored = await storage.list_users()
    assert len(stored) == SIMULTANEOUS
    assert sum(u.is_sysop for u in stored) == sum(u.is_sysop for u in users)
    return sum(u.is_sysop for u in stored)


async def test_concurrent_creations_on_sqlite(tmp_path) -> None:
    for round_ in range(ROUNDS):
        storage = Storage(f"sqlite+aiosqlite:///{tmp_path / f'round{round_}.db'}")
        try:
            await storage.migrate()
            assert await _concurrent_creations(storage) == 1, f"round {round_}"
        finally:
            await storage.close()


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_concurrent_creations_on_postgres() -> None:
    with PostgresServer() as postgres:
        for round_ in range(ROUNDS):
            storage = Storage(postgres.create_database(f"first_{uuid.uuid4().hex[:10]}"))
            try:
                await storage.migrate()
                assert await _concurrent_creations(storage) == 1, f"round {round_}"
            finally:
                await storage.close()
