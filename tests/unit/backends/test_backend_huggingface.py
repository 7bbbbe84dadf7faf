"""Hugging Face Inference backend: URL per model, payload, answer shapes, loading 503."""

from __future__ import annotations

import pytest
from tests.fakes import FakeServer

from rentahal.backends import HttpClient
from rentahal.backends.huggingface import HuggingFaceBackend, _base
from rentahal.errors import WorkerRejected, WorkerUnavailable
from rentahal.models import AIWorker, Query

CHAT = Query(prompt="Once upon a time", query_type="chat")


def _worker(
    fake: FakeServer, models: list[str] | None = None, key: str | None = "hf_x"
) -> AIWorker:
    return AIWorker(
        name="hf-1",
        address=fake.address,
        protocol="huggingface",
        api_key=key,
        models=["gpt2"] if models is None else models,
    )


def test_inference_host_is_https() -> None:
    worker = AIWorker(name="hf", address="api-inference.huggingface.co", protocol="huggingface")
    assert _base(worker) == "https://api-inference.huggingface.co"


async def test_generation(fake_huggingface: FakeServer, client: HttpClient) -> None:
    query = CHAT.model_copy(update={"model_name": "openai-community/gpt2"})

    reply = await HuggingFaceBackend().run(client, _worker(fake_huggingface), query, 5)

    assert (reply.result, reply.result_type) == (
        "Once upon a time ... (openai-community/gpt2)",
        "text",
    )
    sent = fake_huggingface.state.last
    assert (sent.method, sent.path) == ("POST", "/models/openai-community/gpt2")
    assert sent.headers["authorization"] == "Bearer hf_x"
    assert sent.json == {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 50}}


async def test_dict_answer(fake_huggingface: FakeServer, client: HttpClient) -> None:
    fake_huggingface.state.options["dict_answer"] = True

    reply = await HuggingFaceBackend().run(client, _worker(fake_huggingface), CHAT, 5)

    assert reply.result == "Once upon a time ... (gpt2)"


async def test_model_choice_and_no_key(fake_huggingface: FakeServer, client: HttpClient) -> None:
    backend = HuggingFaceBackend(default_model="distilgpt2", max_new_tokens=20)

    await backend.run(client, _worker(fake_huggingface, models=[], key=None), CHAT, 5)

    sent = fake_huggingface.state.last
    assert sent.path == "/models/distilgpt2"
    assert sent.json["parameters"] == {"max_new_tokens": 20}
    assert "authorization" not in sent.headers


async def test_no_model_at_all_is_rejected(
    fake_huggingface: FakeServer, client: HttpClient
) -> None:
    with pytest.raises(WorkerRejected, match="no Hugging Face model"):
        await HuggingFaceBackend().run(client, _worker(fake_huggingface, models=[]), CHAT, 5)
    assert fake_huggingface.state.requests == []


async def test_model_loading_is_unavailable(
    fake_huggingface: FakeServer, client: HttpClient
) -> None:
    fake_huggingface.state.mode = "503"

    with pytest.raises(WorkerUnavailable, match=r"answered 503 \(Service Unavailable\)") as caught:
        await HuggingFaceBackend().run(client, _worker(fake_huggingface), CHAT, 5)

    assert caught.value.status == 503
    assert "loading" not in str(caught.value)  # the worker's own text is not shown to users


async def test_probe(fake_huggingface: FakeServer, client: HttpClient) -> None:
    backend = HuggingFaceBackend()

    assert await backend.probe(client, _worker(fake_huggingface), 5) == 200
    assert await backend.probe(client, _worker(fake_huggingface, models=[]), 5) == 200

    assert [(r.method, r.path) for r in fake_huggingface.state.requests] == [
        ("GET", "/models/gpt2"),
        ("GET", "/"),
    ]


async def test_list_models_cannot_tell(fake_huggingface: FakeServer, client: HttpClient) -> None:
    assert await HuggingFaceBackend().list_models(client, _worker(fake_huggingface), 5) == []
