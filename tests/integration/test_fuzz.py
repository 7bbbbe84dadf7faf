"""Thousands of seeded malformed WebSocket frames and HTTP bodies: the broker stays up, and a
bystander's queries are answered all the while."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import httpx
import pytest

from tests.support.client import WSClient
from tests.support.malformed import malformed_bodies, malformed_frames
from tests.support.servers import BrokerServer

SEED = 11
FUZZERS = 3
FRAMES_EACH = 1200
BODIES = 1200


async def _drain_forever(client: WSClient) -> None:
    """Read (and drop) what the broker sends a fuzzer, so its outbox never fills."""
    with contextlib.suppress(Exception):
        while True:
            await client.ws.recv()


async def _fuzz_socket(broker: BrokerServer, seed: int) -> int:
    client = await WSClient.connect(broker.ws_url)
    reader = asyncio.create_task(_drain_forever(client))
    sent = 0
    try:
        await client.connect_sequence()
        for frame in malformed_frames(random.Random(seed), FRAMES_EACH):
            await client.ws.send(frame)
            sent += 1
            if sent % 100 == 0:
                await asyncio.sleep(0)  # let the bystander's traffic interleave
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await client.close()
    return sent


async def _fuzz_http(broker: BrokerServer, seed: int) -> list[int]:
    statuses = []
    async with httpx.AsyncClient(base_url=broker.url, timeout=30) as http:
        for path, content_type, body in malformed_bodies(random.Random(seed), BODIES):
            headers = {"Content-Type": content_type} if content_type else {}
            statuses.append((await http.post(path, content=body, headers=headers)).status_code)
    return statuses


async def _bystander(client: WSClient, stop: asyncio.Event) -> list[float]:
    latencies = []
    while not stop.is_set():
        started = time.monotonic()
        answer = await client.query(f"still there? {len(latencies)}", timeout_s=15)
        assert answer["type"] == "query_result", answer
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.2)
    return latencies


@pytest.mark.timeout(90)
async def test_fuzzed_frames_and_bodies_leave_the_broker_serving(broker: BrokerServer) -> None:
    bystander = await WSClient.connect(broker.ws_url)
    await bystander.connect_sequence()
    stop = asyncio.Event()
    watching = asyncio.create_task(_bystander(bystander, stop))
    started = time.monotonic()
    try:
        results = await asyncio.gather(
            *(_fuzz_socket(broker, SEED + i) for i in range(FUZZERS)),
            _fuzz_http(broker, SEED + 100),
        )
    finally:
        stop.set()
        latencies = await watching
        await bystander.close()
    elapsed = time.monotonic() - started
    frames = sum(r for r in results[:FUZZERS] if isinstance(r, int))
    statuses = results[FUZZERS]
    assert isinstance(statuses, list)
    print(
        f"{frames} frames + {len(statuses)} bodies in {elapsed:.1f}s; bystander answered "
        f"{len(latencies)} queries, slowest {max(latencies):.2f}s"
    )
    assert frames == FUZZERS * FRAMES_EACH
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert latencies, "the bystander got no answer while the fuzzers ran"
    async with httpx.AsyncClient(base_url=broker.url) as http:
        assert (await http.get("/healthz")).status_code == 200
    after = await WSClient.connect(broker.ws_url)
    try:
        await after.connect_sequence()
        assert (await after.query("after the storm"))["type"] == "query_result"
    finally:
        await after.close()
