"""OpenAI-compatible backend: chat, vision, image generation, speech in and out."""

from __future__ import annotations

import base64

import pytest
from tests.fakes import PNG_B64, WAV_BYTES, FakeServer

from rentahal.backends import HttpClient
from rentahal.backends.openai import OpenAIBackend, _base
from rentahal.errors import WorkerBadResponse, WorkerRateLimited, WorkerRejected
from rentahal.models import AIWorker, Query

CHAT = Query(prompt="hello", query_type="chat")


def _worker(
    fake: FakeServer, key: str | None = "sk-test", models: list[str] | None = None
) -> AIWorker:
    return AIWorker(
        name="oai-1", address=fake.address, protocol="openai", api_key=key, models=models or []
    )


@pytest.mark.parametrize(
    ("address", "base"),
    [
        ("api.openai.com", "https://api.openai.com"),
        ("https://api.openai.com/v1", "https://api.openai.com"),
        ("localhost:8000/v1", "http://localhost:8000"),
        ("gpu1:8000", "http://gpu1:8000"),
    ],
)
def test_base_url(address: str, base: str) -> None:
    assert _base(AIWorker(name="w", address=address, protocol="openai")) == base


async def test_chat(fake_openai: FakeServer, client: HttpClient) -> None:
    reply = await OpenAIBackend().run(client, _worker(fake_openai), CHAT, 5)

    assert (reply.result, reply.result_type) == ("gpt-4o-mini answered 1 part(s)", "text")
    sent = fake_openai.state.last
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": False,
    }


async def test_no_key_no_authorization(fake_openai: FakeServer, client: HttpClient) -> None:
    await OpenAIBackend().run(client, _worker(fake_openai, key=None), CHAT, 5)

    assert "authorization" not in fake_openai.state.last.headers


async def test_model_choice(fake_openai: FakeServer, client: HttpClient) -> None:
    backend = OpenAIBackend(default_model="local-model")
    listed = _worker(fake_openai, models=["qwen2", "llama"])

    await backend.run(client, listed, CHAT, 5)
    await backend.run(client, listed, CHAT.model_copy(update={"model_name": "llama"}), 5)
    await backend.run(client, _worker(fake_openai), CHAT, 5)

    models = [r.json["model"] for r in fake_openai.state.requests]
    assert models == ["qwen2", "llama", "local-model"]


async def test_vision_content_parts(fake_openai: FakeServer, client: HttpClient) -> None:
    jpeg = "/9j/4AAQSkZJRg=="
    query = Query(prompt="what is it?", query_type="vision", image=jpeg)

    reply = await OpenAIBackend().run(client, _worker(fake_openai), query, 5)

    assert reply.result == "gpt-4o-mini answered 2 part(s)"
    assert fake_openai.state.last.json["messages"][0]["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg}"}},
    ]


async def test_missing_choices_is_a_bad_response(
    fake_openai: FakeServer, client: HttpClient
) -> None:
    fake_openai.state.mode = "missing"

    with pytest.raises(WorkerBadResponse, match=r"oai-1 answer lacks field choices\.0"):
        await OpenAIBackend().run(client, _worker(fake_openai), CHAT, 5)


async def test_imagine(fake_openai: FakeServer, client: HttpClient) -> None:
    query = Query(prompt="a cat", query_type="imagine")

    reply = await OpenAIBackend().run(client, _worker(fake_openai), query, 5)
    configured = OpenAIBackend(image_model="dall-e-2", image_size="256x256")
    await configured.run(client, _worker(fake_openai), query, 5)

    assert (reply.result, reply.result_type) == (PNG_B64, "image")
    plain, custom = fake_openai.state.requests
    assert plain.path == "/v1/images/generations"
    assert plain.headers["authorization"] == "Bearer sk-test"
    assert plain.json == {
        "prompt": "a cat",
        "n": 1,
        "size": "512x512",
        "response_format": "b64_json",
    }
    assert (custom.json["model"], custom.json["size"]) == ("dall-e-2", "256x256")


async def test_transcribe(fake_openai: FakeServer, client: HttpClient) -> None:
    backend = OpenAIBackend()

    text = await backend.transcribe(client, _worker(fake_openai), WAV_BYTES, "rec.wav", 5)

    assert text == f"heard {len(WAV_BYTES)} bytes"
    sent = fake_openai.state.last
    assert sent.path == "/v1/audio/transcriptions"
    assert sent.headers["content-type"].startswith("multipart/form-data")
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.form is not None
    assert sent.form["model"] == "whisper-1"
    filename, audio, _ = sent.form["file"]
    assert (filename, audio) == ("rec.wav", WAV_BYTES)


async def test_speech_query_with_audio_is_transcribed(
    fake_openai: FakeServer, client: HttpClient
) -> None:
    query = Query(query_type="speech", audio=base64.b64encode(WAV_BYTES).decode())

    reply = await OpenAIBackend().run(client, _worker(fake_openai), query, 5)

    assert (reply.result, reply.result_type) == (f"heard {len(WAV_BYTES)} bytes", "text")


async def test_speech_query_with_bad_base64_is_rejected(
    fake_openai: FakeServer, client: HttpClient
) -> None:
    query = Query(query_type="speech", audio="not base64!")

    with pytest.raises(WorkerRejected, match="not base64"):
        await OpenAIBackend().run(client, _worker(fake_openai), query, 5)
    assert fake_openai.state.requests == []


async def test_transcribe_rate_limited(fake_openai: FakeServer, client: HttpClient) -> None:
    fake_openai.state.mode = "429"

    with pytest.raises(WorkerRateLimited):
        await OpenAIBackend().transcribe(client, _worker(fake_openai), WAV_BYTES, "a.wav", 5)


async def test_speak(fake_openai: FakeServer, client: HttpClient) -> None:
    backend = OpenAIBackend(speech_model="tts-1-hd", voice="nova")

    audio = await backend.speak(client, _worker(fake_openai), "Good evening", 5)

    assert audio == WAV_BYTES
    sent = fake_openai.state.last
    assert sent.path == "/v1/audio/speech"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.json == {
        "model": "tts-1-hd",
        "input": "Good evening",
        "voice": "nova",
        "response_format": "wav",
    }


@pytest.mark.parametrize("body", [b'{"ok": true}', b"", b"ID3\x04\x00mp3 data here"])
async def test_speak_rejects_what_is_not_wav(
    body: bytes, fake_openai: FakeServer, client: HttpClient
) -> None:
    fake_openai.state.options["speech_body"] = body

    with pytest.raises(WorkerBadResponse, match=r"oai-1 answered .* not WAV audio"):
        await OpenAIBackend().speak(client, _worker(fake_openai), "hi", 5)


async def test_speak_html_is_a_bad_response(fake_openai: FakeServer, client: HttpClient) -> None:
    fake_openai.state.mode = "html"

    with pytest.raises(WorkerBadResponse, match="text/html"):
        await OpenAIBackend().speak(client, _worker(fake_openai), "hi", 5)


async def test_probe_and_list_send_the_key(fake_openai: FakeServer, client: HttpClient) -> None:
    backend = OpenAIBackend()

    assert await backend.probe(client, _worker(fake_openai), 5) == 200
    assert await backend.list_models(client, _worker(fake_openai), 5) == [
        "gpt-4o-mini",
        "dall-e-2",
    ]

    for sent in fake_openai.state.requests:
        assert (sent.method, sent.path) == ("GET", "/v1/models")
        assert sent.headers["authorization"] == "Bearer sk-test"
