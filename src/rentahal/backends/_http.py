"""HTTP helpers shared by the backends: one place that maps httpx errors to ours."""

from __future__ import annotations

from typing import Any

import httpx

from rentahal.errors import (
    WorkerBadResponse,
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
