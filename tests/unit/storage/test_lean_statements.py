"""The ledger's statements on the raw sqlite3 connection give SQLAlchemy's rows exactly."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError, StatementError

from rentahal.config import CostSettings
from rentahal.models import Job, Query, Result
from rentahal.storage import fences, totals
from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.lean import MAX_EXPANDED
from rentahal.storage.ledger import Ledger
from rentahal.storage.spool import LedgerSpool


async def _migrated(path: Path) -> Storage:
    storage = Storage(f"sqlite+aiosqlite:///{path}")
    await storage.migrate()
    return storage


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Storage, Storage]]:
    """Two migrated SQLite files: writes on the lean path, and on SQLAlchemy's only."""
    lean = await _migrated(tmp_path / "lean.db")
    plain = await _migrated(tmp_path / "plain.db")
    direct, plain.direct = plain.direct, None  # every write through the async engine
    assert direct is not None and lean.direct is not None
    await direct.close()
    try:
        yield lean, plain
    finally:
        await lean.close()
        await plain.close()


def _table(storage: Storage, table: str) -> list[tuple[Any, ...]]:
    """The rows of ``table`` as SQLite stores them (no SQLAlchemy processing)."""
    with sqlite3.connect(str(storage.engine.url.database)) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def _typed(rows: list[Any]) -> list[list[tuple[Any, str]]]:
    """Each value with its type's name (``1 == 1.0``, but an int is not a float)."""
    values = [row.values() if isinstance(row, dict) else row for row in rows]
    return [[(v, type(v).__name__) for v in row] for row in values]


def _rows(guids: list[str]) -> list[dict[str, Any]]:
    """Ledger rows of every kind: charged, failed, odd texts and numbers, missing values."""
    stamp = datetime(2026, 3, 4, 5, 6, 7, 890123)
    base: dict[str, Any] = {
        "query_type": "chat",
        "model_type": "ollama",
        "model_name": "m",
        "prompt": "p",
        "processing_time": 0.1,
        "cost": 0.1 + 0.2,
        "timestamp": stamp,
        "status": "done",
        "error": None,
        "queue_wait": 0.0,
        "worker": "w1",
        "realm": "default",
        "attempts": 1,
        "result_type": "text",
    }
    return [
        base | {"user_guid": guids[0], "job_id": "j1"},
        base
        | {
            "user_guid": guids[1],
            "job_id": "j2",
            "prompt": 'it\'s "quoted" \u00e9\u6f22 \x00 nul',
            "processing_time": 1e-9,
            "cost": 12345.678901234567,
            "timestamp": stamp.replace(microsecond=0),
        },
        base
        | {
            "user_guid": guids[0],
            "job_id": "j3",
            "status": "failed",
            "error": "worker down",
            "cost": 0.0,
            "result_type": None,
            "queue_wait": None,
            "attempts": 3,
        },
        base | {"user_guid": guids[1], "job_id": "j4", "processing_time": 2.5, "cost": 0.75},
    ]


async def _replay_one_by_one(
    storage: Storage, spool: LedgerSpool, rows: list[dict[str, Any]]
) -> None:
    ledger = Ledger(storage, CostSettings(), spool=spool)
    for row in rows:
        await spool.append([row])
        await asyncio.sleep(0.01)  # a lone row after a pause: the ledger writes it inline
        assert await ledger.replay() == 1
    assert await ledger.refund("j4", rows[3]["user_guid"], "could not hand it out")
    await ledger.close()


async def test_lean_rows_equal_sqlalchemy_rows_field_by_field(
    pair: tuple[Storage, Storage], tmp_path: Path
) -> None:
    lean, plain = pair
    assert lean.direct is not None
    guids = [str(uuid.uuid4()), str(uuid.uuid4())]
    for storage in pair:
        for guid in guids:  # the first is sysop: a True and a False boolean come back
            await storage.get_or_create_user(guid)
    rows = _rows(guids)
    for storage, name in ((lean, "lean"), (plain, "plain")):
        await _replay_one_by_one(storage, LedgerSpool(tmp_path / f"{name}.jsonl"), rows)
    assert lean.direct.commits == 5  # four rows and the refund, each on the loop
    assert lean.direct.runner.executed >= 4 * 3  # insert, charge, totals per row

    assert _typed(_table(lean, "queries")) == _typed(_table(plain, "queries"))
    assert _typed(_table(lean, "users")) == _typed(_table(plain, "users"))
    lean_stats, plain_stats = _table(lean, "system_stats"), _table(plain, "system_stats")
    assert _typed([r[:4] for r in lean_stats]) == _typed([r[:4] for r in plain_stats])
    assert lean_stats[0][:4] == (
        1,
        2,
        pytest.approx(0.1 + 1e-9),
        pytest.approx(0.1 + 0.2 + 12345.678901234567),
    )
    # last_updated is the clock of each write; stored in SQLAlchemy's format either way
    assert len(lean_stats[0][4]) == len(plain_stats[0][4]) == len("2026-03-04 05:06:07.890123")

    # and read back through SQLAlchemy, the lean rows are the same values and types
    for guid in guids:
        lean_recent, plain_recent = (
            await lean.recent_queries(guid),
            await plain.recent_queries(guid),
        )
        assert _typed(lean_recent) == _typed(plain_recent) and len(lean_recent) == 2
        assert await lean.get_user(guid) == await plain.get_user(guid)
    assert lean_recent[-1]["timestamp"] == "2026-03-04T05:06:07"
    lean_totals, plain_totals = await lean.system_stats(), await plain.system_stats()
    assert lean_totals.keys() == plain_totals.keys()
    assert datetime.fromisoformat(lean_totals["last_updated"]) > datetime(2026, 1, 1)
    del lean_totals["last_updated"], plain_totals["last_updated"]
    assert lean_totals == plain_totals


async def test_returning_and_select_rows_match_sqlalchemy_in_values_and_types(
    pair: tuple[Storage, Storage],
) -> None:
    lean, _plain = pair
    assert lean.direct is not None
    from rentahal.storage.ledger import _CHARGE_ONE

    guid = str(uuid.uuid4())
    prefixes = [guid[:2], "zz"]

    def setup(conn: Connection) -> None:
        conn.execute(insert(t.prefix_fences), [{"prefix": guid[:2]}, {"prefix": "zz"}])
        applied = [{"batch_id": b, "applied_at": 1.5} for b in ("b1", "b2")]
        conn.execute(insert(t.totals_applied), applied)

    def read(conn: Connection) -> list[list[Any]]:
        return [
            list(
                _CHARGE_ONE.rows(
                    conn, {"b_guid": guid, "b_time": t_s, "b_cost": 0.25, "b_count": 1}
                )
            )
            for t_s in (0.5, 0.5, 0.25)  # 1.0: SQLite's RETURNING gives an int, both ways
        ] + [
            list(fences._CHECK["sqlite"].rows(conn, {"prefixes": prefixes})),
            list(fences._CHECK["sqlite"].rows(conn, {"prefixes": []})),
            list(totals._APPLIED_AMONG.rows(conn, {"ids": ["b1", "b2", "nope"]})),
        ]

    results = []
    for storage in pair:
        assert (await storage.get_or_create_user(guid)).is_sysop
        await storage.write(setup, inline=False)
        results.append(await storage.write(read))
    assert lean.direct.runner.executed == 6
    raw, by_sqlalchemy = results
    for lean_rows, sa_rows in zip(raw, by_sqlalchemy, strict=True):
        assert len(lean_rows) == len(sa_rows)
        for mine, theirs in zip(lean_rows, sa_rows, strict=True):
            assert mine._fields == theirs._fields
            if "now" in mine._fields:  # each database's clock
                assert abs(mine.now - theirs.now) < 60
                mine, theirs = mine[:-1], theirs[:-1]
            assert tuple(mine) == tuple(theirs)
            assert [type(v) for v in mine] == [type(v) for v in theirs]
    assert [len(rows) for rows in raw] == [1, 1, 1, 2, 0, 2]
    assert raw[0][0].is_sysop is True and raw[0][0].is_banned is False
    assert raw[2][0].query_count == 3 and raw[2][0].total_query_time == 1.25


async def test_a_duplicate_job_is_recorded_once_on_the_lean_path(
    pair: tuple[Storage, Storage],
) -> None:
    lean, _plain = pair
    assert lean.direct is not None
    guid = str(uuid.uuid4())
    await lean.get_or_create_user(guid)
    ledger = Ledger(lean, CostSettings())
    job = Job(user_guid=guid, query=Query(prompt="p", query_type="chat"))
    result = ledger.price(Result.of(job, "done", result="a", processing_time=0.5))
    assert await ledger.record(job, result)
    await asyncio.sleep(0.01)
    assert not await ledger.record(job, result)  # IntegrityError from sqlite3, retried alone
    await asyncio.sleep(0.01)
    other = Job(user_guid=guid, query=Query(prompt="q", query_type="chat"))
    assert await ledger.record(other, ledger.price(Result.of(other, "done", processing_time=1)))
    await ledger.close()
    assert lean.direct.commits == 2 and lean.direct.locked == 0
    assert len(_table(lean, "queries")) == 2
    user = await lean.get_user(guid)
    assert user is not None and user.query_count == 2
    assert (await lean.system_stats())["total_queries"] == 2

    def insert_again(conn: Connection) -> None:
        from rentahal.storage.ledger import _INSERT_QUERY

        row = dict(_rows([guid, guid])[0], job_id=job.job_id)
        _INSERT_QUERY.execute(conn, [row])

    with pytest.raises(IntegrityError):
        await lean.write(insert_again)


async def test_a_taken_lock_writes_nothing_raw_and_the_connection_goes_on(
    pair: tuple[Storage, Storage],
) -> None:
    lean, _plain = pair
    assert lean.direct is not None
    guid = str(uuid.uuid4())
    await lean.get_or_create_user(guid)
    ledger = Ledger(lean, CostSettings())
    path = str(lean.engine.url.database)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    job = Job(user_guid=guid, query=Query(prompt="p", query_type="chat"))
    recording = asyncio.create_task(
        ledger.record_with_totals(job, ledger.price(Result.of(job, "done")))
    )
    await asyncio.sleep(0.2)
    assert lean.direct.locked == 1 and not recording.done()
    blocker.execute("COMMIT")
    blocker.close()
    first, user = await asyncio.wait_for(recording, 10)
    assert first and user is not None and user.query_count == 1
    await asyncio.sleep(0.01)
    again = Job(user_guid=guid, query=Query(prompt="p", query_type="chat"))
    first, user = await ledger.record_with_totals(again, ledger.price(Result.of(again, "done")))
    await ledger.close()
    assert first and user is not None and user.query_count == 2
    assert lean.direct.commits == 1  # the second one on the loop again, same connection
    assert len(_table(lean, "queries")) == 2


async def test_a_failing_transaction_rolls_back_raw_and_sqlalchemy_statements(
    pair: tuple[Storage, Storage],
) -> None:
    lean, _plain = pair
    assert lean.direct is not None
    guid = str(uuid.uuid4())
    await lean.get_or_create_user(guid)
    from rentahal.storage.ledger import _INSERT_QUERY

    def insert_then_fail(conn: Connection) -> None:
        _INSERT_QUERY.execute(conn, [_rows([guid, guid])[0]])
        totals.add_sync(conn, t.system_stats, totals.Delta(1, 1.0, 1.0))
        conn.execute(t.huggingface_models.insert().values(name="m", type="chat"))
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await lean.write(insert_then_fail)
    assert _table(lean, "queries") == [] and _table(lean, "huggingface_models") == []
    assert (await lean.system_stats())["total_queries"] == 0


async def test_many_expanded_values_go_through_sqlalchemy(pair: tuple[Storage, Storage]) -> None:
    lean, _plain = pair
    assert lean.direct is not None
    ids = [f"b{i}" for i in range(MAX_EXPANDED + 1)]

    def read(conn: Connection) -> int:
        return len(totals._APPLIED_AMONG.rows(conn, {"ids": ids}))

    executed = lean.direct.runner.executed
    assert await lean.write(read) == 0
    assert lean.direct.runner.executed == executed
    assert (
        await lean.write(lambda conn: len(totals._APPLIED_AMONG.rows(conn, {"ids": ids[:2]}))) == 0
    )
    assert lean.direct.runner.executed == executed + 1


async def test_close_returns_the_write_connection(pair: tuple[Storage, Storage]) -> None:
    lean, _plain = pair
    direct = lean.direct
    assert direct is not None
    await lean.write(lambda conn: totals.add_sync(conn, t.system_stats, totals.Delta(1, 0.5, 0.5)))
    await lean.write(lambda conn: totals.add_sync(conn, t.system_stats, totals.Delta(1, 0.5, 0.5)))
    pool: Any = direct.engine.pool
    assert pool.checkedout() == 1  # one persistent connection for every write
    await direct.close()
    assert pool.checkedout() == 0
    lean.direct = None
    assert (await lean.system_stats())["total_queries"] == 2


async def test_bad_parameters_raise_what_sqlalchemy_raises(pair: tuple[Storage, Storage]) -> None:
    from rentahal.storage.ledger import _CHARGE_USER, _INSERT_QUERY

    guid = str(uuid.uuid4())
    bad_time = dict(_rows([guid, guid])[0], timestamp="yesterday")
    calls = {
        "missing": lambda conn: _CHARGE_USER.execute(conn, {"b_guid": guid}),
        "bad type": lambda conn: _INSERT_QUERY.execute(conn, [bad_time]),
    }
    for name, call in calls.items():
        errors = []
        for storage in pair:
            with pytest.raises(StatementError) as caught:
                await storage.write(call)
            errors.append((type(caught.value), str(caught.value.orig)))
        assert errors[0] == errors[1], name
    for storage in pair:
        assert _table(storage, "queries") == []
