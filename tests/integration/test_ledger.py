"""Ledger rows and totals after many queries, failures and a read-only database."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

from rentahal.models import AIWorker
from rentahal.storage.ledger import compute_cost
from tests.support.client import WSClient
from tests.support.servers import BrokerServer, demo_worker_records, reference_worker


def _db(server: BrokerServer) -> sqlite3.Connection:
    return sqlite3.connect(server.settings.database.database_name)


async def test_totals_are_exact_sums_after_n_queries(broker: BrokerServer) -> None:
    clients = [await WSClient.connect(broker.ws_url) for _ in range(3)]
    for c in clients:
        await c.connect_sequence()

    async def four(i: int, c: WSClient) -> list[dict]:
        return [await c.query(f"q{i}-{j}") for j in range(4)]

    per_client = await asyncio.gather(*(four(i, c) for i, c in enumerate(clients)))
    results = [r for rs in per_client for r in rs]
    assert all(r["type"] == "query_result" for r in results)
    with _db(broker) as db:
        rows = db.execute("SELECT user_guid, processing_time, cost, status FROM queries").fetchall()
        assert len(rows) == 12 and {r[3] for r in rows} == {"done"}
        for _guid, pt, cost, _status in rows:
            assert cost == compute_cost(pt, broker.settings.costs)
        total_q, total_pt, total_cost = db.execute(
            "SELECT total_queries, total_processing_time, total_cost FROM system_stats WHERE id=1"
        ).fetchone()
        assert db.execute("SELECT COUNT(*) FROM system_stats").fetchone()[0] == 1
        assert total_q == 12
        assert abs(total_pt - sum(r[1] for r in rows)) < 1e-9
        assert abs(total_cost - sum(r[2] for r in rows)) < 1e-9
        for c in clients:
            count, cost = db.execute(
                "SELECT query_count, total_cost FROM users WHERE guid=?", (c.guid,)
            ).fetchone()
            mine = [r for r in rows if r[0] == c.guid]
            assert count == len(mine) == 4
            assert abs(cost - sum(r[2] for r in mine)) < 1e-9
    client_costs = sum(r["cost"] for r in results)
    assert abs(client_costs - total_cost) < 1e-9
    for c in clients:
        await c.close()


async def test_failed_query_is_recorded_and_not_charged(broker_factory) -> None:
    dead = AIWorker(name="dead", address="127.0.0.1:9", type="chat")
    server = broker_factory([dead], workers={"max_attempts": 2, "retry_backoff_s": 0})
    client = await WSClient.connect(server.ws_url)
    await client.connect_sequence()
    error = await client.query("nobody home")
    assert error["type"] == "error"
    assert "worker dead unreachable" in error["message"]
    with _db(server) as db:
        status, cost, attempts, err = db.execute(
            "SELECT status, cost, attempts, error FROM queries"
        ).fetchone()
        assert (status, cost, attempts) == ("failed", 0, 2)
        assert "unreachable" in err
        assert db.execute("SELECT total_queries, total_cost FROM system_stats").fetchone() == (
            0,
            0.0,
        )
        assert db.execute("SELECT query_count FROM users").fetchone() == (0,)
    await client.close()


async def _rows_when(path: str, count: int, timeout_s: float) -> list[tuple]:
    """The queries rows once there are ``count`` of them (or at the deadline)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        with sqlite3.connect(path) as db:
            rows = db.execute(
                "SELECT job_id, user_guid, status, processing_time, cost FROM queries"
            ).fetchall()
        if len(rows) >= count or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.2)


async def _gone(paths: list[Path], timeout_s: float) -> bool:
    """Whether none of ``paths`` exists, waiting up to ``timeout_s`` for that."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while any(p.exists() for p in paths):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_read_only_database_rows_recorded_after_it_recovers(
    broker_factory, ref_workers, tmp_path
) -> None:
    first = broker_factory(demo_worker_records(ref_workers))
    client = await WSClient.connect(first.ws_url)
    await client.connect_sequence()
    assert (await client.query("before"))["type"] == "query_result"
    guid = client.guid
    await client.close()
    path = first.settings.database.database_name
    first.stop()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = db.execute("SELECT COUNT(*), SUM(cost) FROM queries").fetchone()
    read_only = broker_factory(
        database={"database_url": f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"}
    )
    # an existing user still connects and gets answers; the failed write is reported
    client = await WSClient.connect(read_only.ws_url, guid)
    seq = await client.connect_sequence()
    assert seq[0]["type"] == "user_info"
    result = await client.query("during")
    assert result["type"] == "query_result"
    error = await client.expect("error")
    assert error["message"] == (
        "The query ran but could not be recorded yet: database unavailable; "
        "it will be recorded when the database is back"
    )
    assert error["job_id"] == result["job_id"]
    # a new user gets a clear error instead of a broken session
    stranger = await WSClient.connect(read_only.ws_url, str(uuid.uuid4()))
    message = await stranger.recv()
    assert message == {
        "type": "error",
        "message": "The service cannot register users right now",
    }
    after = await client.query("after")
    assert after["type"] == "query_result"
    await client.close()
    read_only.stop()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*), SUM(cost) FROM queries").fetchone() == before
    spool = Path(path).parent / "ledger-spool.jsonl"
    assert len(spool.read_bytes().splitlines()) == 2, "both answered queries were spooled"

    # the database is writable again: the next broker replays the spool at start
    broker_factory(database={"database_name": path})
    rows = await _rows_when(path, before[0] + 2, 15)
    by_job = {r[0]: r for r in rows}
    assert len(rows) == len(by_job) == before[0] + 2, "each spooled row once"
    for answered in (result, after):
        row = by_job[answered["job_id"]]
        assert (row[1], row[2]) == (guid, "done")
        assert row[4] == answered["cost"] > 0
    with sqlite3.connect(path) as db:
        total_q, total_cost = db.execute(
            "SELECT total_queries, total_cost FROM system_stats WHERE id=1"
        ).fetchone()
        count, user_cost = db.execute(
            "SELECT query_count, total_cost FROM users WHERE guid=?", (guid,)
        ).fetchone()
    assert total_q == count == 3
    assert abs(total_cost - sum(r[4] for r in rows)) < 1e-9
    assert abs(user_cost - total_cost) < 1e-9
    # The spool goes once its rows are in (its files are removed just after the commit).
    replay = spool.with_name(spool.name + ".replay")
    assert await _gone([spool, replay], 15), "the replayed spool is removed"


async def test_worker_that_hangs_times_out(broker_factory) -> None:
    with reference_worker(latency_ms=5000) as slow:
        server = broker_factory(
            [AIWorker(name="slow", address=slow, type="chat")],
            performance={"query_timeout": 0.5},
            workers={"max_attempts": 1},
        )
        client = await WSClient.connect(server.ws_url)
        await client.connect_sequence()
        error = await client.query("hello?")
        assert error["message"] == "worker slow timed out after 0.5s"
        await client.close()
