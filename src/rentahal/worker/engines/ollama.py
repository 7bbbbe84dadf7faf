"""The ollama engine: chat and vision forwarded to an Ollama server's ``/api/chat``."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx

from rentahal.worker.engines._upstream import call, json_field
from rentahal.worker.engines.base import ModelCard, Turn
from rentahal.worker.errors import UnsupportedError, UpstreamError

UPSTREAM = "Ollama"


class OllamaEngine:
    """Forwards to Ollama at ``base_url`` through the app's shared ``client``."""

    name = "ollama"

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")

    async def _default_model(self) -> str:
        models = await self.models()
        if not models:
            raise UpstreamError(f"{UPSTREAM} at {self._base_url} has no models pulled")
        return models[0].name

    async def chat(
        self,
        prompt: str,
        model: str,
        images: Sequence[bytes] = (),
        history: Sequence[Turn] = (),
    ) -> str:
        """One non-streaming ``/api/chat`` call; ``model`` empty means the first model."""
        messages: list[dict[str, Any]] = [{"role": t.role, "content": t.text} for t in history]
        current: dict[str, Any] = {"role": "user", "content": prompt}
        if images:
            current["images"] = [base64.b64encode(image).decode("ascii") for image in images]
        messages.append(current)
        payload = {
            "model": model or await self._default_model(),
            "messages": messages,
            "stream": False,
        }
        response = await call(
            self._client, "POST", f"{self._base_url}/api/chat", json=payload, upstream=UPSTREAM
        )
        content = json_field(response, "message", "content", upstream=UPSTREAM)
        if not isinstance(content, str):
            raise UpstreamError(f"{UPSTREAM} answered a non-text message content")
        return content

    async def imagine(self, prompt: str, width: int, height: int, seed: int) -> bytes:
        """Ollama generates no images."""
        raise UnsupportedError(
            "the ollama engine cannot generate images; use engine openai or demo"
        )

    async def transcribe(self, audio: bytes, audio_format: str, model: str) -> str:
        """Ollama has no speech recognition."""
        raise UnsupportedError("the ollama engine cannot transcribe audio")

    async def speak(self, text: str, voice: str) -> bytes:
        """Ollama has no speech synthesis."""
        raise UnsupportedError("the ollama engine cannot synthesise speech")

    async def models(self) -> list[ModelCard]:
        """The models of ``/api/tags``; those with a CLIP projector count as vision."""
        response = await call(self._client, "GET", f"{self._base_url}/api/tags", upstream=UPSTREAM)
        entries = json_field(response, "models", upstream=UPSTREAM)
        cards = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            details = entry.get("details")
            families = (details.get("families") or []) if isinstance(details, dict) else []
            vision = "clip" in families or "mllama" in families
            cards.append(ModelCard(entry["name"], "vision" if vision else "chat"))
        return cards
