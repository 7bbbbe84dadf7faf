"""`rentahal db import`: an original llm_broker.db (original schema) into three shards."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import BrokerFactory
from tests.support.client import WSClient
from tests.support.shards import db_command, guid_with, rows, url_of, write_installation

ORIGINAL_SCHEMA = """
CREATE TABLE users (guid TEXT PRIMARY KEY, nickname TEXT UNIQUE, is_sysop BOOLEAN,
    total_query_time REAL DEFAULT 0, total_cost REAL DEFAULT 0, is_banned BOOLEAN DEFAULT 0,
    query_count INTEGER DEFAULT 0);
CREATE TABLE queries (id INTEGER PRIMARY KEY AUTOINCREMENT, user_guid TEXT, query_type TEXT,
    model_type TEXT, model_name TEXT, prompt TEXT, processing_time REAL, cost REAL,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE ai_workers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, address TEXT,
    type TEXT, health_score REAL, is_blacklisted BOOLEAN, last_active DATETIME);
CREATE TABLE huggingface_models (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, type TEXT);
CREATE TABLE system_stats (id INTEGER PRIMARY KEY AUTOINCREMENT, total_queries INTEGER,
    total_processing_time REAL, total_cost REAL, last_updated DATETIME);
"""
SHARDS = [("a", "shards/a.db"), ("b", "shards/b.db"), ("c", "shards/c.db")]


def _original(path: Path, guids: list[str]) -> list[tuple[str, str, float, float]]:
    """An original broker's database: users, their queries, one stats row per query."""
    made = []
    with sqlite3.connect(path) as db:
        db.executescript(ORIGINAL_SCHEMA)
        for n, guid in enumerate(guids):
            queries = [
                (guid, f"{guid[:4]} q{k}", 0.5 + k, 0.01 + (0.5 + k) * 0.001)
                for k in range(n % 4 + 1)
            ]
            db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    guid,
                    f"dave{n}",
                    1 if n == 0 else 0,
                    sum(q[2] for q in queries),
                    sum(q[3] for q in queries),
                    1 if n == 5 else 0,
                    len(queries),
                ),
            )
            for q in queries:
                db.execute(
                    "INSERT INTO queries (user_guid, query_type, model_type, model_name, prompt,"
                    " processing_time, cost, timestamp) VALUES (?, 'chat', 'worker_node', '', ?,"
                    " ?, ?, '2024-05-01 12:00:00')",
                    (q[0], q[1], q[2], q[3]),
                )
                db.execute(
                    "INSERT INTO system_stats (total_queries, total_processing_time, total_cost,"
                    " last_updated) VALUES (1, ?, ?, '2024-05-01 12:00:00')",
                    (q[2], q[3]),
                )
                made.append(q)
        db.execute(
            "INSERT INTO ai_workers (name, address, type, health_score, is_blacklisted,"
            " last_active) VALUES ('old-sd', '127.0.0.1:9', 'imagine', 80, 0, '2024-05-01')"
        )
        db.execute("INSERT INTO huggingface_models (name, type) VALUES ('gpt2', 'chat')")
    return made


@pytest.fixture
async def sockets() -> AsyncIterator[list[WSClient]]:
    """Clients of a test, closed after it (also when it fails)."""
    opened: list[WSClient] = []
    yield opened
    for client in opened:
        await client.close()


async def test_an_original_database_is_imported_into_three_shards(
    tmp_path: Path, broker_factory: BrokerFactory, sockets: list[WSClient]
) -> None:
    home = tmp_path / "broker0"
    write_installation(home, SHARDS)
    # Prefixes 00..0b spread over a, b, c (hex value modulo 3); one GUID is not hex at all.
    guids = [guid_with(f"{i:02x}") for i in range(12)] + ["legacy-user-without-uuid"]
    made = _original(tmp_path / "llm_broker.db", guids)
    assert db_command(home, "upgrade").returncode == 0
    imported = db_command(home, "import", str(tmp_path / "llm_broker.db"))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"imported {len(guids)} users, {len(made)} queries" in imported.stdout

    urls = {name: url_of(home, conn) for name, conn in SHARDS}
    found = {
        n: await rows(u, "SELECT user_guid, prompt, processing_time, cost, job_id FROM queries")
        for n, u in urls.items()
    }
    every = sorted(r[:4] for part in found.values() for r in part)
    assert every == sorted(made)  # every row, once
    assert all(r[4] for part in found.values() for r in part)  # each has a job id now
    for i, guid in enumerate(guids[:12]):
        shard = SHARDS[i % 3][0]
        (user,) = await rows(
            urls[shard],
            "SELECT nickname, query_count, total_cost, is_sysop, is_banned FROM users"
            " WHERE guid = :g",
            g=guid,
        )
        mine = [q for q in made if q[0] == guid]
        assert user[0] == f"dave{i}" and user[1] == len(mine)
        assert math.isclose(user[2], sum(q[3] for q in mine), abs_tol=1e-12)
        assert (bool(user[3]), bool(user[4])) == (i == 0, i == 5)
    (stats,) = await rows(
        url_of(home, str(home / "llm_broker.db")),
        "SELECT total_queries, total_cost FROM system_stats",
    )
    assert stats[0] == len(made) and math.isclose(stats[1], sum(q[3] for q in made), abs_tol=1e-9)
    checked = db_command(home, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    again = db_command(home, "import", str(tmp_path / "llm_broker.db"))  # a second run adds nothing
    assert again.returncode == 0, again.stdout + again.stderr
    assert "imported 0 users, 0 queries" in again.stdout
    counts = [len(await rows(u, "SELECT 1 FROM queries")) for u in urls.values()]
    assert sum(counts) == len(made) and all(counts)

    server = broker_factory()  # the imported users are served from their shards
    client = await WSClient.connect(server.ws_url, guids[3])
    sockets.append(client)
    sequence = await client.connect_sequence()
    assert sequence[0]["data"]["nickname"] == "dave3"
    previous = next(m for m in sequence if m["type"] == "previous_queries")["data"]
    assert [q["prompt"] for q in previous] == [f"{guids[3][:4]} q{k}" for k in (3, 2, 1, 0)]
    workers = next(m for m in sequence if m["type"] == "worker_update")["workers"]
    assert [w["name"] for w in workers] == ["old-sd"]
    newcomer = await WSClient.connect(server.ws_url, guid_with("0c"))
    sockets.append(newcomer)
    assert (await newcomer.connect_sequence())[0]["data"]["is_sysop"] is False

    # verify finds what is wrong: a row in a shard the directory does not name, totals off.
    with sqlite3.connect(home / "shards" / "b.db") as db:  # prefix 00 belongs to shard a
        db.execute(
            "INSERT INTO users (guid, nickname, is_sysop, total_query_time, total_cost,"
            " is_banned, query_count) VALUES (?, 'stray', 0, 0, 0, 0, 0)",
            (guid_with("00"),),
        )
    with sqlite3.connect(home / "llm_broker.db") as db:
        db.execute("UPDATE system_stats SET total_queries = total_queries + 1")
    broken = db_command(home, "verify")
    assert broken.returncode == 1
    assert "wrong shard" in broken.stdout and "prefix 00" in broken.stdout
    assert "system totals" in broken.stdout
