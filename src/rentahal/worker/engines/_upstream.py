"""One place that turns httpx errors and upstream answers into worker errors."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from rentahal.worker.errors import UpstreamError, UpstreamTimeout

logger = logging.getLogger(__name__)


def upstream_timeout(read_s: float) -> httpx.Timeout:
    """The timeout used for upstream calls: 5 s to connect, ``read_s`` to answer."""
    return httpx.Timeout(read_s, connect=5.0)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict):
            error = error.get("message")
        if error:
            return str(error)[:300]
    return str(body)[:200]


async def call(
    client: httpx.AsyncClient, method: str, url: str, *, upstream: str, **kwargs: Any
) -> httpx.Response:
    """Send one request upstream; 4xx keeps its status, the rest becomes 502/504."""
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"{upstream} at {url} did not answer in time") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"{upstream} at {url} is unreachable ({type(exc).__name__})") from exc
    if response.status_code >= 400:
        status = response.status_code if 400 <= response.status_code < 500 else 502
        logger.info("%s answered %s for %s", upstream, response.status_code, url)
        raise UpstreamError(
            f"{upstream} answered {response.status_code}: {_message(response)}", status=status
        )
    return response


def json_field(response: httpx.Response, *path: str | int, upstream: str) -> Any:
    """``body[path[0]][path[1]]...`` of a JSON answer, or ``UpstreamError`` naming the gap."""
    try:
        node: Any = response.json()
    except ValueError:
        raise UpstreamError(f"{upstream} answered something that is not JSON") from None
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            where = ".".join(str(part) for part in path)
            raise UpstreamError(f"{upstream} answer lacks {where}") from None
    return node
