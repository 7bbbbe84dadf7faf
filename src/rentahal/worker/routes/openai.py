"""The OpenAI-compatible API shape: chat (with vision and streaming), images, audio, models."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from rentahal.worker.errors import InputError
from rentahal.worker.media import load_images, require_audio
from rentahal.worker.routes._chat import Message, count_words, split_chunks, split_conversation
from rentahal.worker.routes._deps import State

router = APIRouter(prefix="/v1")

MAX_AUDIO_BYTES = 25 * 1024 * 1024
_SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")


class ImageURL(BaseModel):
    """``{"url": ...}`` of an ``image_url`` part."""

    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    """One part of a multi-part message: ``text`` or ``image_url``."""

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    """A chat message whose content is a string or a list of parts."""

    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """The fields of ``/v1/chat/completions`` the worker uses; others are ignored."""

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


def _to_message(message: ChatMessage) -> Message:
    if message.content is None or isinstance(message.content, str):
        return Message(message.role, message.content or "")
    texts, images = [], []
    for part in message.content:
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url" and part.image_url is not None:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            if not url.startswith("data:"):
                raise InputError("image_url must be a data: URI; this worker fetches no URLs")
            images.append(url)
        else:
            raise InputError(f"unsupported content part type {part.type!r}")
    return Message(message.role, "\n".join(texts), images)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _stream(completion_id: str, model: str, created: int, text: str) -> AsyncIterator[bytes]:
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    role = {"role": "assistant", "content": ""}
    yield _sse({**base, "choices": [{"index": 0, "delta": role, "finish_reason": None}]})
    for piece in split_chunks(text):
        delta = {"content": piece}
        yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield b"data: [DONE]\n\n"


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, state: State) -> Any:
    """A chat completion; ``stream: true`` answers server-sent events ending in ``[DONE]``."""
    conversation = split_conversation([_to_message(m) for m in body.messages])
    images = await load_images(conversation.images)
    async with state.gate.admit():
        text = await state.engine.chat(
            conversation.prompt, body.model, images, conversation.history
        )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    model = body.model or state.engine.name
    created = int(time.time())
    if body.stream:
        return StreamingResponse(
            _stream(completion_id, model, created, text), media_type="text/event-stream"
        )
    prompt_tokens = count_words(conversation.prompt) + sum(
        count_words(t.text) for t in conversation.history
    )
    completion_tokens = count_words(text)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class ImageGenerationRequest(BaseModel):
    """``/v1/images/generations``; ``seed`` is our extension."""

    prompt: str
    model: str = ""
    n: int = Field(default=1, ge=1, le=4)
    size: str = "512x512"
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int = -1


def _parse_size(size: str) -> tuple[int, int]:
    if size == "auto":
        return 512, 512
    match = _SIZE.match(size)
    if not match:
        raise InputError(f"size {size!r} is not WIDTHxHEIGHT")
    width, height = int(match[1]), int(match[2])
    if not (64 <= width <= 2048 and 64 <= height <= 2048):
        raise InputError("size must be between 64x64 and 2048x2048")
    return width, height


@router.post("/images/generations")
async def images_generations(body: ImageGenerationRequest, state: State) -> dict[str, Any]:
    """Generated PNGs as ``b64_json`` (or as data: URIs for ``response_format: url``)."""
    width, height = _parse_size(body.size)
    data = []
    async with state.gate.admit():
        for index in range(body.n):
            seed = body.seed + index if body.seed >= 0 else (-1 if index == 0 else index)
            png = await state.engine.imagine(body.prompt, width, height, seed)
            encoded = base64.b64encode(png).decode("ascii")
            if body.response_format == "url":
                data.append({"url": "data:image/png;base64," + encoded})
            else:
                data.append({"b64_json": encoded})
    return {"created": int(time.time()), "data": data}


@router.post("/audio/transcriptions", response_model=None)
async def audio_transcriptions(
    state: State,
    file: UploadFile = File(...),
    model: str = Form(""),
    response_format: str = Form("json"),
) -> Any:
    """The text of an uploaded audio file (``json``, ``verbose_json`` or ``text``)."""
    if response_format not in ("json", "verbose_json", "text"):
        raise InputError(f"response_format {response_format!r} is not json, verbose_json or text")
    audio = await file.read(MAX_AUDIO_BYTES + 1)
    if len(audio) > MAX_AUDIO_BYTES:
        raise InputError(f"audio file is larger than {MAX_AUDIO_BYTES} bytes")
    audio_format = require_audio(audio)
    async with state.gate.admit():
        text = await state.engine.transcribe(audio, audio_format, model)
    if response_format == "text":
        return PlainTextResponse(text)
    return {"text": text}


class SpeechRequest(BaseModel):
    """``/v1/audio/speech``; only WAV output is offered."""

    model: str = ""
    input: str = Field(min_length=1, max_length=4096)
    voice: str = "alloy"
    response_format: str = "wav"


@router.post("/audio/speech", response_class=Response)
async def audio_speech(body: SpeechRequest, state: State) -> Response:
    """``input`` spoken, as ``audio/wav`` bytes."""
    if body.response_format != "wav":
        raise InputError(f"response_format {body.response_format!r} is not offered; use wav")
    async with state.gate.admit():
        wav = await state.engine.speak(body.input, body.voice)
    return Response(content=wav, media_type="audio/wav")


@router.get("/models")
async def models(state: State) -> dict[str, Any]:
    """The engine's models as an OpenAI model list."""
    owner = f"rentahal-{state.engine.name}"
    data = [
        {"id": card.name, "object": "model", "created": 0, "owned_by": owner}
        for card in await state.engine.models()
    ]
    return {"object": "list", "data": data}
