"""Hugging Face Inference API: text generation at ``POST /models/{model}``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from rentahal.backends._http import (
    parse_json,
    pick_model,
    probe_status,
    request,
    require,
    service_url,
)
from rentahal.backends.base import HttpClient, WorkerReply
from rentahal.errors import WorkerBadResponse, WorkerRejected
from rentahal.models import AIWorker, Query

INFERENCE_HOST = "api-inference.huggingface.co"


def _base(worker: AIWorker) -> str:
    # ``api-inference.huggingface.co`` (no port) becomes its https URL.
    return service_url(worker.address)


def _headers(worker: AIWorker) -> dict[str, str]:
    return {"Authorization": f"Bearer {worker.api_key}"} if worker.api_key else {}


def _model_url(base: str, model: str) -> str:
    # Model ids are ``org/name``: keep the slash, escape anything else.
    return f"{base}/models/{quote(model, safe='/')}"


class HuggingFaceBackend:
    """Text generation on the Hugging Face Inference API (or a server of its shape).

    The worker address is ``api-inference.huggingface.co`` (served over https)
    or ``host:port`` of a compatible server. The model is the query's
    ``model_name``, else the worker's first listed model, else ``default_model``;
    with none of these the query is rejected. A 503 while the model loads is
    ``WorkerUnavailable`` (retry later or elsewhere).
    """

    protocol = "huggingface"

    def __init__(self, default_model: str | None = None, max_new_tokens: int = 50) -> None:
        self.default_model = default_model
        self.max_new_tokens = max_new_tokens

    def payload(self, query: Query) -> dict[str, Any]:
        """The text-generation body for ``query``."""
        return {"inputs": query.prompt, "parameters": {"max_new_tokens": self.max_new_tokens}}

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        model = pick_model(query.model_name, worker.models, self.default_model)
        if not model:
            raise WorkerRejected(
                f"no Hugging Face model named for worker {worker.name}", worker=worker.name
            )
        response = await request(
            client,
            "POST",
            _model_url(_base(worker), model),
            json=self.payload(query),
            headers=_headers(worker),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        data = parse_json(response, worker.name)
        # The API answers ``[{"generated_text": ...}]``; some servers drop the list.
        path: tuple[str | int, ...] = (
            ("generated_text",) if isinstance(data, dict) else (0, "generated_text")
        )
        text = require(data, path, worker.name)
        if not isinstance(text, str):
            raise WorkerBadResponse(
                f"worker {worker.name} answered a non-string generated_text", worker=worker.name
            )
        return WorkerReply(text, "text")

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        base = _base(worker)
        model = pick_model("", worker.models, self.default_model)
        url = _model_url(base, model) if model else f"{base}/"
        return await probe_status(
            client, url, headers=_headers(worker), worker=worker.name, timeout_s=timeout_s
        )

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        # The Inference API has no listing of what a key may run; the sysop names models.
        return []
