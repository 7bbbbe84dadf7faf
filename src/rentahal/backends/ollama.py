"""Ollama's native API: ``POST /api/chat`` (not streamed), health by ``GET /api/tags``."""

from __future__ import annotations

from typing import Any

from rentahal.backends._http import (
    parse_json,
    pick_model,
    probe_status,
    request,
    require,
    strip_data_uri,
)
from rentahal.backends.base import HttpClient, WorkerReply
from rentahal.errors import WorkerBadResponse
from rentahal.models import AIWorker, Query


class OllamaBackend:
    """Chat and vision on an Ollama server.

    The model is the query's ``model_name``, else the worker's first listed
    model, else ``default_model``.
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
