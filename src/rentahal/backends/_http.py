"""HTTP helpers shared by the backends: one place that maps httpx errors to ours."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from rentahal.errors import (
    WorkerBadResponse,
    WorkerError,
    WorkerRateLimited,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnavailable,
)


def _snippet(response: httpx.Response) -> str:
    text = response.text[:200].replace("\n", " ")
    return text or response.reason_phrase


def check_status(response: httpx.Response, worker: str) -> None:
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


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    worker: str,
    timeout_s: float,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request; translate transport errors and non-2xx answers."""
    try:
        response = await client.request(method, url, timeout=timeout_s, **kwargs)
    except httpx.TimeoutException as exc:
        message = f"worker {worker} timed out after {timeout_s:g}s"
        raise WorkerTimeout(message, worker=worker) from exc
    except httpx.HTTPError as exc:
        raise WorkerUnavailable(
            f"worker {worker} unreachable: {type(exc).__name__}", worker=worker
        ) from exc
    check_status(response, worker)
    return response


def parse_json(response: httpx.Response, worker: str) -> Any:
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
    client: httpx.AsyncClient,
    url: str,
    *,
    worker: str,
    timeout_s: float,
    **kwargs: Any,
) -> int:
    """GET ``url`` and return its status; an HTTP error status is returned, not raised.

    Raises ``WorkerUnavailable`` / ``WorkerTimeout`` only when no answer came.
    """
    try:
        response = await request(client, "GET", url, worker=worker, timeout_s=timeout_s, **kwargs)
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


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    worker: str,
    timeout_s: float,
    **kwargs: Any,
) -> AsyncIterator[httpx.Response]:
    """Like :func:`request`, but the body is read by the caller (``aiter_lines``).

    Errors while reading the body are translated too: a timeout becomes
    ``WorkerTimeout``, a connection closed mid-body ``WorkerBadResponse``
    (the answer is truncated), any other transport error ``WorkerUnavailable``.
    """
    answering = False
    try:
        async with client.stream(method, url, timeout=timeout_s, **kwargs) as response:
            if response.status_code >= 300:
                await response.aread()
                check_status(response, worker)
            answering = True
            yield response
    except httpx.TimeoutException as exc:
        message = f"worker {worker} timed out after {timeout_s:g}s"
        raise WorkerTimeout(message, worker=worker) from exc
    except httpx.RemoteProtocolError as exc:
        if not answering:
            raise WorkerUnavailable(
                f"worker {worker} unreachable: {type(exc).__name__}", worker=worker
            ) from exc
        raise WorkerBadResponse(
            f"worker {worker} closed the connection mid-answer", worker=worker
        ) from exc
    except httpx.HTTPError as exc:
        raise WorkerUnavailable(
            f"worker {worker} unreachable: {type(exc).__name__}", worker=worker
        ) from exc


def pick_model(model_name: str, models: list[str], default: str | None) -> str | None:
    """The query's model, else the worker's first listed model, else ``default``."""
    return model_name or (models[0] if models else None) or default


def strip_data_uri(b64: str) -> str:
    """``data:image/png;base64,XXXX`` -> ``XXXX``; plain base64 is returned as is."""
    if b64.startswith("data:") and "," in b64:
        return b64.split(",", 1)[1]
    return b64
