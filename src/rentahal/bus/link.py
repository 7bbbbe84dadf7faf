"""One Redis connection that carries every caller's commands, pipelined.

redis-py spends about 80-190 µs of Python per command (pool, retry wrapper,
observability hooks, a socket write each). A node's hot commands (submit, take,
finish, slot leases) go instead over one connection per node: commands are
packed and replies parsed by ``hiredis`` (redis' own C protocol library), every
command queued in one turn of the event loop leaves in one write, and replies
come back in order to their callers. Pub/sub, connection set-up commands of
the bus and admin reads stay on redis-py.

Each caller gets its own reply or its own error (``ResponseError``,
``NoScriptError``); a lost connection fails every command on its way with
``redis.exceptions.ConnectionError`` (a silent one, after ``reply_timeout_s``,
with ``redis.exceptions.TimeoutError``) and the next call connects again. A
caller cancelled before its command left takes the command back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis import exceptions as rexc
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.commands.core import AsyncScript

_MORE = object()  # hiredis: no whole reply buffered yet


async def _open_connection(
    options: dict[str, Any], protocol: asyncio.Protocol, timeout_s: float
) -> None:
    """Connect ``protocol`` to the server ``options`` (redis-py's parsed URL) name."""
    loop = asyncio.get_running_loop()
    kind = options.get("connection_class")
    try:
        async with asyncio.timeout(timeout_s):
            if kind is UnixDomainSocketConnection:
                await loop.create_unix_connection(lambda: protocol, options["path"])
            else:
                context = _tls_context(options) if kind is SSLConnection else None
                host, port = options.get("host", "localhost"), int(options.get("port", 6379))
                await loop.create_connection(lambda: protocol, host, port, ssl=context)
    except (OSError, TimeoutError) as exc:
        raise rexc.ConnectionError(f"cannot connect to redis: {exc}") from exc


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of a ``rediss://`` URL (its ``ssl_ca_certs`` and ``ssl_cert_reqs``)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _setup_commands(options: dict[str, Any]) -> list[tuple[Any, ...]]:
    """AUTH and SELECT for the URL's password and database, as needed."""
    setup: list[tuple[Any, ...]] = []
    if options.get("password"):
        user = [options["username"]] if options.get("username") else []
        setup.append(("AUTH", *user, options["password"]))
    if int(options.get("db", 0)):
        setup.append(("SELECT", int(options["db"])))
    return setup


def _reply_error(message: str) -> rexc.ResponseError:
    if message.startswith("NOSCRIPT"):
        return rexc.NoScriptError(message)
    return rexc.ResponseError(message)


class _Wire(asyncio.Protocol):
    """The connection's protocol: replies, in order, to the futures awaiting them."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._reader = hiredis.Reader(
            encoding="utf-8", replyError=_reply_error, notEnoughData=_MORE
        )
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self.waiting
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not _MORE:
                fut = waiting.popleft()[0]
                if fut.done():  # its caller gave up (cancelled or timed out)
                    continue
                if isinstance(reply, rexc.ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # a reply no one asked for
            self.fail(rexc.ConnectionError(f"redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(rexc.ConnectionError(f"connection to redis lost: {exc or 'closed'}"))

    def fail(self, exc: BaseException) -> None:
        """Fail every command on its way and drop the connection."""
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
        self._link._lost(self)


class RedisLink:
    """A pipelined Redis connection for one node's hot commands (see module doc).

    ``retry`` repeats a command that failed on a lost connection (redis-py's
    policy object; none by default). ``reply_timeout_s`` is how long a reply
    may take before the connection is presumed dead.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        reply_timeout_s: float = 10.0,
        retry: Retry | None = None,
    ) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._retry = retry
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None
        self._outgoing: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._watch: asyncio.TimerHandle | None = None
        self._closed = False

    # calls

    async def call(self, *command: Any) -> Any:
        """Send ``command`` (with the others of this loop turn); its reply, decoded."""
        if self._retry is None:
            return await self._call(command)
        return await self._retry.call_with_retry(lambda: self._call(command), self._retrying)

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a registered Lua ``script`` by its SHA, loading it first if Redis lacks it."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:  # a fresh or flushed Redis: load it, then once more
            await self.call("SCRIPT", "LOAD", script.script)
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _retrying(self, _error: Exception) -> None:
        return None  # the next attempt connects again by itself

    async def _call(self, command: tuple[Any, ...]) -> Any:
        if self._closed:
            raise rexc.ConnectionError("redis link closed")
        wire = self._wire
        if wire is None or wire.lost is not None:
            await self._connect()
        return await self._queue(command)

    def _queue(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append((hiredis.pack_command(command), fut))
        return fut

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        wire = self._wire
        if wire is None or wire.lost is not None or wire.transport is None:
            exc = (wire.lost if wire else None) or rexc.ConnectionError("redis link not connected")
            for _data, fut in outgoing:
                if not fut.done():
                    fut.set_exception(exc)
            return
        now = asyncio.get_running_loop().time()
        chunks = []
        for data, fut in outgoing:
            if fut.done():  # cancelled before it left: never sent
                continue
            chunks.append(data)
            wire.waiting.append((fut, now))
        if chunks:
            wire.transport.write(b"".join(chunks))
            if self._watch is None:
                self._watch = asyncio.get_running_loop().call_later(
                    self._reply_timeout_s, self._check
                )

    def _check(self) -> None:
        """Presume the connection dead when its oldest reply is overdue."""
        self._watch = None
        wire = self._wire
        if wire is None or not wire.waiting:
            return
        loop = asyncio.get_running_loop()
        overdue = wire.waiting[0][1] + self._reply_timeout_s - loop.time()
        if overdue <= 0:
            wire.fail(rexc.TimeoutError(f"no reply from redis in {self._reply_timeout_s:g} s"))
            return
        self._watch = loop.call_later(overdue, self._check)

    # connection

    async def _connect(self) -> _Wire:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Wire:
        options = self._options
        wire = _Wire(self)
        await _open_connection(options, wire, self._connect_timeout_s)
        self._wire = wire
        # Queued before anything else can be, so every later command runs after them.
        setup = [self._queue(command) for command in _setup_commands(options)]
        try:
            for step in setup:
                await step
        except rexc.ResponseError as exc:
            wire.fail(rexc.ConnectionError(f"redis refused the connection: {exc}"))
            raise rexc.ConnectionError(f"redis refused the connection: {exc}") from exc
        return wire

    def _lost(self, wire: _Wire) -> None:
        if self._wire is wire:
            self._wire = None

    async def close(self) -> None:
        """Let queued commands leave, then disconnect (commands on their way fail)."""
        if self._outgoing:
            self._flush()
        wire, self._wire = self._wire, None
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if wire is not None and wire.transport is not None:
            wire.transport.close()
            if wire.waiting:
                wire.fail(rexc.ConnectionError("redis link closed"))

    def register(self, script: AsyncScript) -> LinkScript:
        """``script`` (registered on a redis-py client, for its SHA) called over this link."""
        return LinkScript(self, script)


class LinkScript:
    """A Lua script called over a :class:`RedisLink`."""

    def __init__(self, link: RedisLink, script: AsyncScript) -> None:
        self._link = link
        self._script = script

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run the script with ``keys`` and ``args``; its reply."""
        return await self._link.script(self._script, keys, args)


class _Feed(asyncio.Protocol):
    """A subscribed connection's protocol: messages into a buffer, replies to commands."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(
            encoding="utf-8", replyError=_reply_error, notEnoughData=_MORE
        )
        self.transport: asyncio.Transport | None = None
        self.messages: list[tuple[str, str]] = []
        self.replies: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.arrived = asyncio.Event()
        self.heard_at = 0.0
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.heard_at = asyncio.get_running_loop().time()
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not _MORE:
                if isinstance(reply, list) and reply and reply[0] == "message":
                    self.messages.append((str(reply[1]), str(reply[2])))
                    self.arrived.set()
                elif self.replies:  # a confirmation or reply, in the order asked
                    fut = self.replies.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(rexc.ConnectionError(f"redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rexc.ConnectionError(f"pub/sub connection to redis lost: {exc or 'closed'}"))

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        while self.replies:
            fut = self.replies.popleft()
            if not fut.done():
                fut.set_exception(exc)
        self.arrived.set()
        if self.transport is not None:
            self.transport.abort()


class RedisSubscriber:
    """A pub/sub connection whose messages arrive as they come, without a call per message.

    ``wait`` answers every message buffered since the last call at once (or
    waits for one). A connection that stays silent past ``idle_s`` is pinged;
    no answer within ``reply_timeout_s`` ends it with ``TimeoutError``, as a
    lost one ends with ``ConnectionError``: the caller opens a new subscriber.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        reply_timeout_s: float = 10.0,
        idle_s: float = 30.0,
    ) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._idle_s = idle_s
        self._feed = _Feed()
        self._pinged_at: float | None = None

    async def connect(self) -> None:
        """Open the connection (with the URL's password and database)."""
        await _open_connection(self._options, self._feed, self._connect_timeout_s)
        for command in _setup_commands(self._options):
            reply = await self._ask(command, 1)
            if isinstance(reply[0], rexc.ResponseError):
                await self.close()
                raise rexc.ConnectionError(f"redis refused the connection: {reply[0]}")

    async def _ask(self, command: tuple[Any, ...], replies: int) -> list[Any]:
        feed = self._feed
        if feed.lost is not None or feed.transport is None:
            raise feed.lost or rexc.ConnectionError("pub/sub connection not open")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        feed.replies.extend(futures)
        feed.transport.write(hiredis.pack_command(command))
        async with asyncio.timeout(self._reply_timeout_s):
            return list(await asyncio.gather(*futures))

    async def subscribe(self, *channels: str) -> None:
        """Subscribe to ``channels``; returns once Redis confirmed every one."""
        await self._ask(("SUBSCRIBE", *channels), len(channels))

    async def wait(self, timeout_s: float) -> list[tuple[str, str]]:
        """The (channel, data) messages that arrived, in order; [] after ``timeout_s``."""
        feed = self._feed
        if not feed.messages:
            if feed.lost is not None:
                raise feed.lost
            feed.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await feed.arrived.wait()
            if feed.lost is not None:
                raise feed.lost
            self._check_idle()
        messages, feed.messages = feed.messages, []
        return messages

    def _check_idle(self) -> None:
        feed, now = self._feed, asyncio.get_running_loop().time()
        if self._pinged_at is not None and feed.heard_at >= self._pinged_at:
            self._pinged_at = None  # it answered
        if self._pinged_at is not None:
            if now - self._pinged_at > self._reply_timeout_s:
                feed._fail(rexc.TimeoutError("pub/sub connection to redis went silent"))
                raise rexc.TimeoutError("pub/sub connection to redis went silent")
        elif now - feed.heard_at > self._idle_s and feed.transport is not None:
            self._pinged_at = now
            feed.replies.append(asyncio.get_running_loop().create_future())  # the pong
            feed.transport.write(hiredis.pack_command(("PING",)))

    async def close(self) -> None:
        """Close the connection."""
        if self._feed.transport is not None:
            self._feed.transport.close()
