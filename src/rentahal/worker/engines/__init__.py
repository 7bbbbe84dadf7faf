"""Engines that answer the worker's endpoints, one module each."""

from __future__ import annotations

import httpx

from rentahal.worker.engines.base import Engine, ModelCard, Turn
from rentahal.worker.engines.demo import DemoEngine
from rentahal.worker.engines.ollama import OllamaEngine
from rentahal.worker.engines.openai import OpenAIEngine
from rentahal.worker.settings import WorkerSettings


def build_engine(settings: WorkerSettings, client: httpx.AsyncClient) -> Engine:
    """The engine ``settings.engine`` names, using the shared ``client`` for upstream calls."""
    if settings.engine == "ollama":
        return OllamaEngine(client, settings.ollama_url)
    if settings.engine == "openai":
        return OpenAIEngine(client, settings.openai_url, settings.openai_api_key)
    return DemoEngine()


__all__ = [
    "DemoEngine",
    "Engine",
    "ModelCard",
    "OllamaEngine",
    "OpenAIEngine",
    "Turn",
    "build_engine",
]
