"""LedgerSpool and Ledger replay on a real SQLite file: refused rows come back once; refunds."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rentahal.config import CostSettings, DatabaseSettings
from rentahal.errors import LedgerDeferred
from rentahal.models import Job, Query, Result
from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.ledger import Ledger
from rentahal.storage.spool import LedgerSpool, spool_path

COSTS = CostSettings()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[Storage, Storage, str]]:
    """A writable and a read-only Storage on one migrated SQLite file, and a user."""
    path = tmp_path / "ledger.db"
    writable = Storage(f"sqlite+aiosqlite:///{path}")
    await writable.migrate()
    guid = str(uuid.uuid4())
    await writable.get_or_create_user(guid)
    read_only = Storage(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    try:
        yield writable, read_only, guid
    finally:
        await read_only.close()
        await writable.close()


def _finished(guid: str, seconds: float) -> tuple[Job, Result]:
    job = Job(user_guid=guid, query=Query(prompt="p", query_type="chat"))
    return job, Result.of(job, "done", result="a", processing_time=seconds)


async def _totals(storage: Storage, guid: str) -> tuple[int, float, int, float, int]:
    async with storage.begin() as conn:
        rows = (await conn.execute(select(func.count()).select_from(t.queries))).scalar_one()
        user = (await conn.execute(select(t.users).where(t.users.c.guid == guid))).one()
        stats = (await conn.execute(select(t.system_stats))).one()
    return rows, user.total_cost, user.query_count, stats.total_cost, stats.total_queries


async def test_refused_rows_are_spooled_and_replayed_once(
    db: tuple[Storage, Storage, str], tmp_path: Path
) -> None:
    writable, read_only, guid = db
    spool = LedgerSpool(tmp_path / "ledger-spool.jsonl")
    refused = Ledger(read_only, COSTS, spool)
    jobs = [_finished(guid, s) for s in (1.0, 2.0, 3.0)]
    for job, result in jobs:
        with pytest.raises(LedgerDeferred):
            await refused.record(job, refused.price(result))
    await refused.close()
    assert spool.pending()
    assert await _totals(writable, guid) == (0, 0.0, 0, 0.0, 0)

    saved = tmp_path / "saved.jsonl"
    shutil.copy(spool.path, saved)
    ledger = Ledger(writable, COSTS, spool)
    assert await ledger.replay() == 3
    expected = sum(ledger.price(r).cost for _j, r in jobs)
    totals = await _totals(writable, guid)
    rows, user_cost, count, system_cost, system_count = totals
    assert (rows, count, system_count) == (3, 3, 3)
    assert user_cost == pytest.approx(expected) and system_cost == pytest.approx(expected)
    assert not spool.pending()

    # a crash after writing the rows, before the replay file was deleted: counted once
    shutil.copy(saved, spool.replay_path)
    assert await ledger.replay() == 0
    assert await _totals(writable, guid) == totals
    assert not spool.pending()
    await ledger.close()


def _deferred_copy(job_result: tuple[Job, Result], ledger: Ledger) -> tuple[Job, Result]:
    job, result = job_result
    return job, ledger.price(result)


async def test_crash_during_replay_neither_loses_nor_double_counts(
    db: tuple[Storage, Storage, str], tmp_path: Path
) -> None:
    writable, read_only, guid = db
    spool = LedgerSpool(tmp_path / "ledger-spool.jsonl")
    refused = Ledger(read_only, COSTS, spool)
    first, second = _finished(guid, 1.0), _finished(guid, 2.0)
    for job, result in (first, second):
        with pytest.raises(LedgerDeferred):
            await refused.record(job, refused.price(result))
    saved = tmp_path / "saved.jsonl"
    shutil.copy(spool.path, saved)

    # one of the two rows made it before the "crash"; the whole file is replayed after it
    ledger = Ledger(writable, COSTS, spool)
    assert await ledger.record(*_deferred_copy(first, ledger))
    shutil.copy(saved, spool.replay_path)
    spool.path.unlink()
    # a torn last line (a write cut short) is skipped, the rest replayed
    with spool.replay_path.open("ab") as out:
        out.write(b'{"user_guid": "')
    assert await ledger.replay() == 1
    rows, _user_cost, count, _system_cost, system_count = await _totals(writable, guid)
    assert (rows, count, system_count) == (2, 2, 2)
    # rows refused while a replay file waits go to a fresh file and are replayed next
    third = _finished(guid, 3.0)
    shutil.copy(saved, spool.replay_path)
    with pytest.raises(LedgerDeferred):
        await refused.record(third[0], refused.price(third[1]))
    assert await ledger.replay() == 0  # the replay file first: both rows known already
    assert spool.pending()
    assert await ledger.replay() == 1
    assert not spool.pending()
    rows, _user_cost, count, _system_cost, system_count = await _totals(writable, guid)
    assert (rows, count, system_count) == (3, 3, 3)
    await refused.close()
    await ledger.close()


def test_spool_lives_beside_the_sqlite_file_or_in_spool_dir(tmp_path: Path) -> None:
    db_file = tmp_path / "data" / "llm_broker.db"
    assert spool_path(DatabaseSettings(database_name=str(db_file))) == (
        tmp_path / "data" / "ledger-spool.jsonl"
    )
    read_only = DatabaseSettings(
        database_url=f"sqlite+aiosqlite:///file:{db_file}?mode=ro&uri=true"
    )
    assert spool_path(read_only).parent == db_file.parent
    server = DatabaseSettings(database_url="postgresql://u@h/db", spool_dir=str(tmp_path))
    assert spool_path(server, "node-a") == tmp_path / "ledger-spool-node-a.jsonl"


async def test_refund_takes_the_charge_back_once(db: tuple[Storage, Storage, str]) -> None:
    writable, _read_only, guid = db
    ledger = Ledger(writable, COSTS)
    kept, refunded = _finished(guid, 1.0), _finished(guid, 2.0)
    for job, result in (kept, refunded):
        assert await ledger.record(job, ledger.price(result))
    assert await ledger.refund(refunded[0].job_id, guid, "not delivered")
    assert not await ledger.refund(refunded[0].job_id, guid, "not delivered")
    rows, user_cost, count, system_cost, system_count = await _totals(writable, guid)
    expected = ledger.price(kept[1]).cost
    assert (rows, count, system_count) == (2, 1, 1)
    assert user_cost == pytest.approx(expected) and system_cost == pytest.approx(expected)
    never, _result = _finished(guid, 0.5)
    assert not await ledger.refund(never.job_id, guid, "never recorded")
    await ledger.close()
