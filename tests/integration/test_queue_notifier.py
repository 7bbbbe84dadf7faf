"""The queue notifier: positions for waiting jobs, and expiry after ``queue_timeout``."""

from __future__ import annotations

import asyncio
from typing import Any

from rentahal.models import AIWorker
from tests.support.client import WSClient
from tests.support.servers import reference_worker


async def _open(url: str) -> WSClient:
    client = await WSClient.connect(url)
    await client.connect_sequence()
    return client


async def test_waiting_job_gets_its_position_then_expires(broker_factory: Any) -> None:
    with reference_worker(latency_ms=1500, max_concurrency=1) as slow:
        worker = AIWorker(name="slow", address=slow, type="chat", max_concurrency=1)
        server = broker_factory([worker], queue={"queue_timeout": 0.6})
        first, second = await _open(server.ws_url), await _open(server.ws_url)
        try:
            running = asyncio.create_task(first.query("takes the only slot"))
            await asyncio.sleep(0.3)
            await second.send(
                {
                    "type": "submit_query",
                    "query": {"prompt": "waits", "query_type": "chat", "model_type": "worker_node"},
                }
            )
            position = await second.expect("queue_position", timeout_s=5)
            assert position["position"] == 1
            answer = await second.expect_any(("query_result", "error"), timeout_s=10)
            text = str(answer.get("error") or answer.get("message"))
            assert "No worker could take the query within 0.6s" in text
            done = await running
            assert done["type"] == "query_result" and done.get("status", "done") == "done"
        finally:
            await first.close()
            await second.close()
