"""``/v1/chat/completions`` with ``stream: true``: deltas straight from the worker.

Real brokers and workers on loopback, driven by the official ``openai`` package:
``openai`` and ``ollama`` workers stream many chunks, a ``predict`` worker one; the
ledger row is written once; a client that goes away cancels the query; worker
failures before and after the first delta; ``max_concurrency`` holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rentahal.models import AIWorker
from rentahal.storage.keys import KeyStore
from rentahal.storage.ledger import compute_cost
from tests.conftest import BrokerFactory
from tests.support.servers import (
    BrokerServer,
    ThreadServer,
    demo_worker_records,
    free_port,
    reference_worker,
    worker_stats,
)

MESSAGES: list[Any] = [{"role": "user", "content": "please stream a fairly long answer to me"}]


def api_user(server: BrokerServer) -> tuple[str, str]:
    """A new user and an API key of theirs (no WebSocket involved)."""
    guid = str(uuid.uuid4())
    server.call(server.storage.for_user(guid).get_or_create_user(guid))
    created = server.call(KeyStore(server.storage).create(guid, "streaming"))
    return guid, created.key


def client_for(server: BrokerServer, key: str) -> openai.AsyncOpenAI:
    """An OpenAI client for the broker (no retries, so errors surface at once)."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def rows_of(server: BrokerServer, guid: str) -> list[dict[str, Any]]:
    """The user's ledger rows, newest first."""
    return server.call(server.storage.recent_queries(guid))  # type: ignore[no-any-return]


async def wait_row(server: BrokerServer, guid: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The user's one ledger row, once it is written."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = rows_of(server, guid)
        if rows:
            (row,) = rows
            return row
        assert time.monotonic() < deadline, "no ledger row was written"
        await asyncio.sleep(0.05)


def openai_worker(name: str, address: str, max_concurrency: int = 4) -> AIWorker:
    """A chat worker spoken to over the OpenAI API (so the broker streams from it)."""
    return AIWorker(
        name=name,
        address=address,
        type="chat",
        protocol="openai",
        models=["demo-chat"],
        max_concurrency=max_concurrency,
    )


def in_flight(server: BrokerServer, name: str) -> int:
    state = server.registry.get(name)
    assert state is not None
    return state.in_flight


class DripWorker:
    """An OpenAI-style worker that streams one delta, then hangs (or breaks off)."""

    def __init__(self, mode: str = "hang") -> None:
        self.mode = mode
        self.stream_closed = threading.Event()

    def app(self) -> Starlette:
        def sse(delta: dict[str, Any]) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            return b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"

        async def body() -> AsyncIterator[bytes]:
            try:
                yield sse({"role": "assistant", "content": ""})
                yield sse({"content": "first "})
                if self.mode == "break":
                    return  # the body ends without data: [DONE]
                await asyncio.sleep(60)
                yield sse({"content": "never sent"})
            finally:
                self.stream_closed.set()

        async def chat(request: Request) -> Response:
            await request.json()
            return StreamingResponse(body(), media_type="text/event-stream")

        async def models(_request: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": "demo-chat"}]})

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/models", models),
            ]
        )


@pytest.fixture
def drip() -> Iterator[tuple[DripWorker, str]]:
    worker = DripWorker()
    server = ThreadServer(worker.app())  # type: ignore[arg-type]
    server.start()
    yield worker, f"127.0.0.1:{server.port}"
    server.stop()


async def test_openai_worker_streams_many_chunks_recorded_once(
    broker_factory: BrokerFactory, ref_workers: dict[str, str]
) -> None:
    server = broker_factory([openai_worker("streamer", ref_workers["chat"])])
    guid, key = api_user(server)
    async with client_for(server, key) as client:
        stream = await client.chat.completions.create(
            model="demo-chat",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(model="demo-chat", messages=MESSAGES)
    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    pieces = [text for text in contents if text]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1 and chunks[0].model == "demo-chat"
    extras = next(c.model_extra for c in chunks if c.model_extra and "rentahal" in c.model_extra)
    job = extras["rentahal"]
    assert chunks[0].id == f"chatcmpl-{job['job_id']}"

    rows = rows_of(server, guid)
    streamed = next(r for r in rows if r["job_id"] == job["job_id"])
    assert streamed["status"] == "done" and streamed["worker"] == "streamer"
    assert streamed["attempts"] == 1 and streamed["model_name"] == "demo-chat"
    assert streamed["cost"] == job["cost"] > 0
    assert streamed["cost"] == compute_cost(streamed["processing_time"], server.settings.costs)
    user = server.call(server.broker.get_user(guid))
    assert user.query_count == 2  # the streamed and the queued query, each once
    assert user.total_cost == pytest.approx(sum(r["cost"] for r in rows))
    assert in_flight(server, "streamer") == 0


async def test_ollama_worker_streams_ndjson_deltas(
    broker_factory: BrokerFactory, ref_workers: dict[str, str]
) -> None:
    record = AIWorker(name="llama", address=ref_workers["chat"], protocol="ollama")
    server = broker_factory([record])
    guid, key = api_user(server)
    async with client_for(server, key) as client:
        stream = await client.chat.completions.create(model="llama", messages=MESSAGES, stream=True)
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        whole = await client.chat.completions.create(model="llama", messages=MESSAGES)
    assert len([p for p in pieces if p]) > 1
    assert "".join(p or "" for p in pieces) == whole.choices[0].message.content
    assert [r["status"] for r in rows_of(server, guid)] == ["done", "done"]


async def test_predict_worker_answers_one_honest_chunk(
    broker_factory: BrokerFactory, ref_workers: dict[str, str]
) -> None:
    server = broker_factory(demo_worker_records(ref_workers))
    guid, key = api_user(server)
    async with client_for(server, key) as client:
        stream = await client.chat.completions.create(
            model="ref-chat", messages=MESSAGES, stream=True
        )
        chunks = [chunk async for chunk in stream]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices]
    (text,) = [p for p in pieces if p]
    assert "please stream a fairly long answer to me" in text
    row = await wait_row(server, guid)
    assert row["status"] == "done" and row["worker"] == "ref-chat" and row["cost"] > 0


async def test_closing_the_stream_early_cancels_uncharged(
    broker_factory: BrokerFactory, drip: tuple[DripWorker, str]
) -> None:
    worker, address = drip
    server = broker_factory([openai_worker("drip", address)])
    guid, key = api_user(server)
    async with client_for(server, key) as client:
        stream = await client.chat.completions.create(
            model="demo-chat", messages=MESSAGES, stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                assert chunk.choices[0].delta.content == "first "
                break
        await stream.close()
    row = await wait_row(server, guid)
    assert row["status"] == "cancelled" and row["cost"] == 0.0
    assert row["worker"] == "drip"
    # The broker hung up on the worker and gave the slot back.
    assert await asyncio.to_thread(worker.stream_closed.wait, 10)
    assert in_flight(server, "drip") == 0
    assert server.call(server.broker.get_user(guid)).total_cost == 0.0


async def test_worker_breaking_off_mid_stream_ends_with_an_error_event(
    broker_factory: BrokerFactory, drip: tuple[DripWorker, str]
) -> None:
    worker, address = drip
    worker.mode = "break"
    server = broker_factory([openai_worker("drip", address)])
    guid, key = api_user(server)
    received: list[str] = []
    async with client_for(server, key) as client:
        stream = await client.chat.completions.create(
            model="demo-chat", messages=MESSAGES, stream=True
        )
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    assert received == ["first "]
    assert "[DONE]" in caught.value.message
    row = await wait_row(server, guid)
    assert row["status"] == "failed" and row["cost"] == 0.0 and row["worker"] == "drip"


async def test_worker_failing_before_the_first_delta_is_an_openai_error(
    broker_factory: BrokerFactory,
) -> None:
    server = broker_factory([openai_worker("gone", f"127.0.0.1:{free_port()}")])
    guid, key = api_user(server)
    async with client_for(server, key) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="demo-chat", messages=MESSAGES, stream=True)
    assert caught.value.status_code >= 500
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "server_error"
    assert "gone" in caught.value.message
    row = await wait_row(server, guid)
    assert row["status"] == "failed" and row["cost"] == 0.0 and row["worker"] == "gone"
    assert in_flight(server, "gone") == 0


async def test_max_concurrency_one_runs_streams_one_after_the_other(
    broker_factory: BrokerFactory,
) -> None:
    with reference_worker(latency_ms=300) as address:
        server = broker_factory([openai_worker("single", address, max_concurrency=1)])
        guid, key = api_user(server)

        async def streamed(client: openai.AsyncOpenAI) -> str:
            stream = await client.chat.completions.create(
                model="demo-chat", messages=MESSAGES, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async with client_for(server, key) as client:
            answers = await asyncio.gather(streamed(client), streamed(client))
        stats = worker_stats(address)
    assert answers[0] == answers[1] != ""
    assert stats["max_in_flight_seen"] == 1
    rows = rows_of(server, guid)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert max(r["queue_wait"] for r in rows) >= 0.25  # the second waited for the slot
