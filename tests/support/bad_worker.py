"""A worker that misbehaves on demand: HTML, truncated JSON, 500, 429, hangs, huge answers,
redirects elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


class BadWorker:
    """State of the misbehaving worker; tests set ``mode``."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def app(self) -> Starlette:
        """The ASGI app speaking the ``predict`` protocol."""

        async def predict(request: Request) -> Response:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._answer(await request.json())
            finally:
                self.in_flight -= 1

        async def health(_request: Request) -> Response:
            if self.mode == "down":
                return PlainTextResponse("down", status_code=503)
            return JSONResponse({"status": "healthy"})

        return Starlette(
            routes=[
                Route("/predict", predict, methods=["POST"]),
                Route("/health", health),
            ]
        )

    async def _answer(self, body: dict[str, Any]) -> Response:
        mode = self.mode
        if mode == "html":
            return Response("<html><body>Bad Gateway</body></html>", media_type="text/html")
        if mode == "truncated":
            return Response('{"response": "half', media_type="application/json")
        if mode == "missing":
            return JSONResponse({"answer": "wrong field"})
        if mode in ("500", "down"):
            return PlainTextResponse("boom", status_code=500)
        if mode == "429":
            return PlainTextResponse("slow down", status_code=429)
        if mode == "400":
            return PlainTextResponse("bad prompt", status_code=400)
        if mode.startswith("huge:"):  # a valid answer of that many bytes, streamed
            return StreamingResponse(
                _huge(int(mode.split(":", 1)[1])), media_type="application/json"
            )
        if mode.startswith("redirect:"):  # 307 to another URL (method and body kept)
            return Response(status_code=307, headers={"location": mode.split(":", 1)[1]})
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode.startswith("sleep:"):
            await asyncio.sleep(float(mode.split(":", 1)[1]))
        return JSONResponse({"response": f"ok: {body.get('prompt', '')}"})


async def _huge(total_bytes: int) -> AsyncIterator[bytes]:
    """``{"response": "xxx..."}`` of ``total_bytes``, in 1 MiB pieces (never held whole)."""
    head, tail = b'{"response": "', b'"}'
    yield head
    left = total_bytes - len(head) - len(tail)
    block = b"x" * (1024 * 1024)
    while left > 0:
        piece = block[: min(left, len(block))]
        left -= len(piece)
        yield piece
    yield tail
