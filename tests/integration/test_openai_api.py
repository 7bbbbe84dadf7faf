"""The ``/v1`` routes driven by the official ``openai`` Python package."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from rentahal.models import AIWorker
from rentahal.storage.ledger import compute_cost
from tests.integration.test_http_api import (
    make_png_b64,
    make_wav,
    start_api_broker,
    user_with_key,
    with_key_handlers,
)
from tests.support.servers import BrokerServer, demo_worker_records


@pytest.fixture
def v1_server(
    tmp_path: Path, ref_workers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrokerServer]:
    """The reference workers, plus a chat worker that lists its models, behind the API."""
    with_key_handlers(monkeypatch)
    workers = demo_worker_records(ref_workers)
    workers.append(
        AIWorker(
            name="listed",
            address=ref_workers["chat"],
            type="chat",
            protocol="openai",
            models=["demo-chat", "tiny-llm"],
        )
    )
    server = start_api_broker(tmp_path, workers)
    yield server
    server.stop()


def client_for(server: BrokerServer, key: str) -> openai.AsyncOpenAI:
    """An OpenAI client for the broker (no retries, so errors surface at once)."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


async def test_chat_completion(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    async with client_for(v1_server, key) as client:
        completion = await client.chat.completions.create(
            model="tiny-llm",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "what is a broker?"},
            ],
        )
    assert completion.object == "chat.completion"
    assert completion.model == "tiny-llm"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "what is a broker?" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    extras = completion.model_extra or {}
    job = extras["rentahal"]
    assert job["worker"] == "listed"
    (row,) = v1_server.call(v1_server.storage.recent_queries(ws.guid or ""))
    assert row["job_id"] == job["job_id"]
    assert row["model_name"] == "tiny-llm"
    assert row["prompt"] == "what is a broker?"
    assert (
        row["cost"] == job["cost"] == compute_cost(row["processing_time"], v1_server.settings.costs)
    )
    await ws.close()


async def test_worker_name_as_model_and_vision(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    async with client_for(v1_server, key) as client:
        by_name = await client.chat.completions.create(
            model="ref-chat", messages=[{"role": "user", "content": "hello"}]
        )
        vision = await client.chat.completions.create(
            model="ref-vision",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe it"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + make_png_b64()},
                        },
                    ],
                }
            ],
        )
    assert "hello" in (by_name.choices[0].message.content or "")
    assert (vision.model_extra or {})["rentahal"]["worker"] == "ref-vision"
    rows = v1_server.call(v1_server.storage.recent_queries(ws.guid or ""))
    assert [r["query_type"] for r in rows] == ["vision", "chat"]
    await ws.close()


async def test_streaming_chat(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    async with client_for(v1_server, key) as client:
        stream = await client.chat.completions.create(
            model="demo-chat",
            messages=[{"role": "user", "content": "stream me an answer"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream me an answer" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1
    (row,) = v1_server.call(v1_server.storage.recent_queries(ws.guid or ""))
    assert row["status"] == "done" and row["cost"] > 0
    await ws.close()


async def test_image_generation(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    async with client_for(v1_server, key) as client:
        images = await client.images.generate(prompt="a lighthouse", response_format="b64_json")
    assert len(images.data or []) == 1
    png = base64.b64decode((images.data or [])[0].b64_json or "")
    assert png.startswith(b"\x89PNG")
    (row,) = v1_server.call(v1_server.storage.recent_queries(ws.guid or ""))
    assert row["query_type"] == "imagine" and row["status"] == "done"
    await ws.close()


async def test_models_list(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    async with client_for(v1_server, key) as client:
        ids = [m.id async for m in client.models.list()]
    assert ids == sorted(
        ["demo-chat", "tiny-llm", "ref-chat", "ref-vision", "ref-imagine", "ref-speech"]
    )
    await ws.close()


async def test_blacklisted_worker_models_vanish(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    state = v1_server.registry.get("listed")
    assert state is not None
    state.worker.is_blacklisted = True  # as the health monitor would mark it
    try:
        async with client_for(v1_server, key) as client:
            ids = [m.id async for m in client.models.list()]
            with pytest.raises(openai.NotFoundError) as caught:
                await client.chat.completions.create(
                    model="tiny-llm", messages=[{"role": "user", "content": "hi"}]
                )
    finally:
        state.worker.is_blacklisted = False
    assert "tiny-llm" not in ids and "ref-chat" in ids
    assert "tiny-llm" in caught.value.message
    await ws.close()


async def test_transcription_and_speech(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    wav = make_wav()
    async with client_for(v1_server, key) as client:
        transcript = await client.audio.transcriptions.create(
            model="whisper-1", file=("hello.wav", wav, "audio/wav")
        )
        speech = await client.audio.speech.create(
            model="tts-1", voice="alloy", input="hello world", response_format="wav"
        )
        audio = speech.read()
    assert f"received {len(wav)} bytes of WAV audio" in transcript.text
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert speech.response.headers["content-type"] == "audio/wav"
    rows = v1_server.call(v1_server.storage.recent_queries(ws.guid or ""))
    assert [(r["query_type"], r["model_type"], r["status"]) for r in rows] == [
        ("speech", "speech", "done"),
        ("speech", "worker_node", "done"),
    ]
    assert all(
        r["cost"] == compute_cost(r["processing_time"], v1_server.settings.costs) for r in rows
    )
    await ws.close()


async def test_auth_errors_in_openai_shape(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    messages = [{"role": "user", "content": "hi"}]
    async with client_for(v1_server, "rah_not-a-real-key") as bad:
        with pytest.raises(openai.AuthenticationError) as invalid:
            await bad.chat.completions.create(model="demo-chat", messages=messages)  # type: ignore[arg-type]
    assert invalid.value.status_code == 401
    body = invalid.value.body
    assert isinstance(body, dict)
    assert body["type"] == "authentication_error" and body["code"] == "invalid_api_key"
    async with httpx.AsyncClient(base_url=v1_server.url, timeout=30) as http:
        missing = await http.get("/v1/models")
    assert missing.status_code == 401
    error = missing.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == "missing_api_key"
    await ws.send({"type": "revoke_api_key", "prefix": key[:12]})
    await ws.expect("api_key_revoked")
    async with client_for(v1_server, key) as revoked:
        with pytest.raises(openai.AuthenticationError):
            await revoked.models.list()
    await ws.close()


async def test_banned_users_key_is_403_right_after_the_ban(v1_server: BrokerServer) -> None:
    sysop, _ = await user_with_key(v1_server, "sysop")
    victim, key = await user_with_key(v1_server, "victim")
    async with client_for(v1_server, key) as client:
        await client.models.list()
        await sysop.send({"type": "ban_user", "user_guid": victim.guid})
        await sysop.expect("user_banned", guid=victim.guid)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(
                model="demo-chat", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 403
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "user_banned"
    await sysop.close()


async def test_unknown_model_is_404_naming_it(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    async with client_for(v1_server, key) as client:
        with pytest.raises(openai.NotFoundError) as chat:
            await client.chat.completions.create(
                model="gpt-9-ultra", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.NotFoundError) as image:
            await client.images.generate(prompt="x", model="demo-chat")
    assert "gpt-9-ultra" in chat.value.message
    assert isinstance(chat.value.body, dict) and chat.value.body["code"] == "model_not_found"
    assert "demo-chat" in image.value.message  # a chat model is no image model
    assert v1_server.call(v1_server.storage.recent_queries(ws.guid or "")) == []
    await ws.close()


async def test_bad_requests_are_400_in_openai_shape(v1_server: BrokerServer) -> None:
    ws, key = await user_with_key(v1_server)
    async with client_for(v1_server, key) as client:
        with pytest.raises(openai.BadRequestError) as no_user:
            await client.chat.completions.create(
                model="demo-chat", messages=[{"role": "system", "content": "only me"}]
            )
        with pytest.raises(openai.BadRequestError) as remote_image:
            await client.chat.completions.create(
                model="ref-vision",
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ],
            )
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="demo-chat", messages=[])
        with pytest.raises(openai.BadRequestError) as mp3:
            await client.audio.speech.create(
                model="tts-1", voice="alloy", input="hi", response_format="mp3"
            )
    assert "user message" in no_user.value.message
    assert "data: URI" in remote_image.value.message
    assert isinstance(empty.value.body, dict)
    assert empty.value.body["type"] == "invalid_request_error"
    assert empty.value.body["param"] == "messages"
    assert "wav" in mp3.value.message
    await ws.close()
