"""Function wrapping (realm path first, legacy fallback), the watchdog, realm connections."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from rentahal.broker import LEGACY_QUEUE, WATCHDOG_INTERVAL_S
from rentahal.models import AIWorker, Query
from rentahal.wrapping import get_db, process_query, select_worker
from tests.support.client import WSClient
from tests.support.servers import BrokerServer


async def _user(server: BrokerServer) -> WSClient:
    client = await WSClient.connect(server.ws_url)
    await client.connect_sequence()
    return client


async def test_process_query_and_select_worker_realm_then_legacy(
    broker_factory: Any, ref_workers: dict[str, str]
) -> None:
    # Two chat workers: "ref-chat" belongs to $CHAT; the healthier "lodger" sits in
    # $IMAGINE, so only the legacy path (the healthiest of all) picks it.
    server = broker_factory(
        [
            AIWorker(name="ref-chat", address=ref_workers["chat"], type="chat", health_score=50),
            AIWorker(name="lodger", address=ref_workers["chat"], type="chat", realm="$IMAGINE"),
        ]
    )
    client = await _user(server)
    b = server.broker
    query = Query(prompt="wrapped", query_type="chat")
    result = server.call(process_query(b, client.guid, query, timeout_s=10))
    assert (result.status, result.realm, result.worker) == ("done", "$CHAT", "ref-chat")
    assert "wrapped" in result.result
    assert server.call(select_worker(b, query)).name == "ref-chat"
    # get_db gives the storage holding the user's rows: the query just recorded is there
    rows = server.call(get_db(b, client.guid).recent_queries(client.guid))
    assert [r["job_id"] for r in rows] == [result.job_id]
    assert server.call(get_db(b).get_user(client.guid)) is not None
    # stop the realm: the same calls take the legacy path
    assert b.realms is not None
    server.call(b.realms.stop_realm("$CHAT"))
    result = server.call(process_query(b, client.guid, query, timeout_s=10))
    assert (result.status, result.realm, result.worker) == ("done", LEGACY_QUEUE, "lodger")
    assert server.call(select_worker(b, query)).name == "lodger"
    await client.close()


async def test_watchdog_restarts_a_dead_processor_once(broker: BrokerServer) -> None:
    b = broker.broker
    assert b.realms is not None
    processor = b._processors["$CHAT"]
    first_loop = processor._loop_task
    assert first_loop is not None
    processor.start()  # already running: no second loop
    assert processor._loop_task is first_loop
    broker.app.state.loop.call_soon_threadsafe(first_loop.cancel)
    await asyncio.sleep(WATCHDOG_INTERVAL_S * 2 + 0.5)
    assert processor.alive and processor._loop_task is not first_loop
    client = await _user(broker)
    assert (await client.query("after restart"))["realm"] == "$CHAT"
    await client.close()


async def test_connections_are_counted_per_realm(broker: BrokerServer) -> None:
    clients = [await _user(broker) for _ in range(5)]
    async with httpx.AsyncClient(base_url=broker.url) as http:
        status = (await http.get("/api/federation/status")).json()
    per_realm = sum(r["connections"] for r in status["realms"])
    assert status["connections"] == per_realm == 5
    assert status["peak_connections"] >= 5
    for c in clients:
        await c.close()
