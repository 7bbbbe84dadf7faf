"""Worker calls over plain keep-alive HTTP/1.1 connections, parsed by ``httptools``.

aiohttp's client costs about 200-300 µs of Python per call on a small machine
(session and request objects, headers, payload writer task, response object,
stream reader), three to five times the exchange itself. The hot worker call
is simple: one request with a body already encoded, to a worker at a literal
IP address over ``http://``, read in full. :class:`LeanHttp` does that on its
own connections: the request goes out in one write, the answer is parsed by
``httptools`` (llhttp, the parser of Node.js; it also does uvicorn's), and the
connection goes back to a per-address pool when the answer allows keep-alive.

Everything else (names, ``https://``, forms, redirects followed) stays on
aiohttp (:mod:`rentahal.backends._http` chooses). Rules kept the same as
there: the answer limit (refused as soon as it is passed), at most
``MAX_CONNECTIONS`` open connections, the connect timeout, one deadline for
the whole exchange (the caller's ``asyncio.timeout``; a call cancelled mid-way
closes its connection). A reused connection that the worker closed before any byte of
the answer came back is tried once more on a new connection (a keep-alive
connection closed while idle); connections idle for ``IDLE_S`` are not reused.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Mapping

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

MAX_CONNECTIONS = 512  # as the aiohttp connector's limit
IDLE_S = 4.0  # below uvicorn's 5 s keep-alive timeout: a worker closing idle sockets
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class LeanHttpError(Exception):
    """The exchange failed: ``kind`` names how (a class name, as aiohttp's errors are
    named to users); ``unreachable`` when no whole answer came."""

    def __init__(self, kind: str, detail: str = "", *, unreachable: bool = True) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.unreachable = unreachable


class AnswerTooLarge(LeanHttpError):
    """The answer passed the limit."""

    def __init__(self) -> None:
        super().__init__("AnswerTooLarge", unreachable=False)


def _malformed(exc: Exception) -> LeanHttpError:
    return LeanHttpError("MalformedAnswer", str(exc), unreachable=False)


class LeanAnswer:
    """A whole answer: status, reason, headers (case-insensitive), decoded body."""

    __slots__ = ("content", "headers", "reason", "status")

    def __init__(
        self, status: int, reason: str, headers: CIMultiDictProxy[str], content: bytes
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content


class _Connection(asyncio.Protocol):
    """One socket to a worker and the parser of its answers (one at a time)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[LeanAnswer] | None = None
        self._limit = 0
        self._got_bytes = False
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self._until_close = False  # the answer's body ends when the worker closes
        self.keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._close()  # bytes nobody asked for: the connection is not usable
            return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # a callback's own error is its context
            cause = exc.__context__
            self._fail(cause if isinstance(cause, LeanHttpError) else _malformed(exc))
        except httptools.HttpParserUpgrade as exc:
            self._fail(_malformed(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if not self._got_bytes:
                waiter.set_exception(_Closed())
                return
            if self._until_close:  # the close ends this answer (HTTP/1.0 style)
                self.keep_alive = False
                waiter.set_result(self._answer())
                return
            waiter.set_exception(LeanHttpError("ServerDisconnected", "during the answer"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():  # a second answer to one request
            raise LeanHttpError("MalformedAnswer", "more than one answer", unreachable=False)

    def on_status(self, status: bytes) -> None:
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        framed = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "content-length":
                framed = True
                if value.strip().isdigit() and int(value) > self._limit:
                    raise AnswerTooLarge
            elif lowered == "transfer-encoding":
                framed = True
        status = self.parser.get_status_code()
        self._until_close = not framed and status >= 200 and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._limit:
            raise AnswerTooLarge

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._reason, self._headers, self._body = "", [], bytearray()
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._until_close = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._answer())

    def _answer(self) -> LeanAnswer:
        return LeanAnswer(
            self.parser.get_status_code(),
            self._reason,
            CIMultiDictProxy(CIMultiDict(self._headers)),
            bytes(self._body),
        )

    # use

    def send(self, request: bytes, limit: int) -> asyncio.Future[LeanAnswer]:
        """Write one request; the future of its answer."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._limit, self._got_bytes, self._reason = limit, False, ""
        self._headers, self._body, self.keep_alive = [], bytearray(), False
        self._until_close = False
        self.transport.write(request)
        return self._waiter

    def usable(self, now: float) -> bool:
        """Open, idle for less than :data:`IDLE_S`."""
        transport = self.transport
        return (
            not self.lost
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < IDLE_S
        )

    def _fail(self, exc: LeanHttpError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self._close()

    def _close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class _Closed(Exception):
    """The connection closed before any byte of the answer."""


def _decoded(answer: LeanAnswer, limit: int) -> bytes:
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return answer.content
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        raise LeanHttpError("MalformedAnswer", f"unknown encoding {encoding!r}", unreachable=False)
    decoder = zlib.decompressobj(wbits)
    try:
        content = decoder.decompress(answer.content, limit + 1)
    except zlib.error as exc:
        raise LeanHttpError("MalformedAnswer", f"not {encoding}: {exc}", unreachable=False) from exc
    if len(content) > limit or decoder.unconsumed_tail:
        raise AnswerTooLarge
    return content


class LeanHttp:
    """Pooled keep-alive connections to workers at literal IP addresses (see the module doc)."""

    def __init__(
        self,
        *,
        max_answer_bytes: int,
        connect_timeout_s: float | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.max_answer_bytes = max_answer_bytes
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self._idle: defaultdict[tuple[str, int], deque[_Connection]] = defaultdict(deque)
        self._open: set[_Connection] = set()
        self._closed = False

    @property
    def full(self) -> bool:
        """No new connection may be opened (the caller then uses aiohttp)."""
        return len(self._open) >= self.max_connections and not any(self._idle.values())

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        limit: int,
    ) -> LeanAnswer:
        """Send one request and read its whole answer (``LeanHttpError`` on failure)."""
        head = [f"{method} {target} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        request = "".join(head).encode("latin-1") + body
        key = (host, port)
        conn, reused = await self._take(key)
        try:
            try:
                answer = await conn.send(request, limit)
            except _Closed:
                self._drop(conn)
                if not reused:
                    raise LeanHttpError("ServerDisconnected", "before the answer") from None
                conn, reused = await self._open_new(key), False  # closed while idle: once more
                try:
                    answer = await conn.send(request, limit)
                except _Closed:
                    raise LeanHttpError("ServerDisconnected", "before the answer") from None
            content = _decoded(answer, limit)
        except BaseException:
            conn._close()
            self._drop(conn)
            raise
        if conn.keep_alive and not conn.lost and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle[key].append(conn)
        else:
            conn._close()
            self._drop(conn)
        answer.content = content
        return answer

    async def _take(self, key: tuple[str, int]) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used one
            if conn.usable(now):
                return conn, True
            conn._close()
            self._drop(conn)
        return await self._open_new(key), False

    async def _open_new(self, key: tuple[str, int]) -> _Connection:
        if len(self._open) >= self.max_connections:
            self._close_one_idle()
        loop = asyncio.get_running_loop()
        try:  # a connect timeout is a TimeoutError, as aiohttp's sock_connect one
            async with asyncio.timeout(self.connect_timeout_s):
                _transport, conn = await loop.create_connection(_Connection, key[0], key[1])
        except OSError as exc:
            raise LeanHttpError(type(exc).__name__, str(exc)) from exc
        self._open.add(conn)
        return conn

    def _close_one_idle(self) -> None:
        for idle in self._idle.values():
            if idle:
                conn = idle.popleft()
                conn._close()
                self._drop(conn)
                return

    def _drop(self, conn: _Connection) -> None:
        self._open.discard(conn)

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        for conn in list(self._open):
            conn._close()
        self._open.clear()
        self._idle.clear()


def _host_header(host: str, port: int) -> str:
    literal = f"[{host}]" if ":" in host else host
    return literal if port == 80 else f"{literal}:{port}"
