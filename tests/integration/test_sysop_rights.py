"""Sysop rights revoked by another process (``rentahal users sysop --revoke``) end at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rentahal.broker.notifier import ACTIVE_USERS_INTERVAL_S
from tests.support.client import WSClient
from tests.support.redis_server import RedisServer
from tests.support.servers import BrokerServer

REFUSED = "Sysop rights are needed for this"


def _revoke(server: BrokerServer, guid: str, tmp_path: Path) -> None:
    """Run the real CLI in a process of its own, configured like the broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENTAHAL_")}
    env["RENTAHAL_DATABASE__DATABASE_NAME"] = server.settings.database.database_name
    if server.settings.broker.redis_url:
        env["RENTAHAL_BROKER__REDIS_URL"] = server.settings.broker.redis_url
    cmd = [sys.executable, "-c", "from rentahal.cli import app; app()", "users", "sysop", guid]
    cmd += ["--revoke", "--config", str(tmp_path / "absent.ini")]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


async def test_revoked_sysop_is_refused_on_the_open_socket(
    connect, broker: BrokerServer, tmp_path: Path
) -> None:
    sysop = await connect()  # the first user is the sysop
    assert sysop.guid is not None
    await sysop.send({"type": "get_stats"})
    await sysop.expect("system_stats")
    await asyncio.to_thread(_revoke, broker, sysop.guid, tmp_path)
    await sysop.send({"type": "get_stats"})
    assert (await sysop.expect_any(("error", "system_stats")))["message"] == REFUSED
    await sysop.send({"type": "ban_user", "user_guid": sysop.guid})
    assert (await sysop.expect("error"))["message"] == REFUSED


@pytest.mark.redis
async def test_revoke_reaches_open_sockets_through_the_control_channel(
    broker_factory, redis_url: str, tmp_path: Path
) -> None:
    server = broker_factory(broker={"redis_url": redis_url})
    sysop = await WSClient.connect(server.ws_url)
    others: list[WSClient] = []
    try:
        await sysop.connect_sequence()
        assert sysop.guid is not None
        others.append(await WSClient.connect(server.ws_url))
        await others[-1].connect_sequence()
        await sysop.expect("active_users")  # sysops are told who is connected
        await sysop.drain(ACTIVE_USERS_INTERVAL_S + 0.5)  # a push held back for its interval
        await asyncio.to_thread(_revoke, server, sysop.guid, tmp_path)
        await asyncio.sleep(0.5)
        others.append(await WSClient.connect(server.ws_url))
        await others[-1].connect_sequence()
        frames = await sysop.drain(1.5)
        assert "active_users" not in {f["type"] for f in frames}, "GUIDs still go to the ex-sysop"
        await sysop.send({"type": "get_stats"})
        assert (await sysop.expect("error"))["message"] == REFUSED
    finally:
        for client in [sysop, *others]:
            await client.close()


async def test_active_users_coalesced_in_a_connect_burst(broker_factory) -> None:
    server = broker_factory()
    sysop = await WSClient.connect(server.ws_url)  # the first user is a sysop
    others: list[WSClient] = []
    try:
        await sysop.connect_sequence()
        await sysop.expect("active_users")
        await sysop.drain(ACTIVE_USERS_INTERVAL_S + 0.3)
        for _ in range(12):
            others.append(await WSClient.connect(server.ws_url))
            await others[-1].connect_sequence()
        frames = await sysop.drain(ACTIVE_USERS_INTERVAL_S + 0.3)
        pushes = [f for f in frames if f["type"] == "active_users"]
        assert 1 <= len(pushes) <= 3, [len(p["users"]) for p in pushes]  # not one per connect
        assert len(pushes[-1]["users"]) == 13  # the last push knows everyone
    finally:
        for client in [sysop, *others]:
            await client.close()
