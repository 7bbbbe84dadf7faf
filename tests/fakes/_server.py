"""The runner and request recorder shared by the fake worker APIs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

#: A 1x1 transparent PNG, what the fake image servers draw.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
    "2mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def _silent_wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


#: 10 ms of silence, what the fake speech server says.
WAV_BYTES = _silent_wav()

#: Modes every route understands (see :meth:`FakeState.misbehave`).
GENERIC_MODES = ("html", "truncated", "missing", "400", "401", "429", "500", "503", "hang")

HANG_LIMIT_S = 30.0


@dataclass
class Recorded:
    """One request as the fake server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, Any] | None = None

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class FakeState:
    """What a fake server saw, and how it should behave next.

    ``mode`` is ``None`` (behave) or one of :data:`GENERIC_MODES`, or a
    route-specific mode such as ``"cut"`` / ``"nodone"`` for streams;
    ``options`` holds per-app switches (e.g. ``data_uri`` for A1111).
    """

    requests: list[Recorded] = field(default_factory=list)
    mode: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        """Forget requests and modes; let any hanging handler finish."""
        self.release.set()
        self.release = threading.Event()
        self.requests.clear()
        self.mode = None
        self.options.clear()

    @property
    def last(self) -> Recorded:
        """The most recent request."""
        return self.requests[-1]

    async def record(self, request: Request) -> Recorded:
        """Store ``request`` (multipart bodies are parsed into ``form``)."""
        form: dict[str, Any] | None = None
        body = b""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = {}
            async with request.form() as parsed:
                for key, value in parsed.multi_items():
                    if isinstance(value, str):
                        form[key] = value
                    else:
                        form[key] = (value.filename, await value.read(), value.content_type)
        else:
            body = await request.body()
        entry = Recorded(
            request.method,
            request.url.path,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            form,
        )
        self.requests.append(entry)
        return entry

    async def misbehave(self) -> Response | None:
        """The bad answer the current mode asks for, or ``None`` to answer properly."""
        mode = self.mode
        if mode == "html":
            return HTMLResponse("<html><body><h1>502 Bad Gateway</h1></body></html>")
        if mode == "truncated":
            return Response('{"images": ["iVBOR', media_type="application/json")
        if mode == "missing":
            return JSONResponse({"unexpected": True})
        if mode == "503":
            return JSONResponse(
                {"error": "Model is currently loading", "estimated_time": 20.0}, status_code=503
            )
        if mode in ("400", "401", "429", "500"):
            return JSONResponse({"error": {"message": f"fake {mode}"}}, status_code=int(mode))
        if mode == "hang":
            # A thread waits, so reset() and stop() (other threads) can end the hang.
            await asyncio.to_thread(self.release.wait, HANG_LIMIT_S)
            return JSONResponse({"late": True})
        return None


class CutResponse(Response):
    """Sends ``chunks`` of a chunked body, then drops the connection mid-answer."""

    def __init__(self, chunks: list[bytes], media_type: str = "text/event-stream") -> None:
        super().__init__(media_type=media_type)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No content-length: the body is chunked and never finished.
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # Returning without the final body message makes uvicorn close the socket.


class FakeServer:
    """Runs ``create_app(state)`` on 127.0.0.1, on a free port, in a daemon thread."""

    def __init__(self, create_app: Callable[[FakeState], Starlette]) -> None:
        self.state = FakeState()
        config = uvicorn.Config(
            create_app(self.state),
            host="127.0.0.1",
            port=0,
            log_level="critical",
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as an ``AIWorker.address``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Release hanging handlers, stop the server and wait for its thread."""
        self.state.release.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def b64(data: bytes) -> str:
    """``data`` as base64 text."""
    return base64.b64encode(data).decode("ascii")


Handler = Callable[[Request, Recorded], Awaitable[Response]]


def recording(state: FakeState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler`` so it records the request and obeys the generic modes first."""

    async def endpoint(request: Request) -> Response:
        recorded = await state.record(request)
        bad = await state.misbehave()
        if bad is not None:
            return bad
        return await handler(request, recorded)

    return endpoint
