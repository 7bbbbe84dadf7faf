"""KeyStore: plaintext once, only a hash stored, list, revoke, lookup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.keys import KEY_PREFIX, PREFIX_CHARS, KeyStore, hash_key

ALICE = "11111111-1111-4111-8111-111111111111"
BOB = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    """A migrated SQLite database in ``tmp_path``."""
    store = Storage(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def test_create_returns_plaintext_once_and_stores_only_hash(storage: Storage) -> None:
    keys = KeyStore(storage)
    created = await keys.create(ALICE, "laptop")
    assert created.key.startswith(KEY_PREFIX)
    assert len(created.key) >= 40
    assert created.info.prefix == created.key[:PREFIX_CHARS]
    assert created.info.name == "laptop"
    assert created.info.revoked is False
    async with storage.begin() as conn:
        rows = (await conn.execute(select(t.api_keys))).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.key_hash == hash_key(created.key)
    assert created.key not in {str(v) for v in row._mapping.values()}


async def test_keys_are_distinct(storage: Storage) -> None:
    keys = KeyStore(storage)
    made = [await keys.create(ALICE) for _ in range(5)]
    assert len({m.key for m in made}) == 5
    assert len({m.info.prefix for m in made}) == 5


async def test_lookup_finds_owner_and_rejects_unknown(storage: Storage) -> None:
    keys = KeyStore(storage)
    alice = await keys.create(ALICE)
    bob = await keys.create(BOB)
    assert await keys.lookup(alice.key) == ALICE
    assert await keys.lookup(bob.key) == BOB
    assert await keys.lookup(alice.key + "x") is None
    assert await keys.lookup("sk-not-ours") is None
    assert await keys.lookup(KEY_PREFIX + "x" * 500) is None
    assert await keys.lookup("") is None


async def test_list_shows_prefix_name_time_and_state_only(storage: Storage) -> None:
    keys = KeyStore(storage)
    first = await keys.create(ALICE, "one")
    await keys.create(ALICE, "two")
    await keys.create(BOB, "bob's")
    listed = await keys.list_keys(ALICE)
    assert [k.name for k in listed] == ["one", "two"]
    assert listed[0].prefix == first.info.prefix
    entry = listed[0].as_dict()
    assert set(entry) == {"prefix", "name", "created_at", "revoked"}
    assert first.key not in str(entry)
    assert await keys.list_keys("33333333-3333-4333-8333-333333333333") == []


async def test_revoke_stops_lookup_and_is_scoped_to_owner(storage: Storage) -> None:
    keys = KeyStore(storage)
    alice = await keys.create(ALICE)
    assert not await keys.revoke(alice.info.prefix, user_guid=BOB)
    assert await keys.lookup(alice.key) == ALICE
    assert await keys.revoke(alice.info.prefix, user_guid=ALICE)
    assert await keys.lookup(alice.key) is None
    assert not await keys.revoke(alice.info.prefix)  # already revoked
    assert not await keys.revoke("rah_nothere")
    (listed,) = await keys.list_keys(ALICE)
    assert listed.revoked is True


async def test_revoke_without_owner_is_for_administrators(storage: Storage) -> None:
    keys = KeyStore(storage)
    bob = await keys.create(BOB)
    assert await keys.revoke(bob.info.prefix)
    assert await keys.lookup(bob.key) is None


async def test_long_names_are_cut(storage: Storage) -> None:
    created = await KeyStore(storage).create(ALICE, "  " + "n" * 300 + "  ")
    assert created.info.name == "n" * 100
