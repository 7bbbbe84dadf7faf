"""Fair shares end to end: a flooder versus a light user, one key at c64, streams."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rentahal.models import AIWorker
from tests.integration.test_http_api import (
    auth,
    start_api_broker,
    user_with_key,
    with_key_handlers,
)
from tests.support.client import WSClient
from tests.support.servers import BrokerServer, demo_worker_records, reference_worker, worker_stats

pytestmark = pytest.mark.timeout(120)  # generous: a loaded CI machine starts workers slowly

JOB_S = 0.2


async def _open(url: str) -> WSClient:
    client = await WSClient.connect(url)
    await client.connect_sequence()
    return client


async def test_a_light_user_behind_a_200_query_flooder_waits_about_one_job(
    broker_factory,
) -> None:
    slots = 2
    with reference_worker(latency_ms=JOB_S * 1000) as address:
        worker = AIWorker(name="slow", address=address, type="chat", max_concurrency=slots)
        server = broker_factory(
            [worker], queue={"max_queued_per_user": 500, "max_queue_size": 1000}
        )
        flooder, light = await _open(server.ws_url), await _open(server.ws_url)
        flood_done: list[float] = []

        async def count_flood_results() -> None:
            while True:
                if (await flooder.recv(60))["type"] == "query_result":
                    flood_done.append(time.monotonic())

        counter: asyncio.Task[None] | None = None
        try:
            for i in range(200):
                query = {"prompt": f"flood {i}", "query_type": "chat"}
                await flooder.send({"type": "submit_query", "query": query})
            for _ in range(200):
                try:
                    await flooder.expect("query_queued", timeout_s=30)
                except TimeoutError:
                    kinds = collections.Counter(m.get("type") for m in flooder.seen)
                    errors = [m for m in flooder.seen if m.get("type") == "error"][:3]
                    raise AssertionError(f"flooder saw {kinds}, errors {errors}") from None
            counter = asyncio.create_task(count_flood_results())
            started = time.monotonic()
            query = {"prompt": "light", "query_type": "chat"}
            await light.send({"type": "submit_query", "query": query})
            queued = await light.expect("query_queued", timeout_s=30)
            assert queued["position"] <= 2, "the position shown is not the fair one"
            await light.expect("query_result", timeout_s=30)
            finished = time.monotonic()
            # Counted in jobs, not seconds, so a slow machine does not change the verdict:
            # at most one flooder job ahead of it per slot (FIFO: all 200).
            ahead = sum(1 for t in flood_done if started <= t <= finished)
            assert ahead <= 2 * slots, (
                f"{ahead} flooder jobs finished while the light user waited "
                f"{finished - started:.2f}s"
            )
        finally:
            if counter is not None:
                counter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await counter
            await flooder.close()
            await light.close()


@pytest.fixture
def api_server(
    tmp_path: Path, ref_workers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrokerServer]:
    """The reference workers behind the HTTP API, at default settings."""
    with_key_handlers(monkeypatch)
    server = start_api_broker(tmp_path, demo_worker_records(ref_workers))
    yield server
    server.stop()


async def test_one_key_with_64_concurrent_requests_is_served_without_errors(
    api_server: BrokerServer,
) -> None:
    ws, key = await user_with_key(api_server)
    try:
        async with httpx.AsyncClient(
            base_url=api_server.url, headers=auth(key), timeout=60.0
        ) as client:

            async def one(i: int) -> httpx.Response:
                if i % 2:
                    return await client.post("/api/chat", json={"prompt": f"api {i}"})
                body = {"model": "ref-chat", "messages": [{"role": "user", "content": f"v1 {i}"}]}
                return await client.post("/v1/chat/completions", json=body)

            responses = await asyncio.gather(*(one(i) for i in range(64)))
        errors = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
        assert errors == []
        answers = [r.json() for r in responses]
        # /api/* answer the original's bare JSON string, /v1 a completion object.
        assert sum(1 for a in answers if isinstance(a, str) and "api " in a) == 32
        assert sum(1 for a in answers if isinstance(a, dict) and "v1 " in str(a["choices"])) == 32
        # Every share was given back.
        assert api_server.admission.in_flight(ws.guid or "") == 0
    finally:
        await ws.close()


async def test_streamed_requests_take_the_users_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_key_handlers(monkeypatch)
    with reference_worker(latency_ms=300) as address:
        worker = AIWorker(name="wide", address=address, type="chat", max_concurrency=64)
        server = start_api_broker(tmp_path, [worker])
        ws, key = await user_with_key(server)
        try:
            async with httpx.AsyncClient(
                base_url=server.url, headers=auth(key), timeout=60.0
            ) as client:

                async def stream(i: int) -> str:
                    body = {
                        "model": "wide",
                        "stream": True,
                        "messages": [{"role": "user", "content": f"s{i}"}],
                    }
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        assert r.status_code == 200, await r.aread()
                        return "".join([line async for line in r.aiter_lines()])

                streams = [asyncio.create_task(stream(i)) for i in range(40)]
                await asyncio.sleep(0.3)  # the first wave is at the worker
                # Over the WebSocket the same user finds the share taken, as the original said.
                refused = await ws.query("one more")
                assert refused["type"] == "error"
                assert "already have 10 queries" in refused["message"]
                bodies = await asyncio.gather(*streams)
            assert all("[DONE]" in body for body in bodies)
            assert all(json.dumps(f"s{i}")[1:-1] in bodies[i] for i in range(40))
            stats = worker_stats(address)
            assert stats["requests_total"] >= 40
            assert stats["max_in_flight_seen"] <= 10  # 40 of 40 at once before
        finally:
            await ws.close()
            server.stop()
