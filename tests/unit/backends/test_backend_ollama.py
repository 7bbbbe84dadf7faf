"""Ollama backend: /api/chat payload, model choice, vision images."""

from __future__ import annotations

from tests.fakes import PNG_B64, FakeServer

from rentahal.backends import HttpClient
from rentahal.backends.ollama import OllamaBackend
from rentahal.models import AIWorker, Query


def _worker(fake: FakeServer, models: list[str] | None = None) -> AIWorker:
    return AIWorker(name="ollama-1", address=fake.address, protocol="ollama", models=models or [])


async def test_chat_payload_and_answer(fake_ollama: FakeServer, client: HttpClient) -> None:
    query = Query(prompt="why is the sky blue?", query_type="chat")

    reply = await OllamaBackend().run(client, _worker(fake_ollama), query, 5)

    assert (reply.result, reply.result_type) == (
        "llama3 says: why is the sky blue? (0 images)",
        "text",
    )
    sent = fake_ollama.state.last
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.json == {
        "model": "llama3",
        "messages": [{"role": "user", "content": "why is the sky blue?"}],
        "stream": False,
    }


async def test_model_choice(fake_ollama: FakeServer, client: HttpClient) -> None:
    backend = OllamaBackend(default_model="phi3")
    listed = _worker(fake_ollama, ["mistral", "llava"])
    bare = _worker(fake_ollama)
    chat = Query(prompt="hi", query_type="chat")

    await backend.run(client, listed, chat.model_copy(update={"model_name": "llava"}), 5)
    await backend.run(client, listed, chat, 5)
    await backend.run(client, bare, chat, 5)

    assert [r.json["model"] for r in fake_ollama.state.requests] == ["llava", "mistral", "phi3"]


async def test_vision_sends_bare_base64_images(fake_ollama: FakeServer, client: HttpClient) -> None:
    backend = OllamaBackend()
    worker = _worker(fake_ollama, ["llava"])
    for image in (PNG_B64, f"data:image/png;base64,{PNG_B64}"):
        query = Query(prompt="what is this?", query_type="vision", image=image)
        reply = await backend.run(client, worker, query, 5)
        assert reply.result.endswith("(1 images)")

    for sent in fake_ollama.state.requests:
        assert sent.json["messages"][0]["images"] == [PNG_B64]


async def test_probe_uses_tags(fake_ollama: FakeServer, client: HttpClient) -> None:
    assert await OllamaBackend().probe(client, _worker(fake_ollama), 5) == 200
    assert fake_ollama.state.last.path == "/api/tags"
