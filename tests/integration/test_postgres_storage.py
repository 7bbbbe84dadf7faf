"""``Storage`` and ``Ledger`` on a real PostgreSQL started by the fixture."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from rentahal.config import CostSettings
from rentahal.models import AIWorker, Job, Query, Result
from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.ledger import Ledger
from tests.support.postgres_server import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for this module; each test gets its own database."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
async def storage(postgres: PostgresServer) -> AsyncIterator[Storage]:
    """A migrated ``Storage`` on a fresh database."""
    url = postgres.create_database(f"test_{uuid.uuid4().hex[:12]}")
    result = Storage(url)
    await result.migrate()
    yield result
    await result.close()


def guid() -> str:
    """A new user GUID."""
    return str(uuid.uuid4())


def done(job: Job, processing_time: float) -> Result:
    """A completed result of ``job``."""
    return Result(
        job_id=job.job_id,
        user_guid=job.user_guid,
        status="done",
        result="answer",
        processing_time=processing_time,
        worker="w1",
        attempts=1,
    )


def chat_job(user: str) -> Job:
    """A chat job of ``user``."""
    return Job(user_guid=user, query=Query(prompt="hello", query_type="chat"))


async def test_migrate_twice_is_idempotent(storage: Storage) -> None:
    await storage.migrate()
    async with storage.begin() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        stats_rows = (await conn.execute(select(func.count()).select_from(t.system_stats))).scalar()
        tables: set[str] = set(
            (
                await conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
        )
    assert version == "0006"
    assert stats_rows == 1
    assert {"users", "queries", "ai_workers", "huggingface_models", "system_stats"} <= tables
    assert {"api_keys", "realm_config", "federation_peers"} <= tables
    stats = await storage.system_stats()
    assert (stats["total_queries"], stats["total_cost"]) == (0, 0.0)


async def test_first_user_is_sysop(storage: Storage) -> None:
    first, second = guid(), guid()
    assert (await storage.get_or_create_user(first)).is_sysop
    assert not (await storage.get_or_create_user(second)).is_sysop
    again = await storage.get_or_create_user(first)
    assert again.is_sysop and again.guid == first
    assert {u.guid for u in await storage.list_users()} == {first, second}


async def test_ledger_totals_equal_the_sums_exactly(storage: Storage) -> None:
    costs = CostSettings()
    ledger = Ledger(storage, costs)
    users = [guid(), guid()]
    for user in users:
        await storage.get_or_create_user(user)
    rng = random.Random(5)
    expected_user = {u: [0.0, 0.0, 0] for u in users}
    total_time = total_cost = 0.0
    for n in range(40):
        user = users[n % 2]
        job = chat_job(user)
        result = ledger.price(done(job, rng.uniform(0.05, 30.0)))
        assert await ledger.record(job, result)
        # The database adds in the same order, in the same double precision.
        expected_user[user][0] += result.processing_time
        expected_user[user][1] += result.cost
        expected_user[user][2] += 1
        total_time += result.processing_time
        total_cost += result.cost
    for user in users:
        record = await storage.get_user(user)
        assert record is not None
        assert [record.total_query_time, record.total_cost, record.query_count] == (
            expected_user[user]
        )
        rows = await storage.recent_queries(user, limit=100)
        assert len(rows) == 20
        assert all(row["status"] == "done" for row in rows)
    stats = await storage.system_stats()
    assert stats["total_queries"] == 40
    assert stats["total_processing_time"] == total_time
    assert stats["total_cost"] == total_cost


async def test_concurrent_records_lose_no_update(storage: Storage) -> None:
    # Dyadic prices and times make every sum exact in any order.
    ledger = Ledger(storage, CostSettings(base_cost_per_query=0.25, cost_per_second=0.5))
    user = guid()
    await storage.get_or_create_user(user)
    jobs = [chat_job(user) for _ in range(30)]
    results = [ledger.price(done(job, (i % 8) / 4)) for i, job in enumerate(jobs)]
    recorded = await asyncio.gather(
        *(ledger.record(j, r) for j, r in zip(jobs, results, strict=True))
    )
    assert all(recorded)
    record = await storage.get_user(user)
    assert record is not None
    assert record.query_count == 30
    assert record.total_query_time == sum(r.processing_time for r in results)
    assert record.total_cost == sum(r.cost for r in results)


async def test_same_job_recorded_twice_is_charged_once(storage: Storage) -> None:
    ledger = Ledger(storage, CostSettings())
    user = guid()
    await storage.get_or_create_user(user)
    job = chat_job(user)
    result = ledger.price(done(job, 2.5))
    assert await ledger.record(job, result) is True
    assert await ledger.record(job, result) is False
    again = await asyncio.gather(*(ledger.record(job, result) for _ in range(5)))
    assert not any(again)
    record = await storage.get_user(user)
    assert record is not None
    assert (record.query_count, record.total_cost) == (1, result.cost)
    assert len(await storage.recent_queries(user)) == 1
    assert (await storage.system_stats())["total_queries"] == 1


async def test_failed_and_cancelled_jobs_are_not_charged(storage: Storage) -> None:
    ledger = Ledger(storage, CostSettings())
    user = guid()
    await storage.get_or_create_user(user)
    for status in ("failed", "cancelled"):
        job = chat_job(user)
        result = ledger.price(
            Result(
                job_id=job.job_id,
                user_guid=user,
                status=status,
                processing_time=3.0,
                error="boom",
            )
        )
        assert result.cost == 0.0
        assert await ledger.record(job, result)
    record = await storage.get_user(user)
    assert record is not None
    assert (record.query_count, record.total_cost, record.total_query_time) == (0, 0.0, 0.0)
    rows = await storage.recent_queries(user)
    assert sorted(row["status"] for row in rows) == ["cancelled", "failed"]
    assert all(row["cost"] == 0.0 and row["result_type"] is None for row in rows)
    stats = await storage.system_stats()
    assert (stats["total_queries"], stats["total_cost"]) == (0, 0.0)


async def test_workers_saved_listed_replaced_deleted(storage: Storage) -> None:
    chat = AIWorker(
        name="chat-1",
        address="http://10.0.0.5:8000/",
        type="chat",
        protocol="ollama",
        max_concurrency=4,
        models=["llama3", "mistral"],
        realm="$CHAT",
    )
    imagine = AIWorker(name="sd-1", address="10.0.0.6:7860", type="imagine", api_key="secret")
    await storage.save_worker(chat)
    await storage.save_worker(imagine)
    assert await storage.list_workers() == [chat, imagine]
    moved = chat.model_copy(update={"address": "10.0.0.7:8000", "models": []})
    await storage.save_worker(moved)
    workers = {w.name: w for w in await storage.list_workers()}
    assert workers == {"chat-1": moved, "sd-1": imagine}
    assert workers["sd-1"].protocol == "a1111" and workers["sd-1"].api_key == "secret"
    degraded = moved.model_copy(update={"health_score": 42.5, "is_blacklisted": True})
    await storage.save_health([degraded])
    workers = {w.name: w for w in await storage.list_workers()}
    assert workers["chat-1"].health_score == 42.5 and workers["chat-1"].is_blacklisted
    assert await storage.delete_worker("sd-1") is True
    assert await storage.delete_worker("sd-1") is False
    assert [w.name for w in await storage.list_workers()] == ["chat-1"]


async def test_system_status_says_when_the_database_is_down(broker_factory: Any) -> None:
    with PostgresServer() as down_later:
        server = broker_factory(database={"database_url": down_later.url})
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            up = await http.get("/debug/system_status")
            assert up.json()["database_exists"] is True
            down_later.stop()
            started = time.monotonic()
            down = await http.get("/debug/system_status")
            assert time.monotonic() - started < 5.0
        assert down.status_code == 200
        assert down.json()["database_exists"] is False
