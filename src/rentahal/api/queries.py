"""The original's HTTP routes: ``POST /api/chat|vision|imagine|whisper|bark``.

Chat, vision and imagine run through the queue (``Broker.submit`` +
``wait_result``) and are charged and recorded like WebSocket queries. Whisper
(transcription of ``audio``) and bark (speech of ``prompt``) have no queued
form (a queued ``speech`` query is transcribed *and then answered*), so they
call the speech worker directly through ``Broker.run_direct``, which finishes
them like queued jobs (priced, recorded, metered, published).

They answer the original's body: the bare result as a JSON string (text, or
base64 PNG / WAV), with cost, processing time, job id and worker in
``X-Rentahal-*`` headers. ``?format=object`` or ``Accept:
application/vnd.rentahal+json`` asks for the object form (:func:`result_body`).
Callers identify with an API key or the original client's ``user_guid`` cookie.

The helpers (:func:`run_query`, :func:`run_transcription`, :func:`run_speech`,
:func:`describe_error`) are shared with the OpenAI-compatible routes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException

from rentahal.api.auth import AuthFailed, KeyOrCookieCaller, broker_of
from rentahal.broker import Broker
from rentahal.errors import (
    BrokerError,
    NoWorkerAvailable,
    QueryRejected,
    QueueFull,
    ShareFull,
    StorageError,
    WorkerError,
    WorkerTimeout,
)
from rentahal.models import Job, Query, QueryType, Result
from rentahal.realms.execution import SpeechCall

logger = logging.getLogger(__name__)

MAX_AUDIO_BYTES = 25 * 1024 * 1024
MAX_SPEECH_CHARS = 5000
OBJECT_MEDIA_TYPE = "application/vnd.rentahal+json"
# Beyond the queue wait and the worker attempts, room for the speech steps of a query.
_RESULT_MARGIN_S = 10.0


class ApiError(Exception):
    """An HTTP error answer: ``status``, a readable ``message`` and a short ``code``."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def describe_error(exc: Exception) -> ApiError:
    """The HTTP status, message and code for a failure of an API call."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthFailed):
        return ApiError(exc.status, exc.message, exc.code)
    if isinstance(exc, ValidationError):  # a query built from the body is invalid
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return ApiError(400, f"{where}: {first['msg']}" if where else first["msg"], "invalid")
    message = str(exc)
    if isinstance(exc, QueueFull):
        return ApiError(429, message, "queue_full")
    if isinstance(exc, NoWorkerAvailable):
        return ApiError(503, message, "no_worker_available")
    if isinstance(exc, QueryRejected):
        return ApiError(400, message, "query_rejected")
    if isinstance(exc, WorkerTimeout):
        return ApiError(504, message, "worker_timeout")
    if isinstance(exc, WorkerError):
        return ApiError(502, message, "worker_failed")
    if isinstance(exc, StorageError):
        logger.error("storage error in an API call: %s", exc)
        return ApiError(503, "The database is unavailable; please try again later", "storage")
    if isinstance(exc, BrokerError):
        return ApiError(500, message, "broker_error")
    logger.error("API call failed", exc_info=exc)
    return ApiError(500, "Internal error", "internal_error")


def result_error(result: Result) -> ApiError:
    """The error answer for a job that did not complete."""
    if result.status == "cancelled":
        return ApiError(409, "The query was cancelled", "cancelled")
    message = result.error or "The query failed"
    if result.worker is None:  # no worker ever took it
        return ApiError(503, message, "no_worker_available")
    return ApiError(502, message, "worker_failed")


def result_timeout_s(broker: Broker, query_type: str) -> float:
    """How long an HTTP caller waits for a queued job: queue limit plus every attempt."""
    settings = broker.settings
    attempts = settings.workers.max_attempts * broker.timeout_for(query_type)
    speech = 2 * settings.performance.query_timeout
    return settings.queue.queue_timeout + attempts + speech + _RESULT_MARGIN_S


async def _submit_within_share(broker: Broker, user_guid: str, query: Query) -> Job:
    """Submit, waiting while the user's share is taken by their WebSocket or other queries."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + broker.settings.queue.queue_timeout
    delay = 0.05
    while True:
        try:
            return await broker.submit(user_guid, query, want_result=True)
        except ShareFull:
            if loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def run_query(broker: Broker, user_guid: str, query: Query) -> Result:
    """Queue ``query`` for ``user_guid`` and wait for its completed :class:`Result`.

    Beyond the user's share the query waits for a slot
    (:class:`~rentahal.admission.Admission`) instead of being refused. Raises
    ``QueryRejected`` (and subclasses) when it is refused, ``ApiError`` when it
    fails, is cancelled or takes too long; a caller that goes away cancels the job.
    """
    async with broker.share(user_guid):
        return await _run_admitted(broker, user_guid, query)


async def _run_admitted(broker: Broker, user_guid: str, query: Query) -> Result:
    job = await _submit_within_share(broker, user_guid, query)
    timeout_s = result_timeout_s(broker, query.query_type)
    try:
        result = await broker.wait_result(job.job_id, timeout_s)
    except TimeoutError:
        await broker.cancel(user_guid, job.job_id)
        raise ApiError(504, f"No result within {timeout_s:g}s", "timeout") from None
    except asyncio.CancelledError:
        await asyncio.shield(broker.cancel(user_guid, job.job_id))
        raise
    if result.status != "done":
        raise result_error(result)
    return result


async def run_transcription(broker: Broker, user_guid: str, audio: bytes) -> Result:
    """Speech to text on a speech worker, charged and recorded (``query_type`` speech)."""
    if not audio:
        raise QueryRejected("The audio is empty")
    if len(audio) > MAX_AUDIO_BYTES:
        raise QueryRejected(f"The audio is larger than {MAX_AUDIO_BYTES} bytes")

    async def call(speech: SpeechCall) -> str:
        return await broker.transcribe(audio, speech)

    query = Query(query_type="speech", model_type="worker_node")
    return await broker.run_direct(user_guid, query, call, prompt_is_result=True)


async def run_speech(broker: Broker, user_guid: str, text: str) -> Result:
    """Text to speech on a speech worker; the result is base64 WAV, charged and recorded."""
    if not text.strip():
        raise QueryRejected("The text to speak is empty")
    if len(text) > MAX_SPEECH_CHARS:
        raise QueryRejected(f"The text to speak is longer than {MAX_SPEECH_CHARS} characters")

    async def call(speech: SpeechCall) -> str:
        return base64.b64encode(await broker.speak(text, speech)).decode("ascii")

    query = Query(prompt=text, query_type="speech", model_type="speech")
    return await broker.run_direct(user_guid, query, call)


def decode_base64(data: str | None, what: str) -> bytes:
    """Bytes of a base64 field (a ``data:`` URI prefix is allowed); ``QueryRejected`` if bad."""
    if not data:
        raise QueryRejected(f"The query needs {what}")
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise QueryRejected(f"Invalid {what}: not valid base64") from None


def result_body(result: Result) -> dict[str, Any]:
    """The JSON answer of a legacy route."""
    return {
        "result": result.result,
        "result_type": result.result_type,
        "processing_time": result.processing_time,
        "cost": result.cost,
        "job_id": result.job_id,
        "worker": result.worker,
        "attempts": result.attempts,
        "queue_wait": result.queue_wait,
        "recorded": result.recorded,
    }


def result_headers(result: Result) -> dict[str, str]:
    """The ``X-Rentahal-*`` headers of a legacy answer (the worker name percent-encoded)."""
    headers = {
        "X-Rentahal-Cost": repr(result.cost),
        "X-Rentahal-Processing-Time": repr(result.processing_time),
        "X-Rentahal-Job-Id": result.job_id,
        "X-Rentahal-Result-Type": result.result_type,
        "X-Rentahal-Attempts": str(result.attempts),
        "X-Rentahal-Queue-Wait": repr(result.queue_wait),
        "X-Rentahal-Recorded": "true" if result.recorded else "false",
    }
    if result.worker is not None:
        headers["X-Rentahal-Worker"] = quote(result.worker, safe="")
    return headers


def wants_object(request: Request) -> bool:
    """True when the caller opted in to the object form."""
    if request.query_params.get("format") == "object":
        return True
    return OBJECT_MEDIA_TYPE in request.headers.get("accept", "").lower()


def legacy_answer(request: Request, result: Result) -> JSONResponse:
    """The original's bare JSON string, or the object form on opt-in; headers either way."""
    headers = result_headers(result)
    if wants_object(request):
        return JSONResponse(result_body(result), headers=headers)
    return JSONResponse(result.result, headers=headers)


class _LegacyRoute(APIRoute):
    """Turns broker and auth errors into ``{"detail": ...}`` answers with fitting statuses."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except (RequestValidationError, HTTPException):
                raise  # FastAPI's own 422 / 400 answers (Starlette's base class: bad bodies)
            except Exception as exc:  # unexpected ones are logged by describe_error
                error = describe_error(exc)
                headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
                return JSONResponse(
                    {"detail": error.message, "code": error.code},
                    status_code=error.status,
                    headers=headers,
                )
            return response

        return guarded


router = APIRouter(route_class=_LegacyRoute, tags=["legacy"])


class QueryBody(BaseModel):
    """A Query as the original clients post it; the route decides ``query_type``."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    query_type: str | None = None
    model_type: str = "worker_node"
    model_name: str | None = ""
    image: str | None = None
    audio: str | None = None

    def to_query(self, query_type: QueryType) -> Query:
        """The :class:`Query` with ``query_type`` fixed by the route."""
        return Query(
            prompt=self.prompt,
            query_type=query_type,
            model_type=self.model_type,
            model_name=self.model_name or "",
            image=self.image,
            audio=self.audio,
        )


async def _queued(request: Request, user_guid: str, query: Query) -> JSONResponse:
    return legacy_answer(request, await run_query(broker_of(request), user_guid, query))


@router.post("/api/chat")
async def chat(body: QueryBody, user: KeyOrCookieCaller, request: Request) -> JSONResponse:
    """A chat query through the queue."""
    return await _queued(request, user.guid, body.to_query("chat"))


@router.post("/api/vision")
async def vision(body: QueryBody, user: KeyOrCookieCaller, request: Request) -> JSONResponse:
    """A vision query (base64 ``image``) through the queue."""
    return await _queued(request, user.guid, body.to_query("vision"))


@router.post("/api/imagine")
async def imagine(body: QueryBody, user: KeyOrCookieCaller, request: Request) -> JSONResponse:
    """An image generation through the queue; the result is a base64 PNG."""
    return await _queued(request, user.guid, body.to_query("imagine"))


@router.post("/api/whisper")
async def whisper(body: QueryBody, user: KeyOrCookieCaller, request: Request) -> JSONResponse:
    """Transcription of the base64 ``audio``; the result is the text."""
    audio = decode_base64(body.audio, "audio")
    result = await run_transcription(broker_of(request), user.guid, audio)
    return legacy_answer(request, result)


@router.post("/api/bark")
async def bark(body: QueryBody, user: KeyOrCookieCaller, request: Request) -> JSONResponse:
    """Speech of ``prompt``; the result is a base64 WAV (``result_type`` audio)."""
    result = await run_speech(broker_of(request), user.guid, body.prompt)
    return legacy_answer(request, result)
