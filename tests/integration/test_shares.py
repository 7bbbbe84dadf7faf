"""Shares that hold across GUID rotation: per client address, connections, API keys."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets

from rentahal.models import AIWorker
from tests.support.client import WSClient
from tests.support.servers import reference_worker

FLOODER = "203.0.113.5"
LIGHT = "198.51.100.7"
CHAT = {"type": "submit_query", "query": {"prompt": "q", "query_type": "chat"}}
# The test clients connect from loopback, standing in for a reverse proxy there.
LOOPBACK_PROXY = {"trusted_proxies": "127.0.0.1, ::1"}


def _slow_chat(address: str) -> AIWorker:
    return AIWorker(
        name="slow", address=address, type="chat", protocol="predict", max_concurrency=1
    )


async def _from(url: str, address: str, clients: list[WSClient], **headers: str) -> WSClient:
    """A cookie-less client whose trusted proxy (loopback) forwards it for ``address``."""
    ws = await websockets.connect(
        url, additional_headers={"X-Forwarded-For": address, **headers}, open_timeout=10
    )
    client = WSClient(ws)
    clients.append(client)
    return client


async def _outcomes(client: WSClient, count: int) -> list[dict[str, Any]]:
    """Submit ``count`` chat queries; their ``query_queued`` or ``error`` answers."""
    await client.connect_sequence()
    for _ in range(count):
        await client.send(CHAT)
    return [await client.expect_any(("query_queued", "error")) for _ in range(count)]


async def test_guid_rotation_cannot_fill_the_queue(broker_factory) -> None:
    clients: list[WSClient] = []
    with reference_worker(latency_ms=3000) as address:
        server = broker_factory(
            [_slow_chat(address)],
            queue={"max_queue_size": 100, "max_queued_per_user": 10, "max_queued_per_address": 0},
            security=LOOPBACK_PROXY,
        )
        try:
            # 12 cookie-less connections from one address: 12 new users of 10 queries each.
            flood = [await _from(server.ws_url, FLOODER, clients) for _ in range(12)]
            answers = await asyncio.gather(*(_outcomes(c, 10) for c in flood))
            accepted = sum(1 for a in answers for m in a if m["type"] == "query_queued")
            refusals = {m["message"] for a in answers for m in a if m["type"] == "error"}
            assert accepted == 30, f"one address got {accepted} queries queued"
            assert refusals == {
                "Too many queries waiting from your network address (limit 30); "
                "please wait for them to finish"
            }
            light = await _from(server.ws_url, LIGHT, clients)
            (answer,) = await _outcomes(light, 1)
            assert answer["type"] == "query_queued", answer
        finally:
            for client in clients:
                await client.close()


async def test_connections_per_address_capped(broker_factory) -> None:
    server = broker_factory(performance={"max_connections_per_address": 5}, security=LOOPBACK_PROXY)
    clients: list[WSClient] = []
    try:
        for _ in range(5):
            await (await _from(server.ws_url, FLOODER, clients)).connect_sequence()
        sixth = await _from(server.ws_url, FLOODER, clients)
        assert (await sixth.recv())["message"] == "Too many connections from your address"
        await sixth.ws.wait_closed()
        other = await _from(server.ws_url, LIGHT, clients)
        assert (await other.connect_sequence())[-1]["type"] == "huggingface_update"
        # A closed socket frees its place.
        await clients[0].close()
        await asyncio.sleep(0.3)
        again = await _from(server.ws_url, FLOODER, clients)
        assert (await again.connect_sequence())[-1]["type"] == "huggingface_update"
    finally:
        for client in clients:
            await client.close()


async def test_forwarded_for_believed_only_from_trusted_proxies(broker_factory) -> None:
    server = broker_factory(
        performance={"max_connections_per_address": 1}, security={"trusted_proxies": "10.0.0.1"}
    )
    clients: list[WSClient] = []
    try:
        await (await _from(server.ws_url, FLOODER, clients)).connect_sequence()
        # The peer (127.0.0.1) is not trusted now: a forged header does not make a new address.
        forged = await _from(server.ws_url, LIGHT, clients)
        assert (await forged.recv())["message"] == "Too many connections from your address"
    finally:
        for client in clients:
            await client.close()


async def test_api_keys_per_user_bounded(broker_factory) -> None:
    server = broker_factory(security={"max_api_keys_per_user": 3})
    client = await WSClient.connect(server.ws_url)
    try:
        await client.connect_sequence()
        prefixes = []
        for n in range(3):
            await client.send({"type": "create_api_key", "name": f"k{n}"})
            prefixes.append((await client.expect("api_key_created"))["prefix"])
        await client.send({"type": "create_api_key", "name": "one too many"})
        error = await client.expect("error")
        assert error["message"] == (
            "You have 3 API keys, the most allowed; revoke one to make a new one"
        )
        await client.send({"type": "list_api_keys"})
        assert len((await client.expect("api_keys"))["keys"]) == 3
        # Revoking frees a place.
        await client.send({"type": "revoke_api_key", "prefix": prefixes[0]})
        await client.expect("api_key_revoked")
        await client.send({"type": "create_api_key", "name": "again"})
        await client.expect("api_key_created")
    finally:
        await client.close()
