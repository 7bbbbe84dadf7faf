"""Ollama's native API shape: ``/api/tags``, ``/api/chat``, ``/api/generate``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from rentahal.worker.media import load_images
from rentahal.worker.routes._chat import Message, split_chunks, split_conversation
from rentahal.worker.routes._deps import State

router = APIRouter(prefix="/api")


class OllamaMessage(BaseModel):
    """A message with optional base64 ``images``."""

    role: str
    content: str = ""
    images: list[str] | None = None


class OllamaChatRequest(BaseModel):
    """``/api/chat``; like Ollama, ``stream`` defaults to true."""

    model: str = ""
    messages: list[OllamaMessage]
    stream: bool = True


class OllamaGenerateRequest(BaseModel):
    """``/api/generate``; like Ollama, ``stream`` defaults to true."""

    model: str = ""
    prompt: str = ""
    images: list[str] | None = None
    stream: bool = True


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ndjson(lines: list[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield orjson.dumps(line) + b"\n"

    return StreamingResponse(body(), media_type="application/x-ndjson")


def _final(model: str, started_ns: int) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _now(),
        "done": True,
        "done_reason": "stop",
        "total_duration": time.monotonic_ns() - started_ns,
    }


@router.get("/tags")
async def tags(state: State) -> dict[str, Any]:
    """The engine's models in Ollama's list shape."""
    models = [
        {
            "name": card.name,
            "model": card.name,
            "modified_at": "1970-01-01T00:00:00Z",
            "size": 0,
            "digest": "",
            "details": {"family": state.engine.name, "families": [card.kind]},
        }
        for card in await state.engine.models()
    ]
    return {"models": models}


@router.get("/version")
async def version() -> dict[str, str]:
    """Ollama clients ask this first."""
    return {"version": "0.0.0-rentahal"}


@router.post("/chat", response_model=None)
async def chat(body: OllamaChatRequest, state: State) -> Any:
    """One chat turn; NDJSON chunks when ``stream`` is true."""
    started = time.monotonic_ns()
    conversation = split_conversation(
        [Message(m.role, m.content, m.images or []) for m in body.messages]
    )
    images = await load_images(conversation.images)
    async with state.gate.admit():
        text = await state.engine.chat(
            conversation.prompt, body.model, images, conversation.history
        )
    model = body.model or state.engine.name
    if not body.stream:
        return {**_final(model, started), "message": {"role": "assistant", "content": text}}
    lines = [
        {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        for piece in split_chunks(text)
    ]
    final = {**_final(model, started), "message": {"role": "assistant", "content": ""}}
    return _ndjson([*lines, final])


@router.post("/generate", response_model=None)
async def generate(body: OllamaGenerateRequest, state: State) -> Any:
    """A completion of ``prompt``; NDJSON chunks when ``stream`` is true."""
    started = time.monotonic_ns()
    conversation = split_conversation([Message("user", body.prompt, body.images or [])])
    images = await load_images(conversation.images)
    async with state.gate.admit():
        text = await state.engine.chat(conversation.prompt, body.model, images)
    model = body.model or state.engine.name
    if not body.stream:
        return {**_final(model, started), "response": text}
    lines = [
        {"model": model, "created_at": _now(), "response": piece, "done": False}
        for piece in split_chunks(text)
    ]
    return _ndjson([*lines, {**_final(model, started), "response": ""}])
