"""The original RENT-A-HAL worker protocol: ``POST /predict`` answering ``{"response"}``."""

from __future__ import annotations

from rentahal.backends._http import parse_json, request, require
from rentahal.backends.base import HttpClient, WorkerReply
from rentahal.errors import WorkerBadResponse, WorkerRejected, WorkerUnavailable
from rentahal.models import AIWorker, Query


class PredictBackend:
    """Chat and vision on original worker nodes (and the reference worker)."""

    protocol = "predict"

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        payload: dict[str, object] = {
            "prompt": query.prompt,
            "type": query.query_type,
            "model_type": query.model_type,
            "model_name": query.model_name,
        }
        if query.image:
            payload["image"] = query.image
        url = f"{worker.base_url}/predict"
        try:
            response = await request(
                client,
                "POST",
                url,
                json=payload,
                worker=worker.name,
                timeout_s=timeout_s,
                follow_redirects=True,
            )
        except WorkerRejected as exc:
            # Original workers only route ``/predict/``; a 404/405 on the bare path
            # means "try the slash form", anything else is the query's fault.
            if exc.status not in (404, 405):
                raise
            response = await request(
                client, "POST", url + "/", json=payload, worker=worker.name, timeout_s=timeout_s
            )
        text = require(parse_json(response, worker.name), ("response",), worker.name)
        if not isinstance(text, str):
            raise WorkerBadResponse(f"worker {worker.name} answered a non-string response")
        return WorkerReply(text, "text")

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        try:
            response = await request(
                client, "GET", f"{worker.base_url}/health", worker=worker.name, timeout_s=timeout_s
            )
        except (WorkerRejected, WorkerUnavailable) as exc:
            if exc.status is None:
                raise
            return exc.status
        return response.status_code

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        return []
