"""The original's security holes stay closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support.servers import BrokerServer


async def test_no_path_traversal_under_static(broker: BrokerServer) -> None:
    async with httpx.AsyncClient(base_url=broker.url) as client:
        for path in (
            "/static/../../config.ini",
            "/static/..%2f..%2fllm_broker.db",
            "/static/%2e%2e/%2e%2e/storage/database.py",
            "/static/../app.py",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert b"sqlalchemy" not in response.content.lower()


async def test_no_debug_sysop_routes(broker: BrokerServer) -> None:
    async with httpx.AsyncClient(base_url=broker.url) as client:
        for path in (
            "/debug/set_sysop/00000000-0000-4000-8000-000000000000",
            "/debug/check_sysop/00000000-0000-4000-8000-000000000000",
        ):
            assert (await client.get(path)).status_code == 404
            assert (await client.post(path)).status_code in (404, 405)


async def test_system_status_and_index(broker: BrokerServer) -> None:
    async with httpx.AsyncClient(base_url=broker.url) as client:
        status = (await client.get("/debug/system_status")).json()
        assert status == {
            "database_exists": True,
            "total_workers": 4,
            "queue_depth": 0,
            "huggingface_models": 0,
        }
        index = await client.get("/")
        assert index.status_code == 200
        assert "text/html" in index.headers["content-type"]


async def test_system_status_says_when_the_sqlite_file_is_gone(broker: BrokerServer) -> None:
    path = Path(broker.settings.database.database_name)
    async with httpx.AsyncClient(base_url=broker.url) as client:
        assert (await client.get("/debug/system_status")).json()["database_exists"] is True
        moved = path.with_suffix(".moved")
        await asyncio.to_thread(path.rename, moved)
        try:
            status = await client.get("/debug/system_status")
        finally:
            await asyncio.to_thread(moved.rename, path)
        assert status.status_code == 200
        assert status.json()["database_exists"] is False
        assert (await client.get("/debug/system_status")).json()["database_exists"] is True


async def test_sysop_only_messages_refused_for_users(connect) -> None:
    await connect()
    user = await connect()
    for kind in ("ban_user", "add_worker", "terminate_query", "sysop_message", "get_stats"):
        await user.send({"type": kind})
        assert (await user.expect("error"))["message"] == "Sysop rights are needed for this"
