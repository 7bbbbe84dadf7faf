"""Configuration of the reference worker node."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

EngineName = Literal["demo", "ollama", "openai"]


class WorkerSettings(BaseModel):
    """How a ``rentahal worker`` process listens, which engine answers and how it behaves.

    ``latency_ms`` adds simulated model time to every model call; ``max_concurrency``
    bounds parallel model calls (0 = unlimited, beyond the limit requests wait).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    engine: EngineName = "demo"
    ollama_url: str = "http://127.0.0.1:11434"
    openai_url: str = "http://127.0.0.1:8080"
    openai_api_key: str | None = None
    latency_ms: float = Field(default=0.0, ge=0.0)
    max_concurrency: int = Field(default=0, ge=0)
    upstream_timeout_s: float = Field(default=120.0, gt=0.0)
    """Read timeout for calls to the upstream Ollama/OpenAI server (connect: 5 s)."""
    broker_url: str | None = None
    """A broker to register with (needs ``token``); the worker heartbeats and unregisters."""
    token: str | None = None
    worker_type: Literal["chat", "vision", "imagine", "speech"] = "chat"
    name: str | None = None
    advertise: str | None = None
    """``host:port`` the broker should call; default: this port at the caller's address."""
