"""OpenAI-compatible API shape: chat (plain and SSE), images, audio in and out, models.

Route modes beyond the generic ones: ``cut`` (stream drops the connection
mid-way), ``nodone`` (stream ends cleanly without ``[DONE]``), ``json_stream``
(a streamed request answered as one JSON completion), ``stream_error`` (an
error chunk mid-stream). Option ``speech_body`` replaces the WAV answer.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._server import PNG_B64, WAV_BYTES, CutResponse, FakeState, Recorded, recording

MODELS = {"object": "list", "data": [{"id": "gpt-4o-mini"}, {"id": "dall-e-2"}]}
STREAM_DELTAS = ["Hel", "lo", " world"]


def _chunk(delta: dict[str, str]) -> bytes:
    payload = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return f"data: {json.dumps(payload)}\n\n".encode()


def _completion(text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


def create_app(state: FakeState) -> Starlette:
    """The fake OpenAI-compatible server."""

    async def chat(request: Request, recorded: Recorded) -> Response:
        body = recorded.json
        content = body["messages"][-1]["content"]
        parts = 1 if isinstance(content, str) else len(content)
        text = f"{body['model']} answered {parts} part(s)"
        if not body.get("stream") or state.mode == "json_stream":
            return JSONResponse(_completion(text))
        chunks = [_chunk({"role": "assistant"})] + [_chunk({"content": d}) for d in STREAM_DELTAS]
        if state.mode == "cut":
            return CutResponse(chunks[:2])
        if state.mode == "stream_error":
            chunks = [*chunks[:2], b'data: {"error": {"message": "overloaded"}}\n\n']
        elif state.mode != "nodone":
            chunks = [b": keep-alive\n\n", *chunks, b"data: [DONE]\n\n"]
        return StreamingResponse(iter(chunks), media_type="text/event-stream")

    async def images(request: Request, recorded: Recorded) -> Response:
        return JSONResponse({"created": 1700000000, "data": [{"b64_json": PNG_B64}]})

    async def transcriptions(request: Request, recorded: Recorded) -> Response:
        assert recorded.form is not None
        _, audio, _ = recorded.form["file"]
        return JSONResponse({"text": f"heard {len(audio)} bytes"})

    async def speech(request: Request, recorded: Recorded) -> Response:
        body = state.options.get("speech_body", WAV_BYTES)
        kind = "audio/wav" if body == WAV_BYTES else "application/json"
        return Response(body, media_type=kind)

    async def models(request: Request, recorded: Recorded) -> Response:
        return JSONResponse(MODELS)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", recording(state, chat), methods=["POST"]),
            Route("/v1/images/generations", recording(state, images), methods=["POST"]),
            Route("/v1/audio/transcriptions", recording(state, transcriptions), methods=["POST"]),
            Route("/v1/audio/speech", recording(state, speech), methods=["POST"]),
            Route("/v1/models", recording(state, models), methods=["GET"]),
        ]
    )
