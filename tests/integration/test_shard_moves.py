"""Reshard and move while clients submit; a reshard killed mid-copy and run again."""

from __future__ import annotations

import asyncio
import math
import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BrokerFactory
from tests.support.client import WSClient
from tests.support.servers import demo_worker_records
from tests.support.shards import (
    all_queries,
    db_command,
    db_process,
    guid_with,
    rows,
    url_of,
    write_installation,
)

pytestmark = pytest.mark.timeout(120)

FOUR = [(f"s{i}", f"shards/s{i}.db") for i in range(4)]


@pytest.fixture
async def sockets() -> AsyncIterator[list[WSClient]]:
    """Clients of a test, closed after it (also when it fails)."""
    opened: list[WSClient] = []
    yield opened
    for client in opened:
        await client.close()


async def _directory(home: Path) -> dict[str, str]:
    found = await rows(
        url_of(home, str(home / "llm_broker.db")), "SELECT prefix, shard FROM shard_directory"
    )
    return {prefix: shard for prefix, shard in found}


async def test_reshard_and_move_while_eight_clients_submit(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    ref_workers: dict[str, str],
    sockets: list[WSClient],
) -> None:
    home = tmp_path / "broker0"
    write_installation(home, FOUR)
    server = broker_factory(demo_worker_records(ref_workers, max_concurrency=8))
    # ff..fc go to the new shard (the fullest shards give their highest prefixes); 05 is moved.
    prefixes = ["ff", "fe", "fd", "fc", "05", "06", "07", "08"]
    clients = [await WSClient.connect(server.ws_url, guid_with(p)) for p in prefixes]
    sockets.extend(clients)
    for client in clients:
        await client.connect_sequence()
    results: dict[str, list[dict[str, Any]]] = {c.guid or "": [] for c in clients}
    stop = asyncio.Event()

    async def submit(client: WSClient) -> None:
        n = 0
        while not stop.is_set():
            results[client.guid or ""].append(
                await client.query(f"{client.guid} #{n}", timeout_s=60)
            )
            n += 1

    tasks = [asyncio.create_task(submit(c)) for c in clients]
    try:
        await asyncio.sleep(1.0)
        reshard = await db_process(home, "reshard", "--add", "s4", "shards/s4.db")
        out, _ = await reshard.communicate()
        assert reshard.returncode == 0, out.decode()
        moved = await db_process(home, "move", "05", "s0")
        out2, _ = await moved.communicate()
        assert moved.returncode == 0, out2.decode()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    print(out.decode(), out2.decode())

    answers = [r for rs in results.values() for r in rs]
    assert answers and all(r["type"] == "query_result" for r in answers)  # 0 lost
    directory = await _directory(home)
    assert [directory[p] for p in ("ff", "fe", "fd", "fc")] == ["s4"] * 4 and directory[
        "05"
    ] == "s0"
    urls = {name: url_of(home, conn) for name, conn in [*FOUR, ("s4", "shards/s4.db")]}
    stored = await all_queries(urls)
    job_ids = Counter(r[0] for part in stored.values() for r in part)
    assert sorted(job_ids) == sorted(r["job_id"] for r in answers)  # every answer has a row
    assert set(job_ids.values()) == {1}  # 0 duplicates
    for client in clients:
        guid = client.guid or ""
        home_shard = directory[guid[:2]]
        mine = [r for r in stored[home_shard] if r[1] == guid]
        assert sorted(r[2] for r in mine) == sorted(
            f"{guid} #{n}" for n in range(len(results[guid]))
        )
        (user,) = await rows(
            urls[home_shard], "SELECT query_count, total_cost FROM users WHERE guid = :g", g=guid
        )
        assert user[0] == len(results[guid])
        assert math.isclose(user[1], sum(r["cost"] for r in results[guid]), abs_tol=1e-9)
        for name, part in stored.items():
            if name != home_shard:
                assert not [r for r in part if r[1] == guid]
    # A moved user's history reads back in order from the new shard.
    again = await WSClient.connect(server.ws_url, clients[0].guid)
    sockets.append(again)
    previous = next(m for m in await again.connect_sequence() if m["type"] == "previous_queries")
    count = len(results[clients[0].guid or ""])
    assert [q["prompt"] for q in previous["data"]] == [
        f"{clients[0].guid} #{n}" for n in range(count - 1, max(-1, count - 11), -1)
    ]
    checked = db_command(home, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _original(path: Path, guids: list[str], per_user: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE users (guid TEXT PRIMARY KEY, nickname TEXT UNIQUE, is_sysop BOOLEAN,"
            " total_query_time REAL DEFAULT 0, total_cost REAL DEFAULT 0, is_banned BOOLEAN"
            " DEFAULT 0, query_count INTEGER DEFAULT 0)"
        )
        db.execute(
            "CREATE TABLE queries (id INTEGER PRIMARY KEY AUTOINCREMENT, user_guid TEXT,"
            " query_type TEXT, model_type TEXT, model_name TEXT, prompt TEXT, processing_time"
            " REAL, cost REAL, timestamp DATETIME)"
        )
        for n, guid in enumerate(guids):
            db.execute(
                "INSERT INTO users VALUES (?, ?, 0, ?, ?, 0, ?)",
                (guid, f"u{n}", per_user * 1.0, per_user * 0.011, per_user),
            )
            db.executemany(
                "INSERT INTO queries (user_guid, query_type, model_type, model_name, prompt,"
                " processing_time, cost, timestamp) VALUES (?, 'chat', 'worker_node', '', ?, 1.0,"
                " 0.011, '2024-05-01 12:00:00')",
                [(guid, f"{n}-{k}") for k in range(per_user)],
            )


async def test_a_reshard_killed_mid_copy_finishes_when_run_again(tmp_path: Path) -> None:
    home = tmp_path / "install"
    two = [("s0", "shards/s0.db"), ("s1", "shards/s1.db")]
    write_installation(home, two)
    guids = [guid_with(f"f{i:x}") for i in range(16)]  # the prefixes a third shard takes first
    _original(tmp_path / "original.db", guids, per_user=150)
    assert db_command(home, "upgrade").returncode == 0
    assert db_command(home, "import", str(tmp_path / "original.db")).returncode == 0
    urls = {n: url_of(home, c) for n, c in [*two, ("s2", "shards/s2.db")]}
    before = await _directory(home)

    reshard = await db_process(
        home, "reshard", "--add", "s2", "shards/s2.db", "--max-rows-per-s", "600"
    )
    target = home / "shards" / "s2.db"
    copied = 0
    for _ in range(300):
        await asyncio.sleep(0.05)
        if target.exists():
            try:
                copied = len(await rows(urls["s2"], "SELECT 1 FROM queries"))
            except Exception:  # the file is being created
                continue
            if copied >= 300:
                break
    reshard.send_signal(signal.SIGKILL)
    await reshard.wait()
    assert 300 <= copied < 16 * 150  # killed in the middle of the copy

    # The old placement is whole and still in charge.
    assert await _directory(home) == before
    source = [len(await rows(urls[n], "SELECT 1 FROM queries")) for n in ("s0", "s1")]
    assert sum(source) == 16 * 150
    checked = db_command(home, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "moving" in checked.stdout

    rerun = db_command(home, "reshard", "--add", "s2", "shards/s2.db")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = await _directory(home)
    assert sum(1 for p in after if after[p] == "s2") == 257 // 3
    stored = await all_queries(urls)
    assert sorted(r[2] for part in stored.values() for r in part) == sorted(
        f"{n}-{k}" for n in range(16) for k in range(150)
    )
    for guid in guids:
        (user,) = await rows(
            urls[after[guid[:2]]], "SELECT query_count FROM users WHERE guid = :g", g=guid
        )
        assert user == (150,)
    final = db_command(home, "verify")
    assert final.returncode == 0, final.stdout + final.stderr
    assert "moving" not in final.stdout
