"""OpenAI-compatible servers: chat, vision, image generation, speech in and out, streaming."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any

from rentahal.backends._http import (
    list_model_ids,
    parse_json,
    pick_model,
    probe_status,
    request,
    require,
    service_url,
    stream,
)
from rentahal.backends.base import HttpClient, WorkerReply
from rentahal.errors import WorkerBadResponse, WorkerRejected, WorkerUnavailable
from rentahal.models import AIWorker, Query


def _base(worker: AIWorker) -> str:
    # Users often paste the documented base URL, which already ends in /v1.
    return service_url(worker.address).removesuffix("/v1")


def _headers(worker: AIWorker) -> dict[str, str]:
    return {"Authorization": f"Bearer {worker.api_key}"} if worker.api_key else {}


def _image_url(image: str) -> str:
    return image if image.startswith("data:") else f"data:image/jpeg;base64,{image}"


def _is_wav(data: bytes) -> bool:
    return len(data) > 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


class OpenAIBackend:
    """Any server speaking the OpenAI HTTP API (OpenAI, vLLM, LocalAI, llama.cpp, ...).

    ``run`` serves chat and vision (``/v1/chat/completions``), imagine
    (``/v1/images/generations``) and speech queries that carry audio
    (``/v1/audio/transcriptions``). The chat model is the query's
    ``model_name``, else the worker's first listed model, else ``default_model``.
    Image generation sends ``image_model`` only when one is configured or named.
    ``transcribe`` / ``speak`` / ``stream_chat`` are extra public methods.
    """

    protocol = "openai"

    def __init__(
        self,
        default_model: str = "gpt-4o-mini",
        *,
        image_model: str | None = None,
        image_size: str = "512x512",
        transcribe_model: str = "whisper-1",
        speech_model: str = "tts-1",
        voice: str = "alloy",
    ) -> None:
        self.default_model = default_model
        self.image_model = image_model
        self.image_size = image_size
        self.transcribe_model = transcribe_model
        self.speech_model = speech_model
        self.voice = voice

    def chat_payload(self, worker: AIWorker, query: Query, *, streamed: bool) -> dict[str, Any]:
        """The ``/v1/chat/completions`` body for ``query`` on ``worker``."""
        content: str | list[dict[str, Any]] = query.prompt
        if query.image:
            content = [
                {"type": "text", "text": query.prompt},
                {"type": "image_url", "image_url": {"url": _image_url(query.image)}},
            ]
        return {
            "model": pick_model(query.model_name, worker.models, self.default_model),
            "messages": [{"role": "user", "content": content}],
            "stream": streamed,
        }

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        if query.query_type == "imagine":
            return WorkerReply(
                await self._generate_image(client, worker, query, timeout_s), "image"
            )
        if query.query_type == "speech" and query.audio:
            try:
                audio = base64.b64decode(query.audio, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise WorkerRejected(
                    "the speech query's audio is not base64", worker=worker.name
                ) from exc
            return WorkerReply(await self.transcribe(client, worker, audio, "audio.wav", timeout_s))
        response = await request(
            client,
            "POST",
            f"{_base(worker)}/v1/chat/completions",
            json=self.chat_payload(worker, query, streamed=False),
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        data = parse_json(response, worker.name)
        text = require(data, ("choices", 0, "message", "content"), worker.name)
        if not isinstance(text, str):
            raise WorkerBadResponse(
                f"worker {worker.name} answered no text in choices.0.message.content",
                worker=worker.name,
            )
        return WorkerReply(text, "text")

    async def _generate_image(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> str:
        payload: dict[str, Any] = {
            "prompt": query.prompt,
            "n": 1,
            "size": self.image_size,
            "response_format": "b64_json",
        }
        model = query.model_name or self.image_model
        if model:
            payload["model"] = model
        response = await request(
            client,
            "POST",
            f"{_base(worker)}/v1/images/generations",
            json=payload,
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        image = require(parse_json(response, worker.name), ("data", 0, "b64_json"), worker.name)
        if not isinstance(image, str) or not image:
            raise WorkerBadResponse(
                f"worker {worker.name} answered an empty or non-string b64_json",
                worker=worker.name,
            )
        return image

    async def transcribe(
        self,
        client: HttpClient,
        worker: AIWorker,
        audio: bytes,
        filename: str,
        timeout_s: float,
    ) -> str:
        """Speech to text: ``POST /v1/audio/transcriptions`` (multipart) -> the text."""
        response = await request(
            client,
            "POST",
            f"{_base(worker)}/v1/audio/transcriptions",
            form={
                "model": self.transcribe_model,
                "response_format": "json",
                "file": (filename, audio, "application/octet-stream"),
            },
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        text = require(parse_json(response, worker.name), ("text",), worker.name)
        if not isinstance(text, str):
            raise WorkerBadResponse(
                f"worker {worker.name} answered a non-string transcription", worker=worker.name
            )
        return text

    async def speak(
        self, client: HttpClient, worker: AIWorker, text: str, timeout_s: float
    ) -> bytes:
        """Text to speech: ``POST /v1/audio/speech`` -> WAV bytes (checked to be WAV)."""
        response = await request(
            client,
            "POST",
            f"{_base(worker)}/v1/audio/speech",
            json={
                "model": self.speech_model,
                "input": text,
                "voice": self.voice,
                "response_format": "wav",
            },
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        if not _is_wav(response.content):
            kind = response.headers.get("content-type", "unknown content")
            raise WorkerBadResponse(
                f"worker {worker.name} answered {kind} that is not WAV audio", worker=worker.name
            )
        return response.content

    async def stream_chat(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> AsyncIterator[str]:
        """Yield the answer's content deltas as they arrive (SSE, ``stream: true``).

        A stream that ends without ``data: [DONE]`` (or breaks off) raises
        ``WorkerBadResponse`` after the deltas that did arrive were yielded.
        ``timeout_s`` limits each wait for data, not the whole answer.
        """
        async with stream(
            client,
            "POST",
            f"{_base(worker)}/v1/chat/completions",
            json=self.chat_payload(worker, query, streamed=True),
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        ) as response:
            kind = response.headers.get("content-type", "")
            if not kind.startswith(("text/event-stream", "application/json")):
                raise WorkerBadResponse(
                    f"worker {worker.name} answered {kind or 'unknown content'}, not a stream",
                    worker=worker.name,
                )
            if kind.startswith("application/json"):
                # A server that ignores ``stream`` answers the whole completion at once.
                text = require(
                    parse_json(await response.aread(), worker.name),
                    ("choices", 0, "message", "content"),
                    worker.name,
                )
                if isinstance(text, str) and text:
                    yield text
                return
            async for line in response.aiter_lines():
                data = _sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    return
                delta = _delta(data, worker.name)
                if delta:
                    yield delta
        raise WorkerBadResponse(
            f"worker {worker.name} ended the stream without [DONE]", worker=worker.name
        )

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        return await probe_status(
            client,
            f"{_base(worker)}/v1/models",
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        return await list_model_ids(
            client,
            f"{_base(worker)}/v1/models",
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )


def _sse_data(line: str) -> str | None:
    """The payload of an SSE ``data:`` line; ``None`` for comments, events, blanks."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def _delta(data: str, worker: str) -> str | None:
    """The content delta of one streamed chunk."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise WorkerBadResponse(
            f"worker {worker} streamed a chunk that is not valid JSON", worker=worker
        ) from exc
    if isinstance(chunk, dict) and chunk.get("error"):
        # The worker's own text stays out of the user's error (it may quote anything).
        raise WorkerUnavailable(f"worker {worker} failed mid-stream", worker=worker)
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        raise WorkerBadResponse(f"worker {worker} streamed a chunk without choices", worker=worker)
    if not choices:
        return None  # usage-only chunks carry no choices
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None
