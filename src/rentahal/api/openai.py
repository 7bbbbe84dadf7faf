"""OpenAI-compatible routes under ``/v1``, so OpenAI SDKs and tools can use the broker.

Every call is authenticated with an API key (``Authorization: Bearer``), and
every error answers OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

Chat and image generations run through the queue like any query. A streamed
text chat (``stream: true``) skips the queue (:mod:`rentahal.streaming`): its
realm picks a worker, and each delta the worker streams becomes one
``chat.completion.chunk`` event (a worker protocol that cannot stream gives one
content chunk with the whole answer), after a role chunk and before the finish
chunk, an optional usage chunk and ``data: [DONE]``. Failures before the first
delta are ordinary HTTP errors; a failure after it ends the stream with an
``{"error": ...}`` event and no ``[DONE]``. A streamed vision chat runs through
the queue and is sent as one content chunk.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal

import orjson
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from rentahal.api.auth import Caller, broker_of, identify
from rentahal.api.queries import (
    MAX_AUDIO_BYTES,
    MAX_SPEECH_CHARS,
    ApiError,
    describe_error,
    run_query,
    run_speech,
    run_transcription,
)
from rentahal.broker import Broker
from rentahal.models import Query, Result
from rentahal.streaming import QueryStream

logger = logging.getLogger(__name__)

OWNER = "rentahal"


def error_body(status: int, message: str, code: str | None, param: str | None = None) -> Any:
    """OpenAI's error object for an HTTP ``status``."""
    if status in (401, 403):
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header")]
    where = ".".join(loc) or None
    text = str(first.get("msg", "invalid value"))
    return (f"{where}: {text}" if where else text), where


class _OpenAIRoute(APIRoute):
    """Answers every failure of a ``/v1`` route in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except RequestValidationError as exc:
                message, param = _validation_message(exc)
                return JSONResponse(error_body(400, message, "invalid_request", param), 400)
            except HTTPException as exc:
                body = error_body(exc.status_code, str(exc.detail), None)
                return JSONResponse(body, exc.status_code)
            except Exception as exc:  # every failure answers in OpenAI's shape
                error = describe_error(exc)
                return JSONResponse(
                    error_body(error.status, error.message, error.code), error.status
                )
            return response

        return guarded


router = APIRouter(prefix="/v1", route_class=_OpenAIRoute, tags=["openai"])


def resolve_model(broker: Broker, model: str, worker_types: Iterable[str]) -> tuple[str, str]:
    """``(model_name, model_type)`` of a query for OpenAI ``model`` on ``worker_types``.

    See :meth:`BrokerViews.resolve_model`; a model no live worker serves is a
    404 naming it, answered before queueing.
    """
    types = sorted(set(worker_types))
    resolved = broker.views.resolve_model(model, types)
    if resolved is None:
        raise ApiError(
            404,
            f"The model '{model}' does not exist or no live {' or '.join(types)} worker serves it",
            "model_not_found",
        )
    return resolved


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters per token) for ``usage``."""
    return math.ceil(len(text) / 4) if text else 0


def _extras(result: Result) -> dict[str, Any]:
    """Our additions to OpenAI answers (OpenAI SDKs keep unknown fields)."""
    return {
        "job_id": result.job_id,
        "worker": result.worker,
        "processing_time": result.processing_time,
        "queue_wait": result.queue_wait,
        "cost": result.cost,
    }


class _ImageURL(BaseModel):
    url: str


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None
    image_url: _ImageURL | str | None = None


class ChatMessage(BaseModel):
    """One chat message: text, or a list of ``text`` and ``image_url`` parts."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[_ContentPart] | None = None


class StreamOptions(BaseModel):
    """``stream_options``; ``include_usage`` adds a final usage chunk."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of ``/v1/chat/completions`` the broker uses; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


def prompt_and_image(messages: list[ChatMessage]) -> tuple[str, str | None]:
    """The last user message's text and its image (a ``data:`` URI), if any."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        if message.content is None or isinstance(message.content, str):
            return message.content or "", None
        texts: list[str] = []
        images: list[str] = []
        for part in message.content:
            if part.type == "text":
                texts.append(part.text or "")
            elif part.type == "image_url" and part.image_url is not None:
                url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                if not url.startswith("data:"):
                    raise ApiError(
                        400,
                        "image_url must be a data: URI; the broker fetches no URLs",
                        "invalid_image_url",
                    )
                images.append(url)
            else:
                raise ApiError(400, f"Unsupported content part type '{part.type}'", "invalid_part")
        if len(images) > 1:
            raise ApiError(400, "Only one image per request is supported", "too_many_images")
        return "\n".join(texts), images[0] if images else None
    raise ApiError(400, "messages must contain a user message", "no_user_message")


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _sse({**base, "object": "chat.completion.chunk", "choices": [choice]})


def _usage(prompt: str, answer: str) -> dict[str, int]:
    prompt_tokens = estimate_tokens(prompt)
    completion_tokens = estimate_tokens(answer)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _stream_answer(
    base: dict[str, Any], text: str, usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    yield _chunk(base, {"role": "assistant", "content": ""}, None)
    if text:
        yield _chunk(base, {"content": text}, None)
    yield _chunk(base, {}, "stop")
    if usage is not None:
        yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


async def _stream_deltas(
    base: dict[str, Any], stream: QueryStream, first: str | None, prompt: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """One chunk per delta of ``stream`` (``first`` was read already; None: no answer)."""
    texts: list[str] = []
    yield _chunk(base, {"role": "assistant", "content": ""}, None)
    try:
        if first is not None:
            texts.append(first)
            yield _chunk(base, {"content": first}, None)
            async for delta in stream:
                texts.append(delta)
                yield _chunk(base, {"content": delta}, None)
    except Exception as exc:  # the status line is sent: the error can only be an event
        error = describe_error(exc)
        yield _sse(error_body(error.status, error.message, error.code))
        return
    finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
    extras = {OWNER: _extras(stream.result)} if stream.result is not None else {}
    yield _sse({**base, "object": "chat.completion.chunk", "choices": [finish], **extras})
    if include_usage:
        usage = _usage(prompt, "".join(texts))
        yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


async def _streamed_chat(
    broker: Broker, user_guid: str, query: Query, body: ChatCompletionRequest
) -> StreamingResponse:
    """A text chat streamed from its worker; errors before the first delta are raised."""
    stream = broker.stream(user_guid, query)
    try:
        first: str | None = await anext(stream)
    except StopAsyncIteration:  # an empty answer
        first = None
    base = {
        "id": f"chatcmpl-{stream.job.job_id}",
        "created": int(time.time()),
        "model": body.model or stream.worker or OWNER,
        "system_fingerprint": None,
    }
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return StreamingResponse(
        _stream_deltas(base, stream, first, query.prompt, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
        # Runs also when the client went away mid-stream: the query is then
        # recorded as cancelled and its worker slot freed at once.
        background=BackgroundTask(stream.aclose),
    )


def _json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def _is_json(content_type: str | None) -> bool:
    """No ``Content-Type`` or a JSON one (what FastAPI's body parsing accepts as JSON)."""
    if not content_type:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``: a chat (or, with an image part, vision) completion.

    A plain Starlette route (no dependency resolution, orjson answers). The
    broker's app serves this call through :mod:`rentahal.api.fast_route`
    instead, with the same :func:`answer_chat`; this route serves it where the
    router is mounted on another app.
    """
    try:
        raw = await request.body()  # first: the body limits answer 413 before anything else
    except Exception as exc:  # every failure answers in OpenAI's shape
        return error_response(exc)
    headers = request.headers
    return await answer_chat(
        request.app.state, headers.get("authorization"), headers.get("content-type"), raw
    )


def error_response(exc: Exception) -> Response:
    """The OpenAI-shaped answer for a failure of a ``/v1`` call."""
    error = describe_error(exc)
    return _json_response(error_body(error.status, error.message, error.code), error.status)


async def answer_chat(
    state: Any, authorization: str | None, content_type: str | None, raw: bytes
) -> Response:
    """The answer to a chat completion whose body ``raw`` has arrived (within its limit).

    ``state`` is the app's state (holding the broker). The key is checked
    first, then the body; every failure answers in OpenAI's shape.
    """
    try:
        broker: Broker = state.broker
        user = await identify(broker, authorization)
        if not _is_json(content_type):
            message = "The request body must be JSON (Content-Type: application/json)"
            return _json_response(error_body(400, message, "invalid_request"), 400)
        try:
            body = ChatCompletionRequest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or None
            text = str(first.get("msg", "invalid value"))
            message = f"{where}: {text}" if where else text
            return _json_response(error_body(400, message, "invalid_request", where), 400)
        return await _chat_answer(broker, user.guid, body)
    except Exception as exc:  # every failure answers in OpenAI's shape
        return error_response(exc)


async def _chat_answer(broker: Broker, user_guid: str, body: ChatCompletionRequest) -> Response:
    prompt, image = prompt_and_image(body.messages)
    query_type: Literal["chat", "vision"] = "vision" if image else "chat"
    model_name, model_type = resolve_model(broker, body.model, [query_type])
    query = Query(
        prompt=prompt,
        query_type=query_type,
        model_type=model_type,
        model_name=model_name,
        image=image,
    )
    if body.stream and query_type == "chat":
        return await _streamed_chat(broker, user_guid, query, body)
    result = await run_query(broker, user_guid, query)
    usage = _usage(prompt, result.result)
    base = {
        "id": f"chatcmpl-{result.job_id}",
        "created": int(time.time()),
        "model": body.model or result.worker or OWNER,
        "system_fingerprint": None,
    }
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            _stream_answer(base, result.result, usage if include_usage else None),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    return _json_response(
        {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.result},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
            OWNER: _extras(result),
        }
    )


router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])


class ImageGenerationRequest(BaseModel):
    """``/v1/images/generations``; one image per request, size chosen by the worker."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int | None = Field(default=1, ge=1, le=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None


@router.post("/images/generations")
async def images_generations(
    body: ImageGenerationRequest, user: Caller, request: Request
) -> dict[str, Any]:
    """An image generation through the queue: ``b64_json`` (or a ``data:`` URI as ``url``)."""
    broker = broker_of(request)
    model_name, model_type = resolve_model(broker, body.model or "", ["imagine"])
    query = Query(
        prompt=body.prompt, query_type="imagine", model_type=model_type, model_name=model_name
    )
    result = await run_query(broker, user.guid, query)
    if body.response_format == "url":
        item = {"url": "data:image/png;base64," + result.result}
    else:
        item = {"b64_json": result.result}
    return {"created": int(time.time()), "data": [item], OWNER: _extras(result)}


@router.get("/models")
async def list_models(user: Caller, request: Request) -> dict[str, Any]:
    """The models live (not blacklisted) workers serve."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": OWNER}
            for name in broker_of(request).views.served_models()
        ],
    }


@router.post("/audio/transcriptions", response_model=None)
async def audio_transcriptions(
    user: Caller,
    request: Request,
    file: UploadFile = File(...),
    model: str = Form(""),
    response_format: str = Form("json"),
) -> dict[str, Any] | PlainTextResponse:
    """The text of an uploaded audio file (``model`` is ignored: any speech worker)."""
    if response_format not in ("json", "text", "verbose_json"):
        raise ApiError(
            400, "response_format must be json, text or verbose_json", "invalid_response_format"
        )
    audio = await file.read(MAX_AUDIO_BYTES + 1)
    result = await run_transcription(broker_of(request), user.guid, audio)
    if response_format == "text":
        return PlainTextResponse(result.result)
    return {"text": result.result, OWNER: _extras(result)}


class SpeechRequest(BaseModel):
    """``/v1/audio/speech``; ``model`` and ``voice`` are the speech worker's choice."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    input: str = Field(min_length=1, max_length=MAX_SPEECH_CHARS)
    voice: str | dict[str, Any] | None = None
    response_format: str | None = None


@router.post("/audio/speech", response_model=None)
async def audio_speech(body: SpeechRequest, user: Caller, request: Request) -> Response:
    """``input`` spoken as WAV audio (the only format offered)."""
    if body.response_format not in (None, "wav"):
        raise ApiError(400, "Only response_format 'wav' is offered", "unsupported_format")
    result = await run_speech(broker_of(request), user.guid, body.input)
    return Response(
        base64.b64decode(result.result),
        media_type="audio/wav",
        headers={"X-RentAHal-Cost": f"{result.cost:.6f}", "X-RentAHal-Job": result.job_id},
    )
