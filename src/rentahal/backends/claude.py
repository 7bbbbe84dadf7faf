"""Anthropic's Messages API (``POST /v1/messages``), as the original ``[Claude]`` section."""

from __future__ import annotations

from typing import Any

from rentahal.backends._http import (
    list_model_ids,
    parse_json,
    pick_model,
    probe_status,
    request,
    require,
    service_url,
    strip_data_uri,
)
from rentahal.backends.base import HttpClient, WorkerReply
from rentahal.errors import WorkerBadResponse
from rentahal.models import AIWorker, Query

ANTHROPIC_VERSION = "2023-06-01"

# Base64 openings of the image formats the Messages API accepts.
_MEDIA_TYPES = {"iVBORw0KGgo": "image/png", "R0lGOD": "image/gif", "UklGR": "image/webp"}


def _media_type(b64: str) -> str:
    # Vision preprocessing sends JPEG; sniff only so a PNG passed through is not mislabelled.
    for opening, media_type in _MEDIA_TYPES.items():
        if b64.startswith(opening):
            return media_type
    return "image/jpeg"


def _urls(worker: AIWorker) -> tuple[str, str]:
    """``(base, endpoint)``: the address is either a full endpoint URL or ``host[:port]``.

    ``base`` is where ``/v1/models`` lives: the endpoint without ``/v1/messages``
    (so a gateway's path prefix is kept), else the host's root.
    """
    url = service_url(worker.address)
    scheme, rest = url.split("://", 1)
    if "/" not in rest:
        return url, f"{url}/v1/messages"
    if url.endswith("/v1/messages"):
        return url.removesuffix("/v1/messages"), url
    return f"{scheme}://{rest.split('/', 1)[0]}", url


def _headers(worker: AIWorker) -> dict[str, str]:
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if worker.api_key:
        headers["x-api-key"] = worker.api_key
    return headers


class ClaudeBackend:
    """Chat and vision on Claude.

    ``AIWorker.address`` is the ``[Claude] endpoint`` (``api.anthropic.com/v1/messages``,
    scheme optional) or ``host[:port]``, which gets the path ``/v1/messages``.
    The model is the query's ``model_name``, else the worker's first listed
    model, else ``default_model``; answers are limited to ``max_tokens``.
    """

    protocol = "claude"

    def __init__(
        self, default_model: str = "claude-3-haiku-20240307", max_tokens: int = 300
    ) -> None:
        self.default_model = default_model
        self.max_tokens = max_tokens

    def payload(self, worker: AIWorker, query: Query) -> dict[str, Any]:
        """The Messages API body for ``query`` on ``worker``."""
        content: str | list[dict[str, Any]] = query.prompt
        if query.image:
            data = strip_data_uri(query.image)
            content = [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": _media_type(data), "data": data},
                },
                {"type": "text", "text": query.prompt},
            ]
        return {
            "model": pick_model(query.model_name, worker.models, self.default_model),
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
        }

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        _, endpoint = _urls(worker)
        response = await request(
            client,
            "POST",
            endpoint,
            json=self.payload(worker, query),
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        blocks = require(parse_json(response, worker.name), ("content",), worker.name)
        if isinstance(blocks, list):
            # content[0] is the text unless the model put e.g. a thinking block first.
            for block in blocks:
                if isinstance(block, dict) and block.get("type", "text") == "text":
                    text = block.get("text")
                    if isinstance(text, str):
                        return WorkerReply(text, "text")
        raise WorkerBadResponse(
            f"worker {worker.name} answer lacks a text block in content", worker=worker.name
        )

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        # GET /v1/models is free; a completion would be billed.
        base, _ = _urls(worker)
        return await probe_status(
            client,
            f"{base}/v1/models",
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        base, _ = _urls(worker)
        return await list_model_ids(
            client,
            f"{base}/v1/models",
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )
