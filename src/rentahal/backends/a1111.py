"""AUTOMATIC1111 Stable Diffusion WebUI (started with ``--api``): ``POST /sdapi/v1/txt2img``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rentahal.backends._http import parse_json, probe_status, request, require, strip_data_uri
from rentahal.backends.base import HttpClient, WorkerReply
from rentahal.errors import ConfigError, WorkerBadResponse
from rentahal.models import AIWorker, Query

#: The original broker's txt2img payload, minus the prompt.
DEFAULT_TXT2IMG: dict[str, Any] = {
    "negative_prompt": "",
    "steps": 50,
    "sampler_name": "Euler a",
    "cfg_scale": 7,
    "width": 512,
    "height": 512,
    "seed": -1,
}


def _checked(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(options) - set(DEFAULT_TXT2IMG)
    if unknown:
        known = ", ".join(sorted(DEFAULT_TXT2IMG))
        raise ConfigError(f"{where}: unknown txt2img option(s) {sorted(unknown)}; known: {known}")
    return dict(options)


class A1111Backend:
    """Imagine queries on a Stable Diffusion WebUI.

    ``options`` overrides keys of :data:`DEFAULT_TXT2IMG` for every worker
    (e.g. ``{"steps": 20}``); ``worker_options`` maps a worker *name* to further
    overrides for that worker only. Unknown keys raise ``ConfigError``.

    When the query names a model the worker lists in ``AIWorker.models``, the
    request asks A1111 to use that checkpoint for this one image
    (``override_settings.sd_model_checkpoint``); otherwise the loaded one is used.
    """

    protocol = "a1111"

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        worker_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.options = _checked(options or {}, "a1111 options")
        self.worker_options = {
            name: _checked(opts, f"a1111 options of worker {name}")
            for name, opts in (worker_options or {}).items()
        }

    def payload(self, worker: AIWorker, query: Query) -> dict[str, Any]:
        """The txt2img body for ``query`` on ``worker``."""
        body: dict[str, Any] = {"prompt": query.prompt, **DEFAULT_TXT2IMG, **self.options}
        body.update(self.worker_options.get(worker.name, {}))
        if query.model_name and query.model_name in worker.models:
            body["override_settings"] = {"sd_model_checkpoint": query.model_name}
        return body

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        response = await request(
            client,
            "POST",
            f"{worker.base_url}/sdapi/v1/txt2img",
            json=self.payload(worker, query),
            worker=worker.name,
            timeout_s=timeout_s,
        )
        image = require(parse_json(response, worker.name), ("images", 0), worker.name)
        if not isinstance(image, str) or not image:
            raise WorkerBadResponse(
                f"worker {worker.name} answered an empty or non-string image", worker=worker.name
            )
        return WorkerReply(strip_data_uri(image), "image")

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        # A1111 has no /health; /sdapi/v1/options is cheap and only served with --api.
        return await probe_status(
            client, f"{worker.base_url}/sdapi/v1/options", worker=worker.name, timeout_s=timeout_s
        )

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        response = await request(
            client,
            "GET",
            f"{worker.base_url}/sdapi/v1/sd-models",
            worker=worker.name,
            timeout_s=timeout_s,
        )
        entries = parse_json(response, worker.name)
        if not isinstance(entries, list):
            raise WorkerBadResponse(
                f"worker {worker.name} answered sd-models that is not a list", worker=worker.name
            )
        names: list[str] = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            name = entry.get("model_name") or entry.get("title")
            if isinstance(name, str) and name:
                names.append(name)
        return names
