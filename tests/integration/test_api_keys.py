"""API keys over the WebSocket (create, list, revoke) and with ``rentahal keys``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from typer.testing import CliRunner

from rentahal.keys_cli import keys_app
from rentahal.storage.database import Storage
from rentahal.storage.keys import KeyStore
from tests.integration.test_http_api import auth, start_api_broker, with_key_handlers
from tests.support.client import WSClient
from tests.support.servers import BrokerServer, demo_worker_records


@pytest.fixture
def keys_server(
    tmp_path: Path, ref_workers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrokerServer]:
    """A broker with the API routes and the key messages."""
    with_key_handlers(monkeypatch)
    server = start_api_broker(tmp_path, demo_worker_records(ref_workers))
    yield server
    server.stop()


async def _user(server: BrokerServer) -> WSClient:
    client = await WSClient.connect(server.ws_url)
    await client.connect_sequence()
    return client


async def test_create_list_revoke_over_websocket(keys_server: BrokerServer) -> None:
    ws = await _user(keys_server)
    await ws.send({"type": "create_api_key", "name": "laptop"})
    created = await ws.expect("api_key_created")
    assert created["name"] == "laptop"
    assert created["key"].startswith("rah_") and len(created["key"]) > 40
    assert created["prefix"] == created["key"][:12]
    await ws.send({"type": "create_api_key"})
    unnamed = await ws.expect("api_key_created")
    assert unnamed["name"] == ""

    await ws.send({"type": "list_api_keys"})
    listing = await ws.expect("api_keys")
    assert [k["prefix"] for k in listing["keys"]] == [created["prefix"], unnamed["prefix"]]
    for entry in listing["keys"]:
        assert set(entry) == {"prefix", "name", "created_at", "revoked"}
        assert entry["revoked"] is False
    assert created["key"] not in str(listing)

    async with httpx.AsyncClient(base_url=keys_server.url, timeout=30) as http:
        assert (await http.get("/v1/models", headers=auth(created["key"]))).status_code == 200
        await ws.send({"type": "revoke_api_key", "prefix": created["prefix"]})
        assert (await ws.expect("api_key_revoked"))["prefix"] == created["prefix"]
        assert (await http.get("/v1/models", headers=auth(created["key"]))).status_code == 401
        assert (await http.get("/v1/models", headers=auth(unnamed["key"]))).status_code == 200

    await ws.send({"type": "list_api_keys"})
    states = [k["revoked"] for k in (await ws.expect("api_keys"))["keys"]]
    assert states == [True, False]
    await ws.close()


async def test_keys_are_private_to_their_owner(keys_server: BrokerServer) -> None:
    alice = await _user(keys_server)
    bob = await _user(keys_server)
    await alice.send({"type": "create_api_key", "name": "alice's"})
    key = await alice.expect("api_key_created")
    await bob.send({"type": "list_api_keys"})
    assert (await bob.expect("api_keys"))["keys"] == []
    await bob.send({"type": "revoke_api_key", "prefix": key["prefix"]})
    error = await bob.expect("error")
    assert key["prefix"] in error["message"]
    async with httpx.AsyncClient(base_url=keys_server.url, timeout=30) as http:
        response = await http.post("/api/chat", json={"prompt": "mine"}, headers=auth(key["key"]))
    assert response.status_code == 200
    rows = keys_server.call(keys_server.storage.recent_queries(alice.guid or ""))
    assert [r["job_id"] for r in rows] == [response.headers["x-rentahal-job-id"]]
    assert keys_server.call(keys_server.storage.recent_queries(bob.guid or "")) == []
    await alice.close()
    await bob.close()


async def test_bad_key_messages_answer_errors(keys_server: BrokerServer) -> None:
    ws = await _user(keys_server)
    await ws.send({"type": "revoke_api_key", "prefix": "short"})
    assert "prefix" in (await ws.expect("error"))["message"]
    await ws.send({"type": "create_api_key", "name": "x" * 500})
    assert "name" in (await ws.expect("error"))["message"]
    await ws.send({"type": "list_api_keys"})
    assert (await ws.expect("api_keys"))["keys"] == []
    await ws.close()


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.ini"
    config.write_text(f"[Database]\ndatabase_name = {tmp_path / 'cli.db'}\n")
    return config


def _make_user(tmp_path: Path) -> str:
    guid = str(uuid.uuid4())

    async def run() -> None:
        storage = Storage(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
        try:
            await storage.migrate()
            await storage.get_or_create_user(guid)
        finally:
            await storage.close()

    asyncio.run(run())
    return guid


def _lookup(tmp_path: Path, key: str) -> str | None:
    async def run() -> str | None:
        storage = Storage(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
        try:
            return await KeyStore(storage).lookup(key)
        finally:
            await storage.close()

    return asyncio.run(run())


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    config = _config(tmp_path)
    guid = _make_user(tmp_path)
    runner = CliRunner()
    created = runner.invoke(keys_app, ["create", guid, "--name", "ci", "-c", str(config)])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("rah_")
    assert _lookup(tmp_path, key) == guid

    listed = runner.invoke(keys_app, ["list", guid, "-c", str(config)])
    assert listed.exit_code == 0
    assert key[:12] in listed.output and "ci" in listed.output and "live" in listed.output
    assert key not in listed.output

    revoked = runner.invoke(keys_app, ["revoke", key[:12], "-c", str(config)])
    assert revoked.exit_code == 0
    assert _lookup(tmp_path, key) is None
    again = runner.invoke(keys_app, ["revoke", key[:12], "-c", str(config)])
    assert again.exit_code == 1


def test_cli_refuses_unknown_users(tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = CliRunner()
    unknown = runner.invoke(keys_app, ["create", str(uuid.uuid4()), "-c", str(config)])
    assert unknown.exit_code == 1 and "no user" in unknown.output
    malformed = runner.invoke(keys_app, ["create", "<script>", "-c", str(config)])
    assert malformed.exit_code == 1
    empty = runner.invoke(keys_app, ["list", str(uuid.uuid4()), "-c", str(config)])
    assert empty.exit_code == 0 and "no API keys" in empty.output


async def test_concurrent_calls_of_an_uncached_key_read_it_once(
    keys_server: BrokerServer,
) -> None:
    ws = await _user(keys_server)
    await ws.send({"type": "create_api_key", "name": "busy"})
    key = (await ws.expect("api_key_created"))["key"]
    reads: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_key_index" in statement and statement.lstrip().upper().startswith("SELECT"):
            reads.append(statement)

    engine = keys_server.broker.database().engine.sync_engine
    event.listen(engine, "before_cursor_execute", note)
    try:

        async def forty() -> list[Any]:
            return await asyncio.gather(*(keys_server.broker.user_of_key(key) for _ in range(40)))

        owners = keys_server.call(forty())
        again = keys_server.call(keys_server.broker.user_of_key(key))  # from the cache now
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert {o.guid for o in owners} == {ws.guid} and again is not None
    assert len(reads) == 1
    await ws.close()
