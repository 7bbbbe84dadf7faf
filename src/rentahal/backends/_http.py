"""HTTP helpers shared by the backends: the one place that talks to aiohttp and maps its errors."""

from __future__ import annotations

import json as jsonlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from rentahal.backends.base import HttpClient
from rentahal.errors import (
    WorkerBadResponse,
    WorkerError,
    WorkerRateLimited,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnavailable,
)

#: A multipart field: plain text, or ``(filename, content, content_type)`` for a file.
FormField = str | tuple[str, bytes, str]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A worker's answer, read in full (no library type leaves this module)."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive
    content: bytes
    reason_phrase: str = ""
    charset: str | None = None

    @property
    def text(self) -> str:
        """The body decoded with the declared charset (UTF-8 when none), never raising."""
        try:
            return self.content.decode(self.charset or "utf-8", errors="replace")
        except LookupError:  # an unknown charset name
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` when it is not JSON."""
        return jsonlib.loads(self.content)


def _snippet(response: HttpResponse) -> str:
    text = response.text[:200].replace("\n", " ")
    return text or response.reason_phrase


def check_status(response: HttpResponse, worker: str) -> None:
    """Raise the error type that matches a non-2xx answer."""
    code = response.status_code
    if code < 300:
        return
    if code == 429:
        raise WorkerRateLimited(
            f"worker {worker} is rate limiting (429)", worker=worker, status=code
        )
    if 400 <= code < 500:
        raise WorkerRejected(
            f"worker {worker} rejected the query ({code}): {_snippet(response)}",
            worker=worker,
            status=code,
        )
    raise WorkerUnavailable(
        f"worker {worker} answered {code}: {_snippet(response)}", worker=worker, status=code
    )


def _form(fields: Mapping[str, FormField]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        if isinstance(value, str):
            form.add_field(name, value)
        else:
            filename, content, content_type = value
            form.add_field(name, content, filename=filename, content_type=content_type)
    return form


def _body(json: Any, data: bytes | None, form: Mapping[str, FormField] | None) -> dict[str, Any]:
    if form is not None:
        return {"data": _form(form)}
    if data is not None:
        return {"data": data}
    if json is not None:
        return {"json": json}
    return {}


def _unreachable(worker: str, exc: BaseException) -> WorkerUnavailable:
    return WorkerUnavailable(f"worker {worker} unreachable: {type(exc).__name__}", worker=worker)


def _timed_out(worker: str, timeout_s: float) -> WorkerTimeout:
    return WorkerTimeout(f"worker {worker} timed out after {timeout_s:g}s", worker=worker)


async def _read(response: aiohttp.ClientResponse) -> HttpResponse:
    content = await response.read()
    return HttpResponse(
        response.status, response.headers, content, response.reason or "", response.charset
    )


async def request(
    client: HttpClient,
    method: str,
    url: str,
    *,
    worker: str,
    timeout_s: float,
    json: Any = None,
    data: bytes | None = None,
    form: Mapping[str, FormField] | None = None,
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = False,
) -> HttpResponse:
    """Send one request and read the whole answer within ``timeout_s``.

    Transport errors and non-2xx answers become :mod:`rentahal.errors` types.
    ``form`` is sent as multipart; redirects are followed only when asked.
    """
    try:
        async with client.request(
            method,
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=follow_redirects,
            **_body(json, data, form),
        ) as raw:
            response = await _read(raw)
    except TimeoutError as exc:  # aiohttp's timeouts all derive from it
        raise _timed_out(worker, timeout_s) from exc
    except aiohttp.ClientError as exc:
        raise _unreachable(worker, exc) from exc
    check_status(response, worker)
    return response


def parse_json(response: HttpResponse, worker: str) -> Any:
    """The JSON body, or ``WorkerBadResponse`` naming what came instead."""
    try:
        return response.json()
    except ValueError as exc:
        kind = response.headers.get("content-type", "unknown content")
        raise WorkerBadResponse(
            f"worker {worker} answered {kind} that is not valid JSON", worker=worker
        ) from exc


def require(data: Any, path: tuple[str | int, ...], worker: str) -> Any:
    """``data[path[0]][path[1]]...`` or ``WorkerBadResponse`` naming the missing field."""
    node = data
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError) as exc:
            where = ".".join(str(p) for p in path)
            raise WorkerBadResponse(
                f"worker {worker} answer lacks field {where}", worker=worker
            ) from exc
    return node


async def probe_status(
    client: HttpClient,
    url: str,
    *,
    worker: str,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> int:
    """GET ``url`` and return its status; an HTTP error status is returned, not raised.

    Raises ``WorkerUnavailable`` / ``WorkerTimeout`` only when no answer came.
    """
    try:
        response = await request(
            client, "GET", url, worker=worker, timeout_s=timeout_s, headers=headers
        )
    except WorkerError as exc:
        if exc.status is None:
            raise
        return exc.status
    return response.status_code


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def service_url(address: str) -> str:
    """``address`` (scheme already stripped by ``AIWorker``) with a guessed scheme.

    Hosted APIs are addressed by bare host name (``api.anthropic.com``) and speak
    HTTPS; self-hosted servers carry a port (``gpu1:11434``). So: ``https`` when
    the host has no port (or port 443) and is not loopback, otherwise ``http``.
    """
    host = address.split("/", 1)[0]
    port = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else ""
    secure = port == "443" or (not port and host not in _LOOPBACK_HOSTS)
    return f"{'https' if secure else 'http'}://{address}"


class HttpStream:
    """An answer whose body the caller reads: line by line, or all at once."""

    def __init__(self, raw: aiohttp.ClientResponse, worker: str) -> None:
        self._raw = raw
        self._worker = worker
        self.status_code: int = raw.status
        self.headers: Mapping[str, str] = raw.headers

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Each line of the body, without its line ending."""
        charset = self._raw.charset or "utf-8"
        lines = aiter(self._raw.content)
        while True:
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                return
            except (ValueError, HttpProcessingError) as exc:  # a line past aiohttp's buffer
                raise WorkerBadResponse(
                    f"worker {self._worker} streamed a line too long to buffer",
                    worker=self._worker,
                ) from exc
            yield line.decode(charset, errors="replace").rstrip("\r\n")

    async def aread(self) -> HttpResponse:
        """The rest of the body, as a complete answer."""
        return await _read(self._raw)


@asynccontextmanager
async def stream(
    client: HttpClient,
    method: str,
    url: str,
    *,
    worker: str,
    timeout_s: float,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[HttpStream]:
    """Like :func:`request`, but the body is read by the caller (``aiter_lines``).

    ``timeout_s`` limits the connect and each wait for data, not the whole answer.
    Errors while reading the body are translated too: a timeout becomes
    ``WorkerTimeout``, a connection closed mid-body ``WorkerBadResponse``
    (the answer is truncated), any other transport error ``WorkerUnavailable``.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    answering = False

    def fail(exc: BaseException) -> NoReturn:
        if isinstance(exc, TimeoutError):
            raise _timed_out(worker, timeout_s) from exc
        if answering and isinstance(
            exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)
        ):
            raise WorkerBadResponse(
                f"worker {worker} closed the connection mid-answer", worker=worker
            ) from exc
        raise _unreachable(worker, exc) from exc

    try:
        async with client.request(
            method, url, json=json, headers=headers, timeout=timeout, allow_redirects=False
        ) as raw:
            if raw.status >= 300:
                check_status(await _read(raw), worker)
            answering = True
            yield HttpStream(raw, worker)
    except (TimeoutError, aiohttp.ClientError) as exc:
        fail(exc)


def pick_model(model_name: str, models: list[str], default: str | None) -> str | None:
    """The query's model, else the worker's first listed model, else ``default``."""
    return model_name or (models[0] if models else None) or default


def strip_data_uri(b64: str) -> str:
    """``data:image/png;base64,XXXX`` -> ``XXXX``; plain base64 is returned as is."""
    if b64.startswith("data:") and "," in b64:
        return b64.split(",", 1)[1]
    return b64


async def list_model_ids(
    client: HttpClient, url: str, *, headers: dict[str, str], worker: str, timeout_s: float
) -> list[str]:
    """The ``data[].id`` list of an OpenAI-style ``GET .../v1/models`` answer."""
    response = await request(
        client, "GET", url, headers=headers, worker=worker, timeout_s=timeout_s
    )
    entries = require(parse_json(response, worker), ("data",), worker)
    if not isinstance(entries, list):
        raise WorkerBadResponse(f"worker {worker} answered data that is not a list", worker=worker)
    return [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
