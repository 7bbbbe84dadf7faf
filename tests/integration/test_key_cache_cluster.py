"""The API key cache never outlives a revoke or a ban, on the node that made it or any other."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from typer.testing import CliRunner

from tests.support.client import WSClient
from tests.support.cluster import Cluster, new_guid

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]


async def _user_with_key(cluster: Cluster, guid: str | None = None) -> tuple[WSClient, str]:
    ws = await WSClient.connect(cluster.node(0).ws_url, guid=guid or new_guid())
    await ws.connect_sequence()
    await ws.send({"type": "create_api_key", "name": "cache"})
    return ws, (await ws.expect("api_key_created"))["key"]


def _status(cluster: Cluster, node: int, key: str) -> int:
    answer = httpx.get(
        f"{cluster.node(node).http_url}/v1/models",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return answer.status_code


async def test_revoke_and_ban_hold_at_once_on_every_node() -> None:
    sysop_guid = new_guid()
    with Cluster(nodes=2) as cluster:
        cluster.prepare([], sysop_guid=sysop_guid)
        # A revoke over the WebSocket on node 0.
        owner, key = await _user_with_key(cluster)
        assert [_status(cluster, n, key) for n in (0, 1, 0, 1)] == [200] * 4  # cached on both
        await owner.send({"type": "revoke_api_key", "prefix": key[:12]})
        await owner.expect("api_key_revoked")
        assert [_status(cluster, 1, key), _status(cluster, 0, key)] == [401, 401]
        # A ban by a sysop on node 0.
        victim, victim_key = await _user_with_key(cluster)
        assert [_status(cluster, n, victim_key) for n in (0, 1)] == [200, 200]
        sysop = await WSClient.connect(cluster.node(0).ws_url, guid=sysop_guid)
        await sysop.connect_sequence()
        await sysop.send({"type": "ban_user", "user_guid": victim.guid})
        await sysop.expect("user_banned", guid=victim.guid)
        assert [_status(cluster, 1, victim_key), _status(cluster, 0, victim_key)] == [403, 403]
        # A revoke with ``rentahal keys revoke`` (another process) reaches every node.
        other, other_key = await _user_with_key(cluster)
        assert [_status(cluster, n, other_key) for n in (0, 1)] == [200, 200]
        from rentahal.keys_cli import keys_app

        env = {
            "RENTAHAL_DATABASE__DATABASE_URL": cluster.database_url,
            "RENTAHAL_BROKER__REDIS_URL": cluster.redis.url,
        }
        args = ["revoke", other_key[:12]]
        revoked = await asyncio.to_thread(CliRunner().invoke, keys_app, args, env=env)
        assert revoked.exit_code == 0, revoked.output
        assert [_status(cluster, 0, other_key), _status(cluster, 1, other_key)] == [401, 401]
        # A fresh, never cached key works at once.
        _, fresh = await _user_with_key(cluster, str(uuid.uuid4()))
        assert _status(cluster, 1, fresh) == 200
        for ws in (owner, victim, sysop, other):
            await ws.close()
