"""HTTP helpers shared by the backends: the one place that calls workers and maps the errors.

A call goes over aiohttp, or over the lean lane of :mod:`rentahal.backends.lean_http`
(see :func:`use_lean_http`); both answer the same :class:`HttpResponse` and errors.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json as jsonlib
import logging
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
import yarl
from aiohttp.http_exceptions import HttpProcessingError

from rentahal.backends.base import HttpClient
from rentahal.backends.lean_http import AnswerTooLarge, LeanAnswer, LeanHttp, LeanHttpError
from rentahal.errors import (
    WorkerBadResponse,
    WorkerError,
    WorkerRateLimited,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnavailable,
)

logger = logging.getLogger(__name__)

#: A multipart field: plain text, or ``(filename, content, content_type)`` for a file.
FormField = str | tuple[str, bytes, str]

#: ``[Workers] max_answer_bytes`` when the client was not made by :func:`limited_response_class`.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 5
_READ_CHUNK_BYTES = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


def limited_response_class(max_answer_bytes: int) -> type[aiohttp.ClientResponse]:
    """The ``response_class`` of a client whose worker answers may be at most that long."""
    return type(
        "LimitedClientResponse", (aiohttp.ClientResponse,), {"max_answer_bytes": max_answer_bytes}
    )


def answer_limit(raw: aiohttp.ClientResponse) -> int:
    """The most bytes an answer on ``raw``'s client may have."""
    return int(getattr(raw, "max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES))


def _too_large(worker: str, limit: int) -> WorkerBadResponse:
    return WorkerBadResponse(
        f"worker {worker} answer too large (over {limit} bytes)", worker=worker
    )


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
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError:
            # What orjson refuses but the standard parser reads (UTF-16/32 bodies, NaN).
            return jsonlib.loads(self.content)


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "unknown status"


def check_status(response: HttpResponse, worker: str) -> None:
    """Raise the error type that matches a non-2xx answer.

    The message names the status and its standard reason only: a worker's own
    error text may quote the prompt, another user's data or internal details,
    so it goes to the debug log, never to the user.
    """
    code = response.status_code
    if code < 300:
        return
    if logger.isEnabledFor(logging.DEBUG):  # .text decodes the whole body
        logger.debug("worker %s answered %d: %.200r", worker, code, response.text)
    if code == 429:
        raise WorkerRateLimited(
            f"worker {worker} is rate limiting (429)", worker=worker, status=code
        )
    if 400 <= code < 500:
        raise WorkerRejected(
            f"worker {worker} rejected the query ({code} {_reason(code)})",
            worker=worker,
            status=code,
        )
    raise WorkerUnavailable(
        f"worker {worker} answered {code} ({_reason(code)})", worker=worker, status=code
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


_JSON_HEADERS = {"Content-Type": "application/json"}


def _with_json_type(json: Any, headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """``headers`` plus the JSON content type when a JSON body goes with them."""
    return headers if json is None else _JSON_HEADERS | dict(headers or {})


def _body(json: Any, data: bytes | None, form: Mapping[str, FormField] | None) -> dict[str, Any]:
    if form is not None:
        return {"data": _form(form)}
    if data is not None:
        return {"data": data}
    if json is not None:
        # orjson: several times faster than the json module aiohttp would use.
        return {"data": orjson.dumps(json, option=orjson.OPT_NON_STR_KEYS)}
    return {}


def _unreachable(worker: str, exc: BaseException, kind: str = "") -> WorkerUnavailable:
    """The error of a call that got no answer; ``kind`` names how (default: the error's type)."""
    kind = kind or type(exc).__name__
    return WorkerUnavailable(f"worker {worker} unreachable: {kind}", worker=worker)


def _timed_out(worker: str, timeout_s: float) -> WorkerTimeout:
    return WorkerTimeout(f"worker {worker} timed out after {timeout_s:g}s", worker=worker)


async def _read(response: aiohttp.ClientResponse, worker: str) -> HttpResponse:
    """The whole answer, refused as soon as it is longer than :func:`answer_limit`."""
    limit = answer_limit(response)
    length = response.content_length
    if length is not None and length > limit:
        raise _too_large(worker, limit)
    if length is not None and response.headers.get("Content-Encoding") is None:
        # The length is known and within the limit: read it at once (no chunk loop).
        content = await response.read()
        if len(content) > limit:  # a peer that sends more than it declared
            raise _too_large(worker, limit)
    else:
        buffer = bytearray()
        async for chunk in response.content.iter_chunked(_READ_CHUNK_BYTES):
            buffer += chunk
            if len(buffer) > limit:
                raise _too_large(worker, limit)
        content = bytes(buffer)
    return HttpResponse(
        response.status, response.headers, content, response.reason or "", response.charset
    )


# ``request`` bounds the whole exchange with ``asyncio.timeout``; aiohttp gets no timer of
# its own (one object and one timer handle less per call). The session's default would
# apply to a call without ``timeout``, so every call passes this one.
_NO_AIOHTTP_TIMEOUT = aiohttp.ClientTimeout()


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> yarl.URL:
    """``url`` parsed once (workers are called at a few addresses, over and over)."""
    return yarl.URL(url)


def _same_origin(a: str, b: str) -> bool:
    first, second = urlsplit(a), urlsplit(b)
    return (first.scheme, first.hostname, first.port) == (
        second.scheme,
        second.hostname,
        second.port,
    )


def _redirect_target(
    status: int, headers: Mapping[str, str], url: str, method: str, worker: str
) -> str:
    """Where a redirect of ``url`` points; ``WorkerBadResponse`` unless it may be followed.

    Only redirects to the same scheme, host and port are followed (``/predict``
    -> ``/predict/``), and for other methods than GET only 307/308, which keep
    the method and body: a worker must not be able to send the broker, with the
    user's prompt, to another address.
    """
    location = headers.get("location")
    if not location:
        raise WorkerBadResponse(f"worker {worker} redirected without a location", worker=worker)
    target = urljoin(url, location)
    if not _same_origin(url, target):
        raise WorkerBadResponse(
            f"worker {worker} redirected to another address; not followed", worker=worker
        )
    if method != "GET" and status not in (307, 308):
        raise WorkerBadResponse(
            f"worker {worker} answered a {status} redirect; not followed", worker=worker
        )
    return target


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

    Transport errors and non-2xx answers become :mod:`rentahal.errors` types;
    an answer longer than the client's limit is ``WorkerBadResponse`` ("answer
    too large"). ``form`` is sent as multipart; redirects are followed only when
    asked, and only to the same address (see :func:`_redirect_target`).
    """
    body = _body(json, data, form)
    headers = _with_json_type(json, headers)
    try:
        async with asyncio.timeout(timeout_s):
            lean = _LEAN.get(client)
            if lean is not None and form is None and not lean.full:
                response = await _lean(
                    lean, client, method, url, worker, follow_redirects, body, headers
                )
            else:
                response = await _follow(
                    client, method, url, worker, follow_redirects, body, headers
                )
    except TimeoutError as exc:  # aiohttp's timeouts all derive from it
        raise _timed_out(worker, timeout_s) from exc
    except aiohttp.ClientError as exc:
        raise _unreachable(worker, exc) from exc
    check_status(response, worker)
    return response


# Sessions whose plain calls go over a LeanHttp pool (which holds their answer limit).
_LEAN: weakref.WeakKeyDictionary[HttpClient, LeanHttp] = weakref.WeakKeyDictionary()


def use_lean_http(
    client: HttpClient, max_answer_bytes: int, connect_timeout_s: float | None = None
) -> None:
    """Send ``client``'s plain calls (``http://`` to a literal IP, no form) over a
    :class:`~rentahal.backends.lean_http.LeanHttp` pool; :func:`close_http` closes both."""
    _LEAN[client] = LeanHttp(max_answer_bytes=max_answer_bytes, connect_timeout_s=connect_timeout_s)


async def close_http(client: HttpClient) -> None:
    """Close ``client`` and its lean pool, if it has one."""
    lean = _LEAN.pop(client, None)
    if lean is not None:
        await lean.close()
    await client.close()


@functools.lru_cache(maxsize=1024)
def _lean_target(url: str) -> tuple[str, int, str] | None:
    """``(ip, port, path)`` of an ``http://`` URL naming a literal IP, else ``None``."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme != "http" or not host or parts.username or parts.password:
        return None
    try:
        ipaddress.ip_address(host)
        port = parts.port or 80
    except ValueError:  # a name (resolved by aiohttp's guarded resolver) or a bad port
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not path.isascii() or not path.isprintable() or " " in path:
        return None  # aiohttp quotes it
    return host, port, path


_LEAN_METHODS = frozenset({"GET", "POST"})
_LEAN_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "User-Agent": "rentahal"}
_BAD_HEADER_CHARS = frozenset("\r\n\0")


def _lean_headers(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """The request's headers (read-only), or ``None`` when one is not plain (aiohttp then
    refuses it)."""
    return _plain_headers(tuple((headers or {}).items()))


@functools.lru_cache(maxsize=256)  # a worker's calls carry the same few headers
def _plain_headers(pairs: tuple[tuple[str, str], ...]) -> Mapping[str, str] | None:
    by_name = {name.lower(): (name, value) for name, value in _LEAN_HEADERS.items()}
    for name, value in pairs:
        if not name or _BAD_HEADER_CHARS.intersection(name + value) or ":" in name:
            return None
        if not (name + value).isascii() and not _latin1(name + value):
            return None
        if name.lower() in ("host", "content-length", "transfer-encoding"):
            return None
        by_name[name.lower()] = (name, value)
    return MappingProxyType(dict(by_name.values()))


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


async def _lean(
    lean: LeanHttp,
    client: HttpClient,
    method: str,
    url: str,
    worker: str,
    follow_redirects: bool,
    body: dict[str, Any],
    headers: Mapping[str, str] | None,
) -> HttpResponse:
    target = _lean_target(url) if method in _LEAN_METHODS else None
    plain = _lean_headers(headers)
    if target is None or plain is None:
        return await _follow(client, method, url, worker, follow_redirects, body, headers)
    host, port, path = target
    try:
        answer = await lean.request(
            host, port, method, path, plain, body.get("data", b""), lean.max_answer_bytes
        )
    except AnswerTooLarge as exc:
        raise _too_large(worker, lean.max_answer_bytes) from exc
    except LeanHttpError as exc:
        if exc.unreachable:
            raise _unreachable(worker, exc, exc.kind) from exc
        raise WorkerBadResponse(f"worker {worker} sent a malformed answer", worker=worker) from exc
    if follow_redirects and answer.status in _REDIRECTS:
        onward = _redirect_target(answer.status, answer.headers, url, method, worker)
        return await _follow(client, method, onward, worker, follow_redirects, body, headers, 1)
    return _lean_response(answer)


def _lean_response(answer: LeanAnswer) -> HttpResponse:
    content_type = answer.headers.get("content-type", "")
    charset = None
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return HttpResponse(answer.status, answer.headers, answer.content, answer.reason, charset)


async def _follow(
    client: HttpClient,
    method: str,
    url: str,
    worker: str,
    follow_redirects: bool,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
    hops_done: int = 0,
) -> HttpResponse:
    for _hop in range(hops_done, MAX_REDIRECTS + 1):
        async with client.request(
            method,
            _url(url),
            headers=headers,
            timeout=_NO_AIOHTTP_TIMEOUT,
            allow_redirects=False,
            **body,
        ) as raw:
            if not (follow_redirects and raw.status in _REDIRECTS):
                return await _read(raw, worker)
            url = _redirect_target(raw.status, raw.headers, url, method, worker)
    raise WorkerBadResponse(
        f"worker {worker} redirected more than {MAX_REDIRECTS} times", worker=worker
    )


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
        """Each line of the body, without its line ending; the whole body is capped too."""
        charset = self._raw.charset or "utf-8"
        limit = answer_limit(self._raw)
        seen = 0
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
            seen += len(line)
            if seen > limit:
                raise _too_large(self._worker, limit)
            yield line.decode(charset, errors="replace").rstrip("\r\n")

    async def aread(self) -> HttpResponse:
        """The rest of the body, as a complete answer."""
        return await _read(self._raw, self._worker)


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
            method,
            url,
            headers=_with_json_type(json, headers),
            timeout=timeout,
            allow_redirects=False,
            **_body(json, None, None),
        ) as raw:
            if raw.status >= 300:
                check_status(await _read(raw, worker), worker)
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
