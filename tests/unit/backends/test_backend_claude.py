"""Claude backend: endpoint forms, headers, payload, vision blocks, free probe."""

from __future__ import annotations

import pytest
from tests.fakes import PNG_B64, FakeServer

from rentahal.backends import HttpClient
from rentahal.backends.claude import ClaudeBackend, _urls
from rentahal.errors import WorkerBadResponse, WorkerRejected
from rentahal.models import AIWorker, Query

CHAT = Query(prompt="Say hi", query_type="chat")
JPEG_B64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDA=="


def _worker(address: str) -> AIWorker:
    return AIWorker(name="claude-1", address=address, protocol="claude", api_key="sk-ant-test")


@pytest.mark.parametrize(
    ("address", "base", "endpoint"),
    [
        (
            "https://api.anthropic.com/v1/messages",
            "https://api.anthropic.com",
            "https://api.anthropic.com/v1/messages",
        ),
        ("api.anthropic.com", "https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/messages"),
        ("gw:8080/proxy/v1/messages", "http://gw:8080/proxy", "http://gw:8080/proxy/v1/messages"),
        ("gw:8080/custom/claude", "http://gw:8080", "http://gw:8080/custom/claude"),
    ],
)
def test_endpoint_forms(address: str, base: str, endpoint: str) -> None:
    assert _urls(_worker(address)) == (base, endpoint)


async def test_chat_headers_payload_answer(fake_claude: FakeServer, client: HttpClient) -> None:
    reply = await ClaudeBackend().run(client, _worker(fake_claude.address), CHAT, 5)

    assert (reply.result, reply.result_type) == ("claude-3-haiku-20240307 read text", "text")
    sent = fake_claude.state.last
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-3-haiku-20240307",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 300,
    }


async def test_full_endpoint_address(fake_claude: FakeServer, client: HttpClient) -> None:
    worker = _worker(f"http://{fake_claude.address}/proxy/v1/messages")

    await ClaudeBackend().run(client, worker, CHAT, 5)
    assert await ClaudeBackend().probe(client, worker, 5) == 200

    assert [r.path for r in fake_claude.state.requests] == [
        "/proxy/v1/messages",
        "/proxy/v1/models",
    ]


async def test_model_choice(fake_claude: FakeServer, client: HttpClient) -> None:
    backend = ClaudeBackend(default_model="claude-3-5-sonnet-20241022", max_tokens=50)

    await backend.run(client, _worker(fake_claude.address), CHAT, 5)
    named = CHAT.model_copy(update={"model_name": "claude-3-opus-20240229"})
    await backend.run(client, _worker(fake_claude.address), named, 5)

    first, second = (r.json for r in fake_claude.state.requests)
    assert (first["model"], first["max_tokens"]) == ("claude-3-5-sonnet-20241022", 50)
    assert second["model"] == "claude-3-opus-20240229"


@pytest.mark.parametrize(
    ("image", "media_type", "data"),
    [
        (JPEG_B64, "image/jpeg", JPEG_B64),
        (PNG_B64, "image/png", PNG_B64),
        (f"data:image/png;base64,{PNG_B64}", "image/png", PNG_B64),
    ],
)
async def test_vision_blocks(
    image: str, media_type: str, data: str, fake_claude: FakeServer, client: HttpClient
) -> None:
    query = Query(prompt="describe", query_type="vision", image=image)

    reply = await ClaudeBackend().run(client, _worker(fake_claude.address), query, 5)

    assert reply.result.endswith("read image+text")
    assert fake_claude.state.last.json["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}},
        {"type": "text", "text": "describe"},
    ]


async def test_text_block_after_a_thinking_block(
    fake_claude: FakeServer, client: HttpClient
) -> None:
    fake_claude.state.options["thinking_first"] = True

    reply = await ClaudeBackend().run(client, _worker(fake_claude.address), CHAT, 5)

    assert reply.result == "claude-3-haiku-20240307 read text"


async def test_empty_content_is_a_bad_response(fake_claude: FakeServer, client: HttpClient) -> None:
    fake_claude.state.mode = "missing"

    with pytest.raises(WorkerBadResponse, match="claude-1 answer lacks field content"):
        await ClaudeBackend().run(client, _worker(fake_claude.address), CHAT, 5)


async def test_missing_key_is_rejected(fake_claude: FakeServer, client: HttpClient) -> None:
    worker = AIWorker(name="claude-1", address=fake_claude.address, protocol="claude")

    with pytest.raises(WorkerRejected) as caught:
        await ClaudeBackend().run(client, worker, CHAT, 5)

    assert caught.value.status == 401
    assert "x-api-key" not in fake_claude.state.last.headers


async def test_probe_is_a_free_models_listing(fake_claude: FakeServer, client: HttpClient) -> None:
    assert await ClaudeBackend().probe(client, _worker(fake_claude.address), 5) == 200

    sent = fake_claude.state.last
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
