"""Request body limits, enforced while the body arrives: before it is parsed or authenticated.

Each route gets a limit from the settings: text routes room for
``max_prompt_chars`` (JSON-escaped) plus an envelope, image routes room for a
base64 image of ``max_image_bytes``, audio routes for 25 MiB of audio. A caller
without a valid API key gets only :data:`ANONYMOUS_BYTES` on any key route: the
key is checked (only when the body may be larger than that) before a byte of
the body is read, so an unauthenticated client cannot make the broker buffer
an image-sized body.

A ``Content-Length`` over the limit is answered 413 at once, without reading;
a body without one (chunked) is counted as it arrives and answered 413 the
moment it passes the limit (the application then sees the client as gone).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rentahal.config import Settings

logger = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
#: JSON field names, model names, options: everything of a body but the payload.
ENVELOPE_BYTES = 64 * KIB
#: The most a caller without a valid API key may send to a route that needs one.
ANONYMOUS_BYTES = 64 * KIB
#: After a 413, how much more of a body is read (and dropped) so the client sees the answer.
DRAIN_MAX_BYTES = 64 * MIB
DRAIN_MAX_S = 5.0
#: Routes without a payload of their own (admin JSON, anything unknown).
DEFAULT_BYTES = 1 * MIB
# A character of a prompt may take up to 6 bytes in JSON (``\uXXXX``), 12 as a pair.
_JSON_BYTES_PER_CHAR = 6
_AUDIO_BYTES = 25 * MIB  # as api/queries.MAX_AUDIO_BYTES

_TEXT_ROUTES = frozenset(
    ("/api/chat", "/api/bark", "/api/imagine", "/v1/images/generations", "/v1/audio/speech")
)
# A peer installation's query may carry an image (signed, checked after the body).
_IMAGE_ROUTES = frozenset(("/api/vision", "/v1/chat/completions", "/api/federation/route"))
_AUDIO_ROUTES = frozenset(("/api/whisper", "/v1/audio/transcriptions"))


def _base64_len(raw_bytes: int) -> int:
    return 4 * ((raw_bytes + 2) // 3)


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The body limit in bytes of each route."""

    text_bytes: int
    image_bytes: int
    audio_bytes: int
    default_bytes: int = DEFAULT_BYTES
    anonymous_bytes: int = ANONYMOUS_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        """Limits sized by ``[Queue] max_prompt_chars`` and ``[Chunking] max_image_bytes``."""
        text = settings.queue.max_prompt_chars * _JSON_BYTES_PER_CHAR + ENVELOPE_BYTES
        image = _base64_len(settings.chunking.max_image_bytes) + text
        audio = _base64_len(_AUDIO_BYTES) + ENVELOPE_BYTES
        return cls(text_bytes=text, image_bytes=image, audio_bytes=audio)

    def for_path(self, path: str) -> tuple[int, bool]:
        """``(limit, needs_key)`` for a request to ``path``."""
        path = path.rstrip("/") or "/"
        if path in _IMAGE_ROUTES:
            # Federation calls authenticate by signature, not by an API key.
            return self.image_bytes, not path.startswith("/api/federation/")
        if path in _AUDIO_ROUTES:
            return self.audio_bytes, True
        if path in _TEXT_ROUTES:
            return self.text_bytes, True
        if path.startswith("/v1/"):
            return self.text_bytes, True
        return self.default_bytes, False


def _too_large_body(path: str, limit: int) -> bytes:
    message = f"Request body too large (limit {limit} bytes)"
    if path.startswith("/v1/"):
        error = {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
        return orjson.dumps({"error": error})
    return orjson.dumps({"detail": message, "code": "request_too_large"})


async def _send_too_large(send: Send, receive: Receive, path: str, limit: int) -> None:
    """Answer 413; the answer is complete for the client before the rest of its body is read.

    A client that is still sending when the connection closes gets a reset, and
    may lose the answer with it. So the whole answer goes out first (its
    ``Content-Length`` tells the client it is complete), then what the client
    still sends is read and dropped (at most :data:`DRAIN_MAX_BYTES`, for at most
    :data:`DRAIN_MAX_S`), and only then does the response end.
    """
    body = _too_large_body(path, limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": True})
    await _drain(receive)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class BodyLimitMiddleware:
    """Answers 413 for bodies over their route's limit (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admitted = await admit_body(self.limits, scope, receive, send)
        if admitted is not None:
            await self.app(scope, *admitted)


async def admit_body(
    limits: BodyLimits, scope: Scope, receive: Receive, send: Send
) -> tuple[Receive, Send] | None:
    """The ``(receive, send)`` that enforce the limit of an HTTP request's body.

    ``None`` when the request was answered 413 already (its declared length is
    over the limit). The returned ``receive`` answers 413 and then reports a
    disconnect the moment the body passes the limit; the returned ``send``
    drops the application's answer after that.
    """
    path: str = scope["path"]
    headers = Headers(scope=scope)
    limit, needs_key = limits.for_path(path)
    declared = _content_length(headers)
    if needs_key and limit > limits.anonymous_bytes:
        if declared is None or declared > limits.anonymous_bytes:
            if not await _has_valid_key(scope, headers):
                limit = limits.anonymous_bytes
    if declared is not None and declared > limit:
        await _send_too_large(send, receive, path, limit)
        return None
    guard = _Guard(send)
    return _CountingReceive(receive, guard, path, limit), guard


async def read_body(receive: Receive) -> bytes | None:
    """The whole body of an HTTP request; ``None`` when the client went away (or was refused)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a body, within :data:`DRAIN_MAX_BYTES` and :data:`DRAIN_MAX_S`."""
    drained = 0
    try:
        async with asyncio.timeout(DRAIN_MAX_S):
            while drained <= DRAIN_MAX_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


async def _has_valid_key(scope: Scope, headers: Headers) -> bool:
    """Whether the request carries an API key of a user allowed to call (no body read)."""
    from rentahal.api.auth import AuthFailed, identify

    broker: Any = getattr(scope["app"].state, "broker", None)
    if broker is None or not headers.get("authorization"):
        return False
    try:
        await identify(broker, headers.get("authorization"))
    except AuthFailed:
        return False
    except Exception:  # the key store is down: the route answers that; stay small meanwhile
        logger.warning("could not check an API key before reading a body", exc_info=True)
        return False
    return True


class _Guard:
    """The ``send`` of one request: once the middleware answered, the app's answer is dropped."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.answered = False

    async def __call__(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def refuse(self, receive: Receive, path: str, limit: int) -> None:
        """Answer 413 in the app's stead (unless the app's own answer already began)."""
        self.answered = True
        if not self.started:
            await _send_too_large(self._send, receive, path, limit)


class _CountingReceive:
    """``receive`` counting body bytes; past the limit: answer 413, report a disconnect."""

    def __init__(self, receive: Receive, guard: _Guard, path: str, limit: int) -> None:
        self._receive = receive
        self._guard = guard
        self._path = path
        self._limit = limit
        self._seen = 0
        self.refused = False

    async def __call__(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        self._seen += len(message.get("body", b""))
        if self._seen <= self._limit:
            return message
        self.refused = True
        logger.info("refused a body over %d bytes to %s", self._limit, self._path)
        await self._guard.refuse(self._receive, self._path, self._limit)
        return {"type": "http.disconnect"}
