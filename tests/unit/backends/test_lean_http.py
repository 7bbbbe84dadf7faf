"""The lean lane of worker calls against a raw HTTP/1.1 server on loopback.

Each server here answers with exact bytes, so the cases aiohttp's own parser
would have hidden (keep-alive closed while idle, an answer cut off, garbage,
an answer longer than declared or than the limit) are seen as a worker would
send them.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from rentahal.backends import HttpClient
from rentahal.backends._http import _LEAN, _lean_headers, close_http, request, use_lean_http
from rentahal.errors import WorkerBadResponse, WorkerTimeout, WorkerUnavailable

LIMIT = 64 * 1024
Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # False: close after it


def _answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class RawServer:
    """Answers each request with what ``reply`` writes; counts connections and requests."""

    reply: Reply
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/predict"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                raw = head + await reader.readexactly(length)
                self.requests.append(raw)
                if not await self.reply(raw, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture
async def lean() -> AsyncIterator[HttpClient]:
    async with aiohttp.ClientSession() as http:
        use_lean_http(http, LIMIT)
        try:
            yield http
        finally:
            await close_http(http)


_SERVERS: list[asyncio.Server] = []


@pytest.fixture(autouse=True)
async def _close_servers() -> AsyncIterator[None]:
    yield
    while _SERVERS:
        server = _SERVERS.pop()
        server.close()
        await server.wait_closed()


async def _serve(reply: Reply) -> RawServer:
    raw = RawServer(reply)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    _SERVERS.append(raw.server)
    return raw


async def _call(http: HttpClient, url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    response = await request(
        http, "POST", url, worker="w", timeout_s=timeout_s, json={"prompt": "p"}
    )
    return response.status_code, response.content


def _keeps(body: bytes, *headers: str) -> Reply:
    async def reply(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(body, *headers))
        return True

    return reply


async def test_calls_share_one_keep_alive_connection(lean: HttpClient) -> None:
    raw = await _serve(_keeps(b'{"response": "hi"}', "Content-Type: application/json"))
    answers = [await _call(lean, raw.url) for _ in range(5)]
    assert answers == [(200, b'{"response": "hi"}')] * 5
    assert raw.connections == 1 and len(raw.requests) == 5
    first = raw.requests[0].decode()
    assert first.startswith("POST /predict HTTP/1.1\r\nHost: 127.0.0.1:")
    assert "Content-Type: application/json\r\n" in first and first.endswith('{"prompt":"p"}')


async def test_a_connection_the_worker_closed_while_idle_is_replaced(lean: HttpClient) -> None:
    async def once(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(b"ok"))  # keep-alive by HTTP/1.1 rules, then closed anyway
        return False

    raw = await _serve(once)
    assert await _call(lean, raw.url) == (200, b"ok")
    await asyncio.wait_for(raw.closed.wait(), 5)
    await asyncio.sleep(0.05)
    assert await _call(lean, raw.url) == (200, b"ok")  # no error reaches the caller
    assert raw.connections == 2


async def test_connection_close_answers_are_not_reused(lean: HttpClient) -> None:
    raw = await _serve(_keeps(b"ok", "Connection: close"))
    for _ in range(3):
        assert await _call(lean, raw.url) == (200, b"ok")
    assert raw.connections == 3


async def test_chunked_and_gzip_answers_are_decoded(lean: HttpClient) -> None:
    chunked = await _serve(
        _keeps(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "Transfer-Encoding: chunked")
    )
    assert await _call(lean, chunked.url) == (200, b"hello world")
    packed = gzip.compress(b"squeezed" * 100)
    zipped = await _serve(_keeps(packed, "Content-Encoding: gzip"))
    assert await _call(lean, zipped.url) == (200, b"squeezed" * 100)


@pytest.mark.parametrize(
    "answer",
    [
        _answer(b"x" * (LIMIT + 1)),
        _answer(b"", f"Content-Length: {LIMIT + 1}"),
        _answer(
            b"".join(b"%x\r\n%s\r\n" % (4096, b"y" * 4096) for _ in range(LIMIT // 4096 + 1))
            + b"0\r\n\r\n",
            "Transfer-Encoding: chunked",
        ),
        _answer(gzip.compress(b"z" * (LIMIT * 4)), "Content-Encoding: gzip"),
    ],
    ids=["long", "declared", "chunked", "gzip-bomb"],
)
async def test_an_answer_over_the_limit_is_refused(lean: HttpClient, answer: bytes) -> None:
    async def reply(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        return True

    raw = await _serve(reply)
    with pytest.raises(WorkerBadResponse, match=f"answer too large \\(over {LIMIT} bytes\\)"):
        await _call(lean, raw.url)
    assert not _LEAN[lean]._open  # that connection is not kept


async def test_garbage_is_a_malformed_answer_and_the_next_call_reconnects(
    lean: HttpClient,
) -> None:
    replies = iter([b"NOT HTTP AT ALL\r\n\r\n", _answer(b"fine")])

    async def reply(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(next(replies))
        return True

    raw = await _serve(reply)
    with pytest.raises(WorkerBadResponse, match="worker w sent a malformed answer"):
        await _call(lean, raw.url)
    assert await _call(lean, raw.url) == (200, b"fine")
    assert raw.connections == 2


async def test_an_answer_cut_off_is_unreachable(lean: HttpClient) -> None:
    async def cut(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(b"0123456789")[:-5])
        await writer.drain()
        return False

    raw = await _serve(cut)
    with pytest.raises(WorkerUnavailable, match="worker w unreachable: ServerDisconnected"):
        await _call(lean, raw.url)


async def test_a_refused_connection_is_unreachable(lean: HttpClient) -> None:
    raw = await _serve(_keeps(b"ok"))
    url = raw.url
    assert raw.server is not None
    raw.server.close()
    await raw.server.wait_closed()
    with pytest.raises(WorkerUnavailable, match="worker w unreachable: ConnectionRefusedError"):
        await _call(lean, url)


async def test_a_timed_out_call_closes_its_connection(lean: HttpClient) -> None:
    async def silent(_raw: bytes, _writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.0)  # no answer; then the next read finds the socket closed
        return True

    raw = await _serve(silent)
    with pytest.raises(WorkerTimeout, match=r"worker w timed out after 0\.3s"):
        await _call(lean, raw.url, timeout_s=0.3)
    await asyncio.wait_for(raw.closed.wait(), 5)  # the worker sees the socket go
    assert not _LEAN[lean]._open


async def test_redirects_are_followed_only_to_the_same_address(lean: HttpClient) -> None:
    async def moved(raw_request: bytes, writer: asyncio.StreamWriter) -> bool:
        if raw_request.startswith(b"POST /predict "):
            writer.write(_answer(b"", "Location: /predict/", status="307 Temporary Redirect"))
        else:
            writer.write(_answer(b"moved here"))
        return True

    raw = await _serve(moved)
    response = await request(
        lean, "POST", raw.url, worker="w", timeout_s=5, json={}, follow_redirects=True
    )
    assert (response.status_code, response.content) == (200, b"moved here")

    async def away(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(b"", "Location: http://10.0.0.1/x", status="307 Temporary Redirect"))
        return True

    elsewhere = await _serve(away)
    with pytest.raises(WorkerBadResponse, match="redirected to another address"):
        await request(
            lean, "POST", elsewhere.url, worker="w", timeout_s=5, json={}, follow_redirects=True
        )


async def test_names_and_odd_headers_stay_on_aiohttp(lean: HttpClient) -> None:
    raw = await _serve(_keeps(b"ok"))
    by_name = raw.url.replace("127.0.0.1", "localhost")
    response = await request(lean, "POST", by_name, worker="w", timeout_s=5, json={})
    assert response.content == b"ok"
    assert not _LEAN[lean]._open  # aiohttp's connection, not the lean pool's
    assert _lean_headers({"X-Key": "a\r\nInjected: yes"}) is None
    assert _lean_headers({"Host": "elsewhere"}) is None
    assert _lean_headers({"Authorization": "Bearer k"}) == {
        "Accept": "*/*",
        "Accept-Encoding": "gzip, deflate",
        "User-Agent": "rentahal",
        "Authorization": "Bearer k",
    }


async def test_close_delimited_and_interim_answers(lean: HttpClient) -> None:
    async def old_style(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close")
        return False

    closing = await _serve(old_style)
    assert await _call(lean, closing.url) == (200, b"until the close")

    async def interim(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + _answer(b"after the interim"))
        return True

    continued = await _serve(interim)
    assert await _call(lean, continued.url) == (200, b"after the interim")


async def test_a_second_unasked_answer_retires_the_connection(lean: HttpClient) -> None:
    async def twice(_raw: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(b"first") + _answer(b"unasked"))
        return True

    raw = await _serve(twice)
    assert await _call(lean, raw.url) == (200, b"first")
    assert await _call(lean, raw.url) == (200, b"first")  # never the unasked one
    assert raw.connections == 2
