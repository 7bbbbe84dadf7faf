"""A raw HTTP/1.1 POST that streams a large body while watching for an early answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

CHUNK_BYTES = 256 * 1024


@dataclass
class RawAnswer:
    """The status, headers and body of an answer (``status`` 0: none came)."""

    status: int
    headers: dict[str, str]
    body: bytes
    sent_bytes: int

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


async def post_streaming(
    host: str,
    port: int,
    path: str,
    total_bytes: int,
    *,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> RawAnswer:
    """POST ``total_bytes`` of a JSON-looking body; stop sending once the server answers.

    With ``chunked`` the body goes as ``Transfer-Encoding: chunked`` without a
    ``Content-Length``.
    """
    reader, writer = await asyncio.open_connection(host, port)
    prefix = b'{"prompt": "'
    request = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    request += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total_bytes}")
    writer.write(("\r\n".join(request) + "\r\n\r\n").encode("latin-1"))
    answer = asyncio.create_task(_read_answer(reader))
    sent = 0
    try:
        async with asyncio.timeout(timeout_s):
            block = b"x" * CHUNK_BYTES
            while sent < total_bytes and not answer.done():
                data = prefix if sent == 0 else block[: total_bytes - sent]
                frame = f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data
                try:
                    writer.write(frame)
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
                sent += len(data)
                await asyncio.sleep(0)  # let the reader see an early answer
            if chunked and not answer.done():
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
            try:
                status, answer_headers, body = await answer
            except (asyncio.IncompleteReadError, ConnectionError):
                return RawAnswer(0, {}, b"", sent)
    finally:
        if not answer.done():
            answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return RawAnswer(status, answer_headers, body, sent)
