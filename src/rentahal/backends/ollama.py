"""Ollama's native API: ``POST /api/chat`` (whole or streamed), health by ``GET /api/tags``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from rentahal.backends._http import (
    parse_json,
    pick_model,
    probe_status,
    request,
    require,
    stream,
    strip_data_uri,
)
from rentahal.backends.base import HttpClient, WorkerReply
from rentahal.errors import WorkerBadResponse, WorkerUnavailable
from rentahal.models import AIWorker, Query


class OllamaBackend:
    """Chat and vision on an Ollama server.

    The model is the query's ``model_name``, else the worker's first listed
    model, else ``default_model``. ``stream_chat`` is an extra public method.
    """

    protocol = "ollama"

    def __init__(self, default_model: str = "llama3") -> None:
        self.default_model = default_model

    def payload(self, worker: AIWorker, query: Query) -> dict[str, Any]:
        """The ``/api/chat`` body for ``query`` on ``worker``."""
        message: dict[str, Any] = {"role": "user", "content": query.prompt}
        if query.image:
            # Ollama wants bare base64, never a data URI.
            message["images"] = [strip_data_uri(query.image)]
        return {
            "model": pick_model(query.model_name, worker.models, self.default_model),
            "messages": [message],
            "stream": False,
        }

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        response = await request(
            client,
            "POST",
            f"{worker.base_url}/api/chat",
            json=self.payload(worker, query),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        text = require(parse_json(response, worker.name), ("message", "content"), worker.name)
        if not isinstance(text, str):
            raise WorkerBadResponse(
                f"worker {worker.name} answered a non-string message.content", worker=worker.name
            )
        return WorkerReply(text, "text")

    async def stream_chat(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> AsyncIterator[str]:
        """Yield the answer's content deltas as they arrive (NDJSON, ``stream: true``).

        A stream that ends before a ``"done": true`` line raises
        ``WorkerBadResponse`` after the deltas that did arrive were yielded.
        ``timeout_s`` limits each wait for data, not the whole answer.
        """
        async with stream(
            client,
            "POST",
            f"{worker.base_url}/api/chat",
            json={**self.payload(worker, query), "stream": True},
            worker=worker.name,
            timeout_s=timeout_s,
        ) as response:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                chunk = _chunk(line, worker.name)
                message = chunk.get("message")
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str) and content:
                    yield content
                if chunk.get("done") is True:
                    return
        raise WorkerBadResponse(
            f"worker {worker.name} ended the stream before done", worker=worker.name
        )

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        return await probe_status(
            client, f"{worker.base_url}/api/tags", worker=worker.name, timeout_s=timeout_s
        )

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        response = await request(
            client, "GET", f"{worker.base_url}/api/tags", worker=worker.name, timeout_s=timeout_s
        )
        models = require(parse_json(response, worker.name), ("models",), worker.name)
        if not isinstance(models, list):
            raise WorkerBadResponse(
                f"worker {worker.name} answered models that is not a list", worker=worker.name
            )
        return [m["name"] for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]


def _chunk(line: str, worker: str) -> dict[str, Any]:
    """One NDJSON line of a streamed chat; an ``error`` line raises."""
    try:
        chunk = json.loads(line)
    except ValueError as exc:
        raise WorkerBadResponse(
            f"worker {worker} streamed a line that is not valid JSON", worker=worker
        ) from exc
    if not isinstance(chunk, dict):
        raise WorkerBadResponse(f"worker {worker} streamed a non-object line", worker=worker)
    if chunk.get("error"):
        # The worker's own text stays out of the user's error (it may quote anything).
        raise WorkerUnavailable(f"worker {worker} failed mid-stream", worker=worker)
    return chunk
