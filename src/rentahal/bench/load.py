"""Closed-loop load: each client sends one request, waits for the answer, sends the next.

Clients speak raw HTTP/1.1 keep-alive (lighter than httpx, so the load generator
takes less of a small machine's CPU from the servers it measures) or the broker's
WebSocket protocol via ``websockets``. Every loop is bounded by a request count
and a deadline; every request by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

REQUEST_TIMEOUT_S = 30.0
CHAT_PROMPT = "benchmark: say hi"


class LoadError(Exception):
    """A request that did not get a good answer (counted, not raised past the loop)."""


class Client(Protocol):
    """Something that sends one request and waits for its answer."""

    async def request(self) -> None:
        """One request; ``LoadError`` when the answer is not a success."""

    async def close(self) -> None:
        """Release the connection."""


@dataclass(slots=True)
class LoadResult:
    """Latencies and counts of one closed-loop run."""

    label: str
    concurrency: int
    duration_s: float = 0.0
    ok: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    first_error: str = ""
    answered: int = 0  # successes including the warm-up (for ledger checks)
    warmup_errors: int = 0
    first_warmup_error: str = ""
    # Successes that ended inside the measured window, whenever they were sent, and its length.
    window_done: int = 0
    window_s: float = 0.0

    @property
    def throughput(self) -> float:
        """Successful requests per second (those sent after the warm-up, until the last ends)."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def window_throughput(self) -> float:
        """Successes that ended within the measured window per second of it: the steady rate.

        Unlike :attr:`throughput` it does not count the drain at the end (the
        answers to the last requests) as time in which nothing more was sent.
        """
        return self.window_done / self.window_s if self.window_s > 0 else 0.0

    def percentile_ms(self, pct: float) -> float | None:
        """The ``pct`` percentile latency in milliseconds (None without samples)."""
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    @property
    def p50_ms(self) -> float | None:
        """Median latency."""
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float | None:
        """99th percentile latency."""
        return self.percentile_ms(99)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "ok": self.ok,
            "errors": self.errors,
            "throughput_per_s": round(self.throughput, 1),
            "p50_ms": _round(self.p50_ms),
            "p99_ms": _round(self.p99_ms),
            "mean_ms": _round(statistics.fmean(self.latencies_s) * 1000)
            if self.latencies_s
            else None,
            "first_error": self.first_error,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class HttpClient:
    """One keep-alive HTTP/1.1 connection posting the same JSON body again and again."""

    def __init__(
        self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, not {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        payload = orjson.dumps(body)
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
            "Accept: application/json",
            f"Content-Length: {len(payload)}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._request = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.last_status = 0
        self.last_body = b""

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def send(self) -> tuple[int, bytes]:
        """Post the body; the status and the response body."""
        reader, writer = await self._connect()
        try:
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader)
            else:  # body until close
                body = await reader.read()
                headers["connection"] = "close"
            if headers.get("connection", "").lower() == "close":
                await self.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            await self.close()
            raise LoadError(f"{type(exc).__name__}: {exc}") from exc
        self.last_status, self.last_body = status, body
        return status, body

    async def request(self) -> None:
        """One request; anything but a 200 is an error."""
        status, body = await self.send()
        if status != 200:
            raise LoadError(f"HTTP {status}: {body[:200].decode(errors='replace')}")

    async def close(self) -> None:
        """Close the connection (the next request reconnects)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def predict_client(address: str) -> HttpClient:
    """A client of a worker's original ``/predict`` route (the direct path)."""
    body = {"prompt": CHAT_PROMPT, "type": "chat", "model_type": "worker_node", "model_name": ""}
    return HttpClient(f"http://{address}/predict", body)


def openai_client(url: str, model: str = "", api_key: str = "") -> HttpClient:
    """A client of an OpenAI-compatible ``/v1/chat/completions``.

    ``url`` is a base URL (``http://host:port``, ``.../v1``) or the full endpoint.
    """
    url = url.rstrip("/")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": CHAT_PROMPT}]}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return HttpClient(url, body, headers)


class WSQueryClient:
    """A browser-like WebSocket session submitting chat queries one after another."""

    def __init__(self, ws: ClientConnection, query: dict[str, Any]) -> None:
        self.ws = ws
        self._frame = orjson.dumps({"type": "submit_query", "query": query}).decode()
        self.realm: str | None = None  # the queue the broker said it used

    @classmethod
    async def open(
        cls, ws_url: str, query_type: str = "chat", prompt: str = CHAT_PROMPT, **query: Any
    ) -> WSQueryClient:
        """Connect (a new user each time) and read the connect sequence."""
        ws = await websockets.connect(
            ws_url, max_size=64 * 1024 * 1024, open_timeout=REQUEST_TIMEOUT_S, ping_interval=None
        )
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            while True:
                message = orjson.loads(await ws.recv())
                if message.get("type") in ("huggingface_update", "error"):
                    break
        full = {"prompt": prompt, "query_type": query_type, "model_type": "worker_node"}
        full.update(query)
        return cls(ws, full)

    async def request(self) -> None:
        """Submit and wait for this query's ``query_result`` (or an ``error``)."""
        await self.ws.send(self._frame)
        while True:
            raw = await self.ws.recv(decode=False)
            # Cheap prefilter: most frames are queue_update/user_info we do not need to parse.
            if b'"query_result"' not in raw and b'"error"' not in raw:
                if self.realm is None and b'"query_queued"' in raw:
                    self.realm = str(orjson.loads(raw).get("realm"))
                continue
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "query_result":
                if message.get("status", "done") != "done":
                    raise LoadError(f"query {message.get('status')}: {message.get('error')}")
                return
            if kind == "error":
                raise LoadError(str(message.get("message")))

    async def close(self) -> None:
        """Close the socket."""
        with contextlib.suppress(Exception):
            await self.ws.close()


async def open_clients(
    factory: Callable[[], Awaitable[Client]], count: int, parallel: int = 16
) -> list[Client]:
    """Open ``count`` clients, at most ``parallel`` handshakes at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Client:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_clients(clients: Sequence[Client]) -> None:
    """Close every client."""
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def closed_loop(
    clients: Sequence[Client],
    label: str,
    *,
    duration_s: float,
    max_requests: int,
    warmup_s: float = 0.5,
    on_progress: Callable[[float], None] | None = None,
) -> LoadResult:
    """Drive ``clients`` in a closed loop for ``duration_s`` (after a warm-up) or
    ``max_requests`` requests, whichever comes first."""
    result = LoadResult(label=label, concurrency=len(clients))
    clock = time.perf_counter
    state = {"measuring": False, "issued": 0}
    start = clock()
    warm_end = start + warmup_s
    end = warm_end + duration_s

    async def drive(client: Client) -> None:
        while True:
            now = clock()
            if now >= end or state["issued"] >= max_requests:
                return
            measuring = now >= warm_end
            if measuring:
                state["issued"] += 1
            t0 = clock()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    await client.request()
            except (LoadError, TimeoutError, websockets.ConnectionClosed, OSError) as exc:
                if measuring:
                    result.errors += 1
                    result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                else:
                    result.warmup_errors += 1
                    result.first_warmup_error = (
                        result.first_warmup_error or f"{type(exc).__name__}: {exc}"
                    )
                if isinstance(exc, websockets.ConnectionClosed):
                    return  # a closed socket cannot go on
                await asyncio.sleep(0.01)  # no hot loop on a failing server
                continue
            result.answered += 1
            if warm_end <= clock() <= end:
                result.window_done += 1
            if measuring and t0 >= warm_end:
                result.ok += 1
                result.latencies_s.append(clock() - t0)

    async def ticker() -> None:
        while on_progress is not None:
            on_progress(min(1.0, (clock() - start) / (end - start)))
            await asyncio.sleep(0.2)

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(drive(c) for c in clients))
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
    result.duration_s = max(1e-9, clock() - warm_end)
    result.window_s = duration_s
    if on_progress is not None:
        on_progress(1.0)
    return result
