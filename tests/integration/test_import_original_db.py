"""An llm_broker.db written by the original broker is imported without loss."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.client import WSClient
from tests.support.servers import BrokerServer, broker_settings

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
SYSOP = "11111111-1111-4111-8111-111111111111"
USER = "22222222-2222-4222-8222-222222222222"


def _original_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(ORIGINAL_SCHEMA)
        db.execute("INSERT INTO users VALUES (?, 'hal', 1, 3.0, 0.033, 0, 2)", (SYSOP,))
        db.execute("INSERT INTO users VALUES (?, 'dave', 0, 1.0, 0.011, 1, 1)", (USER,))
        for guid, prompt, pt, cost in (
            (SYSOP, "open the pod bay doors", 1.0, 0.011),
            (SYSOP, "sing daisy", 2.0, 0.012),
            (USER, "hello", 1.0, 0.011),
        ):
            db.execute(
                "INSERT INTO queries (user_guid, query_type, model_type, model_name, prompt,"
                " processing_time, cost, timestamp) VALUES (?, 'chat', 'worker_node', '', ?, ?, ?,"
                " '2024-05-01 12:00:00')",
                (guid, prompt, pt, cost),
            )
            # the original wrote one stats row per query
            db.execute(
                "INSERT INTO system_stats (total_queries, total_processing_time, total_cost,"
                " last_updated) VALUES (1, ?, ?, '2024-05-01 12:00:00')",
                (pt, cost),
            )
        db.execute(
            "INSERT INTO ai_workers (name, address, type, health_score, is_blacklisted,"
            " last_active) VALUES ('old-sd', '127.0.0.1:9', 'imagine', 80, 0, '2024-05-01')"
        )
        db.execute("INSERT INTO huggingface_models (name, type) VALUES ('gpt2', 'chat')")


async def test_original_database_is_imported_in_place(tmp_path: Path) -> None:
    settings = broker_settings(tmp_path)
    _original_db(Path(settings.database.database_name))
    server = BrokerServer(settings)
    server.start()
    try:
        client = await WSClient.connect(server.ws_url, SYSOP)
        seq = await client.connect_sequence()
        user = seq[0]["data"]
        assert (user["nickname"], user["is_sysop"], user["query_count"]) == ("hal", True, 2)
        assert "sing daisy" in seq[1]["message"]
        assert seq[3]["message"] == "System-wide total lifetime costs: $0.03"
        previous = next(m for m in seq if m["type"] == "previous_queries")["data"]
        assert [q["prompt"] for q in previous] == ["sing daisy", "open the pod bay doors"]
        workers = next(m for m in seq if m["type"] == "worker_update")["workers"]
        assert workers[0]["name"] == "old-sd" and workers[0]["protocol"] == "a1111"
        hf = next(m for m in seq if m["type"] == "huggingface_update")["models"]
        assert hf == [{"name": "gpt2", "type": "chat"}]
        await client.close()
        banned = await WSClient.connect(server.ws_url, USER)
        await banned.recv()
        assert (await banned.recv())["message"] == "You are banned from using this service."
        await banned.close()
    finally:
        server.stop()
    with sqlite3.connect(settings.database.database_name) as db:
        assert db.execute("SELECT COUNT(*) FROM queries").fetchone() == (3,)
        stats = db.execute(
            "SELECT id, total_queries, total_processing_time, total_cost FROM system_stats"
        ).fetchall()
        assert len(stats) == 1
        sid, count, pt, cost = stats[0]
        assert (sid, count, pt) == (1, 3, 4.0) and abs(cost - 0.034) < 1e-12
