"""OpenAI-compatible streaming: content deltas from SSE, and every way a stream breaks."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.fakes import FakeServer, FakeState

from rentahal.backends import HttpClient
from rentahal.backends.openai import OpenAIBackend
from rentahal.errors import (
    WorkerBadResponse,
    WorkerRateLimited,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnavailable,
)
from rentahal.models import AIWorker, Query

CHAT = Query(prompt="hello", query_type="chat")


def _worker(fake: FakeServer) -> AIWorker:
    return AIWorker(name="oai-1", address=fake.address, protocol="openai", api_key="sk-test")


async def _collect(
    fake: FakeServer, client: HttpClient, got: list[str], timeout_s: float = 5
) -> None:
    async for delta in OpenAIBackend().stream_chat(client, _worker(fake), CHAT, timeout_s):
        got.append(delta)


async def test_yields_deltas_until_done(fake_openai: FakeServer, client: HttpClient) -> None:
    got: list[str] = []

    await _collect(fake_openai, client, got)

    assert got == ["Hel", "lo", " world"]
    sent = fake_openai.state.last
    assert sent.json["stream"] is True
    assert sent.headers["authorization"] == "Bearer sk-test"


async def test_cut_mid_way_raises_after_partial_output(
    fake_openai: FakeServer, client: HttpClient
) -> None:
    fake_openai.state.mode = "cut"
    got: list[str] = []

    with pytest.raises(WorkerBadResponse, match="oai-1"):
        await _collect(fake_openai, client, got)

    assert got == ["Hel"]


async def test_clean_end_without_done_raises(fake_openai: FakeServer, client: HttpClient) -> None:
    fake_openai.state.mode = "nodone"
    got: list[str] = []

    with pytest.raises(WorkerBadResponse, match=r"without \[DONE\]"):
        await _collect(fake_openai, client, got)

    assert got == ["Hel", "lo", " world"]


async def test_error_chunk_mid_stream(fake_openai: FakeServer, client: HttpClient) -> None:
    fake_openai.state.mode = "stream_error"
    got: list[str] = []

    with pytest.raises(WorkerUnavailable, match="failed mid-stream") as caught:
        await _collect(fake_openai, client, got)

    assert "overloaded" not in str(caught.value)  # the worker's text is not reflected
    assert got == ["Hel"]


async def test_server_ignoring_stream_answers_once(
    fake_openai: FakeServer, client: HttpClient
) -> None:
    fake_openai.state.mode = "json_stream"
    got: list[str] = []

    await _collect(fake_openai, client, got)

    assert got == ["gpt-4o-mini answered 1 part(s)"]


@pytest.mark.parametrize(
    ("mode", "error", "status"),
    [
        ("429", WorkerRateLimited, 429),
        ("400", WorkerRejected, 400),
        ("500", WorkerUnavailable, 500),
        ("html", WorkerBadResponse, None),
        ("truncated", WorkerBadResponse, None),
    ],
)
async def test_failures_before_the_stream(
    mode: str,
    error: type[Exception],
    status: int | None,
    fake_openai: FakeServer,
    client: HttpClient,
) -> None:
    fake_openai.state.mode = mode
    got: list[str] = []

    with pytest.raises(error) as caught:
        await _collect(fake_openai, client, got)

    assert got == []
    assert getattr(caught.value, "status", None) == status


async def test_hang_is_a_timeout(fake_openai: FakeServer, client: HttpClient) -> None:
    fake_openai.state.mode = "hang"

    with pytest.raises(WorkerTimeout):
        await _collect(fake_openai, client, [], timeout_s=0.3)


async def test_abandoning_the_stream_releases_the_connection(
    fake_openai: FakeServer, client: HttpClient
) -> None:
    stream = OpenAIBackend().stream_chat(client, _worker(fake_openai), CHAT, 5)
    assert await anext(stream) == "Hel"
    await stream.aclose()  # type: ignore[attr-defined]

    got: list[str] = []
    await _collect(fake_openai, client, got)
    assert got == ["Hel", "lo", " world"]


async def test_html_instead_of_a_stream(fake_openai: FakeServer, client: HttpClient) -> None:
    fake_openai.state.mode = "html"

    with pytest.raises(WorkerBadResponse, match=r"oai-1 answered text/html.*not a stream"):
        await _collect(fake_openai, client, [])


async def test_a_long_delta_line_arrives_whole(client: HttpClient) -> None:
    big = "x" * 300_000
    body = (
        b"data: " + json.dumps({"choices": [{"delta": {"content": big}}]}).encode() + b"\n\n"
        b"data: [DONE]\n\n"
    )

    def create_app(state: FakeState) -> Starlette:
        async def completions(request: Request) -> Response:
            await state.record(request)
            return Response(body, media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])

    server = FakeServer(create_app).start()
    try:
        got: list[str] = []
        await _collect(server, client, got)
        assert got == [big]
    finally:
        server.stop()
