"""The reference worker (`rentahal worker`) served by uvicorn on loopback, called over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam
from PIL import Image

from rentahal.worker import BackgroundWorker, WorkerSettings

# ``tests.fakes`` (real fake upstream servers) lives beside the package.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.fakes import FakeServer  # noqa: E402
from tests.fakes import ollama as fake_ollama_api  # noqa: E402
from tests.fakes import openai as fake_openai_api  # noqa: E402


async def _get_json(url: str) -> Any:
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.get(url)
    return response.json()


@pytest.fixture(scope="module")
def demo_worker() -> Iterator[BackgroundWorker]:
    with BackgroundWorker(WorkerSettings(port=0)) as worker:
        yield worker


@pytest.fixture
async def http(demo_worker: BackgroundWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=demo_worker.url, timeout=20) as client:
        yield client


@pytest.fixture
async def oai(demo_worker: BackgroundWorker) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key="unused", base_url=f"{demo_worker.url}/v1", max_retries=0, timeout=20
    ) as client:
        yield client


def _png_b64(width: int = 640, height: int = 480) -> str:
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width * 3 // 4, 0, width, height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\x00\x00" * 8_000)
    return buffer.getvalue()


# -- the original protocol ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/predict/"])
async def test_predict_chat_on_both_paths(http: httpx.AsyncClient, path: str) -> None:
    body = {
        "prompt": "hello worker",
        "type": "chat",
        "model_type": "worker_node",
        "model_name": "demo-chat",
    }
    response = await http.post(path, json=body)
    assert response.status_code == 200
    text = response.json()["response"]
    assert text.startswith("[demo chat]")
    assert "hello worker" in text


async def test_predict_vision_describes_the_real_image(http: httpx.AsyncClient) -> None:
    body = {
        "prompt": "what?",
        "type": "vision",
        "model_type": "worker_node",
        "model_name": "demo-vision",
        "image": _png_b64(),
    }
    response = await http.post("/predict", json=body)
    assert response.status_code == 200
    text = response.json()["response"]
    assert "640x480" in text
    assert "#ff0000 (75%)" in text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"type": "chat"}, 422, "prompt: Field required"),
        ({"prompt": "x", "type": "vision", "image": "aGVsbG8="}, 400, "not a decodable image"),
        ({"prompt": "x", "type": "vision"}, 400, "needs an image"),
        ({"prompt": "x", "image": "%%%"}, 400, "not valid base64"),
        ({"prompt": "x", "type": "imagine"}, 400, "/sdapi/v1/txt2img"),
        ({"prompt": "   "}, 400, "prompt is empty"),
    ],
)
async def test_predict_bad_input_is_a_clear_4xx(
    http: httpx.AsyncClient, body: dict[str, str], status: int, message: str
) -> None:
    response = await http.post("/predict", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


async def test_invalid_json_is_422(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "invalid request" in response.json()["detail"]


# -- AUTOMATIC1111 --------------------------------------------------------------------


async def test_txt2img_returns_a_deterministic_png(http: httpx.AsyncClient) -> None:
    body = {
        "prompt": "a red fox",
        "negative_prompt": "",
        "steps": 50,
        "sampler_name": "Euler a",
        "cfg_scale": 7,
        "width": 320,
        "height": 256,
        "seed": -1,
    }
    first = (await http.post("/sdapi/v1/txt2img", json=body)).json()
    second = (await http.post("/sdapi/v1/txt2img", json=body)).json()
    assert first["images"] == second["images"]
    with Image.open(io.BytesIO(base64.b64decode(first["images"][0]))) as image:
        assert (image.format, image.size) == ("PNG", (320, 256))
    assert first["parameters"]["prompt"] == "a red fox"
    assert json.loads(first["info"])["engine"] == "demo"


async def test_txt2img_rejects_absurd_sizes(http: httpx.AsyncClient) -> None:
    response = await http.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 99999})
    assert response.status_code == 422
    assert "width" in response.json()["detail"]


async def test_a1111_probes(http: httpx.AsyncClient) -> None:
    assert (await http.get("/sdapi/v1/options")).json()["sd_model_checkpoint"] == "demo-imagine"
    assert (await http.get("/internal/ping")).status_code == 200
    assert (await http.get("/sdapi/v1/sd-models")).json()[0]["model_name"] == "demo-imagine"


# -- OpenAI ---------------------------------------------------------------------------


async def test_openai_chat_plain_and_streamed(oai: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
    ]
    completion = await oai.chat.completions.create(model="demo-chat", messages=messages)
    text = completion.choices[0].message.content
    assert text is not None and text.startswith("[demo chat]")
    assert "1 earlier messages" in text

    stream = await oai.chat.completions.create(model="demo-chat", messages=messages, stream=True)
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
    assert len([p for p in pieces if p]) >= 3
    assert "".join(pieces) == text


async def test_openai_stream_is_sse_ending_with_done(http: httpx.AsyncClient) -> None:
    body = {"model": "demo-chat", "stream": True, "messages": [{"role": "user", "content": "x y"}]}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "stop"


async def test_openai_vision_with_a_data_uri(oai: openai.AsyncOpenAI) -> None:
    url = "data:image/png;base64," + _png_b64()
    content: list[ChatCompletionContentPartParam] = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    completion = await oai.chat.completions.create(
        model="demo-vision", messages=[{"role": "user", "content": content}]
    )
    assert "640x480" in (completion.choices[0].message.content or "")


async def test_openai_bad_inputs_are_clear_400s(oai: openai.AsyncOpenAI) -> None:
    bad_image: list[ChatCompletionContentPartParam] = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    ]
    with pytest.raises(openai.BadRequestError, match="not a decodable image"):
        await oai.chat.completions.create(
            model="demo-vision", messages=[{"role": "user", "content": bad_image}]
        )
    remote: list[ChatCompletionContentPartParam] = [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    ]
    with pytest.raises(openai.BadRequestError, match="fetches no URLs"):
        await oai.chat.completions.create(
            model="demo-vision", messages=[{"role": "user", "content": remote}]
        )
    with pytest.raises(openai.BadRequestError, match="not audio"):
        await oai.audio.transcriptions.create(model="demo-speech", file=("a.wav", b"plain text"))
    with pytest.raises(openai.UnprocessableEntityError, match="messages"):
        await oai.chat.completions.create(model="demo-chat", messages=[])


async def test_openai_images_audio_and_models(oai: openai.AsyncOpenAI) -> None:
    images = await oai.images.generate(
        prompt="a blue whale", size="256x256", response_format="b64_json", n=2
    )
    assert images.data is not None and len(images.data) == 2
    pngs = [base64.b64decode(item.b64_json or "") for item in images.data]
    assert pngs[0] != pngs[1]
    with Image.open(io.BytesIO(pngs[0])) as image:
        assert image.size == (256, 256)

    speech = await oai.audio.speech.create(
        model="demo-speech", voice="alloy", input="Testing one two.", response_format="wav"
    )
    with wave.open(io.BytesIO(speech.content)) as reader:
        assert reader.getnframes() > 1_000

    wav_bytes = _wav_bytes()
    transcription = await oai.audio.transcriptions.create(
        model="demo-speech", file=("clip.wav", wav_bytes)
    )
    assert transcription.text == (
        f"[demo transcription] received {len(wav_bytes)} bytes of WAV audio (0.50 s, 16000 Hz mono)"
    )

    ids = [model.id async for model in oai.models.list()]
    assert ids == ["demo-chat", "demo-vision", "demo-imagine", "demo-speech"]


async def test_openai_speech_other_formats_are_refused(http: httpx.AsyncClient) -> None:
    body = {"model": "demo-speech", "input": "hi", "voice": "alloy", "response_format": "mp3"}
    response = await http.post("/v1/audio/speech", json=body)
    assert response.status_code == 400
    assert "use wav" in response.json()["error"]["message"]


# -- Ollama ---------------------------------------------------------------------------


async def test_ollama_tags_chat_and_generate(http: httpx.AsyncClient) -> None:
    tags = (await http.get("/api/tags")).json()
    assert "demo-chat" in [model["name"] for model in tags["models"]]

    message = {"role": "user", "content": "what is it?", "images": [_png_b64(64, 48)]}
    body = {"model": "demo-vision", "messages": [message], "stream": False}
    answer = (await http.post("/api/chat", json=body)).json()
    assert answer["done"] is True
    assert "64x48" in answer["message"]["content"]

    body = {"model": "demo-chat", "prompt": "why is the sky blue", "stream": False}
    generated = (await http.post("/api/generate", json=body)).json()
    assert generated["response"].startswith("[demo chat]")


async def test_ollama_streams_ndjson(http: httpx.AsyncClient) -> None:
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "stream me please"}]}
    async with http.stream("POST", "/api/chat", json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert len(lines) >= 4
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    text = "".join(line["message"]["content"] for line in lines)
    assert "stream me please" in text


async def test_ollama_bad_image_is_a_400_in_ollama_shape(http: httpx.AsyncClient) -> None:
    message = {"role": "user", "content": "x", "images": ["bm90IGFuIGltYWdl"]}
    response = await http.post("/api/chat", json={"model": "m", "messages": [message]})
    assert response.status_code == 400
    assert "not a decodable image" in response.json()["error"]


# -- latency, concurrency, stats -----------------------------------------------------


async def _predict_concurrently(url: str, count: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.post("/predict", json={"prompt": f"q{i}"}) for i in range(count))
        )
        elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * count
    return elapsed


async def test_latency_is_honoured() -> None:
    async with BackgroundWorker(WorkerSettings(port=0, latency_ms=300)) as worker:
        assert await _predict_concurrently(worker.url, 1) >= 0.3
        assert await _predict_concurrently(worker.url, 4) < 1.0  # unlimited: in parallel


async def test_max_concurrency_serialises_and_stats_see_the_arrivals() -> None:
    async with BackgroundWorker(
        WorkerSettings(port=0, latency_ms=150, max_concurrency=1)
    ) as worker:
        assert await _predict_concurrently(worker.url, 4) >= 0.6
        stats = await _get_json(f"{worker.url}/stats")
    assert stats == {"requests_total": 4, "in_flight": 0, "max_in_flight_seen": 4}


async def test_stats_of_one_call_at_a_time() -> None:
    async with BackgroundWorker(WorkerSettings(port=0, max_concurrency=1)) as worker:
        for _ in range(3):
            await _predict_concurrently(worker.url, 1)
        stats = await _get_json(f"{worker.url}/stats")
    assert stats == {"requests_total": 3, "in_flight": 0, "max_in_flight_seen": 1}


# -- upstream engines against fake upstream servers -----------------------------------


@pytest.fixture(scope="module")
def upstream_ollama() -> Iterator[FakeServer]:
    server = FakeServer(fake_ollama_api.create_app).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upstream_openai() -> Iterator[FakeServer]:
    server = FakeServer(fake_openai_api.create_app).start()
    yield server
    server.stop()


async def test_ollama_engine_forwards_chat_and_vision(upstream_ollama: FakeServer) -> None:
    upstream_ollama.state.reset()
    settings = WorkerSettings(
        port=0, engine="ollama", ollama_url=f"http://{upstream_ollama.address}"
    )
    async with BackgroundWorker(settings) as worker, httpx.AsyncClient(base_url=worker.url) as http:
        vision = {"prompt": "hi", "model_name": "llava:latest", "image": _png_b64(8, 8)}
        answer = await http.post("/predict", json={**vision, "type": "vision"})
        assert answer.json() == {"response": "llava:latest says: hi (1 images)"}
        sent = upstream_ollama.state.last.json
        assert sent["stream"] is False
        assert base64.b64decode(sent["messages"][-1]["images"][0]).startswith(b"\x89PNG")

        # No model named: the first model of the upstream's /api/tags.
        answer = await http.post("/predict", json={"prompt": "yo"})
        assert answer.json()["response"] == "llama3:latest says: yo (0 images)"

        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
        body = {"model": "llama3:latest", "stream": False, "messages": messages}
        chat = (await http.post("/api/chat", json=body)).json()
        assert chat["message"]["content"] == "llama3:latest says: q (0 images)"
        assert [m["role"] for m in upstream_ollama.state.last.json["messages"]] == [
            "system",
            "user",
        ]

        tags = (await http.get("/api/tags")).json()
        assert [m["name"] for m in tags["models"]] == ["llama3:latest", "llava:latest"]

        refused = await http.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})
        assert refused.status_code == 501
        assert "cannot generate images" in refused.json()["detail"]


async def test_ollama_engine_maps_upstream_failures(upstream_ollama: FakeServer) -> None:
    upstream_ollama.state.reset()
    settings = WorkerSettings(
        port=0, engine="ollama", ollama_url=f"http://{upstream_ollama.address}"
    )
    async with BackgroundWorker(settings) as worker, httpx.AsyncClient(base_url=worker.url) as http:
        upstream_ollama.state.mode = "500"
        failed = await http.post("/predict", json={"prompt": "hi", "model_name": "llama3"})
        assert failed.status_code == 502
        assert "Ollama answered 500: fake 500" in failed.json()["detail"]
        upstream_ollama.state.mode = "html"
        failed = await http.post("/predict", json={"prompt": "hi", "model_name": "llama3"})
        assert failed.status_code == 502
        assert "not JSON" in failed.json()["detail"]
    upstream_ollama.state.reset()

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    async with BackgroundWorker(WorkerSettings(port=0, engine="ollama", ollama_url=dead)) as worker:
        async with httpx.AsyncClient(base_url=worker.url) as http:
            failed = await http.post("/predict", json={"prompt": "hi", "model_name": "m"})
    assert failed.status_code == 502
    assert "unreachable" in failed.json()["detail"]


async def test_openai_engine_forwards_everything(upstream_openai: FakeServer) -> None:
    state = upstream_openai.state
    state.reset()
    settings = WorkerSettings(
        port=0,
        engine="openai",
        openai_url=f"http://{upstream_openai.address}/v1",
        openai_api_key="sk-t",
    )
    async with (
        BackgroundWorker(settings) as worker,
        openai.AsyncOpenAI(
            api_key="client-key", base_url=f"{worker.url}/v1", max_retries=0, timeout=20
        ) as oai,
    ):
        url = "data:image/png;base64," + _png_b64(8, 8)
        content: list[ChatCompletionContentPartParam] = [
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        completion = await oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
        )
        assert completion.choices[0].message.content == "gpt-4o-mini answered 2 part(s)"
        assert state.last.headers["authorization"] == "Bearer sk-t"
        assert state.last.json["messages"][0]["content"][1]["image_url"]["url"] == url

        stream = await oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
        assert "".join(pieces) == "gpt-4o-mini answered 1 part(s)"

        images = await oai.images.generate(prompt="p", size="256x256", response_format="b64_json")
        assert images.data is not None
        assert base64.b64decode(images.data[0].b64_json or "").startswith(b"\x89PNG")
        assert state.last.json["model"] == "dall-e-2"
        assert state.last.json["size"] == "256x256"

        wav_bytes = _wav_bytes()
        heard = await oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes))
        assert heard.text == f"heard {len(wav_bytes)} bytes"
        assert state.last.form is not None and state.last.form["model"] == "whisper-1"

        speech = await oai.audio.speech.create(
            model="tts-1", voice="alloy", input="hi", response_format="wav"
        )
        assert speech.content.startswith(b"RIFF")

        ids = [model.id async for model in oai.models.list()]
        assert ids == ["gpt-4o-mini", "dall-e-2"]

        state.mode = "400"
        with pytest.raises(openai.BadRequestError, match="fake 400"):
            await oai.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    state.reset()


# -- the command line -----------------------------------------------------------------


async def test_python_m_rentahal_worker_serves() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rentahal.worker",
        "--port",
        str(port),
        "--latency-ms",
        "5",
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    health = await http.get("/health")
                    break
                except httpx.TransportError:
                    if process.returncode is not None or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            assert health.json() == {"status": "healthy"}
            answer = await http.post("/predict/", json={"prompt": "from the cli"})
            assert "from the cli" in answer.json()["response"]
    finally:
        process.terminate()
        _, stderr = await process.communicate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status shows it.
    assert process.returncode in (0, -15), stderr.decode()
    assert b"Traceback" not in stderr
