"""An instant OpenAI-compatible upstream (``python -m rentahal.bench.upstream --port N``).

The ``overhead`` scenario puts it behind every path it measures, so that the
upstream itself costs as little of a small machine's CPU as possible and the
direct path is the limit. It answers ``POST /v1/chat/completions`` (non-streamed)
with one fixed assistant message, ``GET /v1/models`` and ``GET /health``; other
requests get 404. HTTP/1.1 keep-alive, parsed by ``httptools`` on ``uvloop``
(both come with ``uvicorn[standard]``; plain asyncio when uvloop is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Callable
from typing import cast

import httptools
import orjson

REPLY_TEXT = "hi"
MAX_BODY_BYTES = 1024 * 1024


def _response(status: str, payload: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        + ("" if keep_alive else "connection: close\r\n")
        + "\r\n"
    )
    return head.encode() + payload


def _completion(body: bytes) -> bytes:
    try:
        model = str(orjson.loads(body).get("model") or "instant")
    except (orjson.JSONDecodeError, AttributeError):
        model = "instant"
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": REPLY_TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


MODELS = orjson.dumps({"object": "list", "data": [{"id": "instant", "object": "model"}]})
HEALTH = orjson.dumps({"status": "healthy"})
NOT_FOUND = orjson.dumps({"error": {"message": "not found", "type": "invalid_request_error"}})
TOO_LARGE = orjson.dumps({"error": {"message": "body too large", "type": "invalid_request_error"}})


class _Protocol(asyncio.Protocol):
    """One connection: parse requests, answer each at once."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_response("400 Bad Request", NOT_FOUND, False))
                self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._body, self._size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= MAX_BODY_BYTES:
            self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        keep_alive = self._parser.should_keep_alive()
        method = self._parser.get_method()
        path = self._url.split(b"?", 1)[0]
        if self._size > MAX_BODY_BYTES:
            status, payload, keep_alive = "413 Content Too Large", TOO_LARGE, False
        elif method == b"POST" and path == b"/v1/chat/completions":
            status, payload = "200 OK", _completion(b"".join(self._body))
        elif method == b"GET" and path == b"/v1/models":
            status, payload = "200 OK", MODELS
        elif method == b"GET" and path in (b"/health", b"/"):
            status, payload = "200 OK", HEALTH
        else:
            status, payload = "404 Not Found", NOT_FOUND
        transport.write(_response(status, payload, keep_alive))
        if not keep_alive:
            transport.close()


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.host, args.port))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
