"""Storage.write on a real SQLite file: on the loop's own connection, and when the lock is taken."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, select

from rentahal.config import CostSettings
from rentahal.models import Job, Query, Result
from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.ledger import Ledger


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    """A migrated SQLite file."""
    storage = Storage(f"sqlite+aiosqlite:///{tmp_path / 'direct.db'}")
    await storage.migrate()
    try:
        yield storage
    finally:
        await storage.close()


def _finished(guid: str) -> tuple[Job, Result]:
    job = Job(user_guid=guid, query=Query(prompt="p", query_type="chat"))
    return job, Result.of(job, "done", result="a", processing_time=0.5)


def _rows(path: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM queries").fetchone()[0])


async def test_a_single_row_is_written_on_the_loop_connection(storage: Storage) -> None:
    assert storage.direct is not None
    guid = str(uuid.uuid4())
    await storage.get_or_create_user(guid)
    ledger = Ledger(storage, CostSettings())
    job, result = _finished(guid)
    first, user = await ledger.record_with_totals(job, ledger.price(result))
    await ledger.close()
    assert first and user is not None and user.query_count == 1
    assert storage.direct.commits == 1 and storage.direct.locked == 0
    assert _rows(str(storage.engine.url.database)) == 1


async def test_a_taken_write_lock_sends_the_batch_to_the_async_engine(storage: Storage) -> None:
    assert storage.direct is not None
    guid = str(uuid.uuid4())
    await storage.get_or_create_user(guid)
    path = str(storage.engine.url.database)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ledger = Ledger(storage, CostSettings())
    job, result = _finished(guid)
    recording = asyncio.create_task(ledger.record_with_totals(job, ledger.price(result)))
    await asyncio.sleep(0.3)  # the loop keeps running meanwhile
    assert not recording.done()
    assert storage.direct.locked == 1
    blocker.execute("COMMIT")
    blocker.close()
    first, user = await asyncio.wait_for(recording, 10)
    await ledger.close()
    assert first and user is not None and user.query_count == 1
    assert _rows(path) == 1


async def test_a_batch_under_load_is_one_thread_call_on_the_plain_connection(
    storage: Storage,
) -> None:
    assert storage.direct is not None
    guids = [str(uuid.uuid4()) for _ in range(3)]
    for guid in guids:
        await storage.get_or_create_user(guid)
    ledger = Ledger(storage, CostSettings())
    finished = [_finished(guid) for guid in guids for _ in range(20)]
    outcomes = await asyncio.gather(
        *(ledger.record_with_totals(job, ledger.price(result)) for job, result in finished)
    )
    await ledger.close()
    assert all(first for first, _ in outcomes)
    assert _rows(str(storage.engine.url.database)) == 60
    # the rows came together: one batch, one transaction on the plain connection's thread
    assert storage.direct.commits == 1 and storage.direct.locked == 0
    totals = {u.guid: u.query_count for _, u in outcomes if u is not None}
    assert max(totals.values()) == 20 and set(totals) == set(guids)


async def test_a_write_on_the_loop_does_not_wait_for_a_thread_write(storage: Storage) -> None:
    """The loop's write finds the connection in use: it goes to the async engine."""
    assert storage.direct is not None
    inside, go_on = threading.Event(), threading.Event()
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def slow_insert(conn: Connection) -> None:
        threads.append(threading.get_ident())
        conn.execute(t.huggingface_models.insert().values(name="slow", type="chat"))
        inside.set()
        go_on.wait(10)

    def quick_insert(conn: Connection) -> None:
        conn.execute(t.huggingface_models.insert().values(name="quick", type="chat"))

    slow = asyncio.create_task(storage.write(slow_insert, inline=False))
    assert await asyncio.to_thread(inside.wait, 10)
    quick = asyncio.create_task(storage.write(quick_insert))
    await asyncio.sleep(0.2)  # the loop runs; the quick write waits for SQLite's lock
    assert storage.direct.locked == 1 and not quick.done()
    go_on.set()
    await asyncio.wait_for(asyncio.gather(slow, quick), 10)
    assert threads and threads[0] != loop_thread

    def names(conn: Connection) -> list[str]:
        return sorted(conn.execute(select(t.huggingface_models.c.name)).scalars())

    assert await storage.write(names) == ["quick", "slow"]


async def test_write_answers_after_commit_and_errors_roll_back(storage: Storage) -> None:
    def insert_then_fail(conn: Connection) -> None:
        conn.execute(t.huggingface_models.insert().values(name="m", type="chat"))
        raise ValueError("no")

    with pytest.raises(ValueError):
        await storage.write(insert_then_fail)

    def count(conn: Connection) -> int:
        counted = conn.execute(select(func.count()).select_from(t.huggingface_models))
        return int(counted.scalar_one())

    assert await storage.write(count) == 0
    assert await storage.write(count, inline=False) == 0


async def test_memory_database_has_no_direct_connection() -> None:
    storage = Storage("sqlite+aiosqlite:///:memory:")
    try:
        assert storage.direct is None
    finally:
        await storage.close()
