"""The versioned realm configuration row and its migration, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, inspect

from rentahal.errors import StaleVersion
from rentahal.realms.config import RealmConfig, RealmsFile
from rentahal.realms.service import load_shared
from rentahal.realms.store import RealmStore
from rentahal.storage.database import MIGRATIONS_DIR, Storage
from tests.support.postgres_server import PostgresServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the module's PostgreSQL cases."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'realms.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database(f"realms_{uuid.uuid4().hex[:10]}")
    result = Storage(url)
    await result.migrate()
    yield result
    await result.close()


def _with_chat2() -> RealmsFile:
    file = RealmsFile()
    file.realms["$CHAT2"] = RealmConfig(primary_query_type="chat")
    return file


async def _alembic(storage: Storage, action: str, revision: str) -> set[str]:
    """Run ``alembic upgrade|downgrade revision``; the tables afterwards."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))

    def run(conn: Connection) -> set[str]:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)
        return set(inspect(conn).get_table_names())

    async with storage.begin() as conn:
        return await conn.run_sync(run)


async def test_migration_0003_goes_down_and_up(storage: Storage) -> None:
    assert "realm_config" not in await _alembic(storage, "downgrade", "0002")
    assert "realm_config" in await _alembic(storage, "upgrade", "head")
    store = RealmStore(storage)
    assert await store.load() is None
    assert await store.version() is None


async def test_seed_once_then_versions_move_by_one(storage: Storage, tmp_path: Path) -> None:
    store = RealmStore(storage)
    seed = tmp_path / "realms.yml"
    seed.write_text("realms:\n  $CHAT:\n    primary_query_type: chat\n")
    # Two nodes starting together on a fresh database: one seed wins, both read it.
    first, second = await asyncio.gather(load_shared(store, seed), load_shared(store, None))
    assert first == second
    assert first.version == 1
    assert list(first.file.realms) in (["$CHAT"], list(RealmsFile().realms))
    saved = await store.save(_with_chat2(), {"$CHAT2"}, based_on=1, node_id="nodeA")
    assert saved.version == 2
    loaded = await store.load()
    assert loaded is not None
    assert (loaded.version, loaded.stopped) == (2, frozenset({"$CHAT2"}))
    assert loaded.file.realms["$CHAT2"].primary_query_type == "chat"
    with pytest.raises(StaleVersion) as stale:
        await store.save(RealmsFile(), set(), based_on=1)
    assert (stale.value.expected, stale.value.current) == (1, 2)
    assert await store.version() == 2


async def test_concurrent_writes_on_one_version_one_wins(storage: Storage) -> None:
    store = RealmStore(storage)
    await store.seed(RealmsFile())
    outcomes = await asyncio.gather(
        *(store.save(_with_chat2(), set(), based_on=1, node_id=f"n{i}") for i in range(6)),
        return_exceptions=True,
    )
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, StaleVersion)]
    assert (len(won), len(lost)) == (1, 5), outcomes
    assert await store.version() == 2
