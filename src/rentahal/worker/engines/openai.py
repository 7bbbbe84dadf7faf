"""The openai engine: everything forwarded to an OpenAI-compatible server."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx

from rentahal.worker.engines._upstream import call, json_field
from rentahal.worker.engines.base import ModelCard, Turn
from rentahal.worker.errors import UpstreamError
from rentahal.worker.media import image_mime, sniff_audio

UPSTREAM = "OpenAI-compatible server"
_EXTENSIONS = {"WAV": "wav", "OGG": "ogg", "WebM": "webm", "MP3": "mp3", "FLAC": "flac"}


def _kind(model_id: str) -> ModelCard:
    lowered = model_id.lower()
    if any(word in lowered for word in ("dall-e", "diffusion", "sdxl", "flux", "image")):
        return ModelCard(model_id, "imagine")
    if any(word in lowered for word in ("whisper", "tts", "speech", "audio")):
        return ModelCard(model_id, "speech")
    if any(word in lowered for word in ("vision", "llava", "-vl", "4o")):
        return ModelCard(model_id, "vision")
    return ModelCard(model_id, "chat")


class OpenAIEngine:
    """Forwards to ``base_url`` (without ``/v1``) with an optional bearer key."""

    name = "openai"

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_key: str | None) -> None:
        self._client = client
        base = base_url.rstrip("/")
        self._base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self._base_url}{path}"
        return await call(
            self._client, "POST", url, headers=self._headers, upstream=UPSTREAM, **kwargs
        )

    async def _model_or_first(self, model: str, kind: str) -> str:
        if model:
            return model
        cards = await self.models()
        preferred = [card.name for card in cards if card.kind == kind] or [c.name for c in cards]
        if not preferred:
            raise UpstreamError(f"{UPSTREAM} at {self._base_url} lists no models")
        return preferred[0]

    async def chat(
        self,
        prompt: str,
        model: str,
        images: Sequence[bytes] = (),
        history: Sequence[Turn] = (),
    ) -> str:
        """One non-streaming ``/v1/chat/completions``; images go as data URIs."""
        messages: list[dict[str, Any]] = [{"role": t.role, "content": t.text} for t in history]
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
            for image in images:
                url = f"data:{image_mime(image)};base64," + base64.b64encode(image).decode("ascii")
                parts.append({"type": "image_url", "image_url": {"url": url}})
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": prompt})
        kind = "vision" if images else "chat"
        payload = {"model": await self._model_or_first(model, kind), "messages": messages}
        response = await self._post("/v1/chat/completions", json=payload)
        content = json_field(response, "choices", 0, "message", "content", upstream=UPSTREAM)
        if not isinstance(content, str):
            raise UpstreamError(f"{UPSTREAM} answered a non-text message content")
        return content

    async def imagine(self, prompt: str, width: int, height: int, seed: int) -> bytes:
        """``/v1/images/generations`` as ``b64_json``; the seed is not part of that API."""
        payload = {
            "prompt": prompt,
            "model": await self._model_or_first("", "imagine"),
            "n": 1,
            "size": f"{width}x{height}",
            "response_format": "b64_json",
        }
        response = await self._post("/v1/images/generations", json=payload)
        encoded = json_field(response, "data", 0, "b64_json", upstream=UPSTREAM)
        try:
            return base64.b64decode(encoded, validate=True)
        except (ValueError, TypeError):
            raise UpstreamError(f"{UPSTREAM} answered an image that is not base64") from None

    async def transcribe(self, audio: bytes, audio_format: str, model: str) -> str:
        """``/v1/audio/transcriptions`` with the audio as a multipart file."""
        name = f"audio.{_EXTENSIONS.get(audio_format, 'bin')}"
        files = {"file": (name, audio, "application/octet-stream")}
        data = {"model": await self._model_or_first(model, "speech")}
        response = await self._post("/v1/audio/transcriptions", files=files, data=data)
        text = json_field(response, "text", upstream=UPSTREAM)
        if not isinstance(text, str):
            raise UpstreamError(f"{UPSTREAM} answered a non-text transcription")
        return text

    async def speak(self, text: str, voice: str) -> bytes:
        """``/v1/audio/speech`` asked for WAV."""
        payload = {
            "model": await self._model_or_first("", "speech"),
            "input": text,
            "voice": voice or "alloy",
            "response_format": "wav",
        }
        response = await self._post("/v1/audio/speech", json=payload)
        if sniff_audio(response.content) != "WAV":
            raise UpstreamError(f"{UPSTREAM} answered speech that is not WAV audio")
        return response.content

    async def models(self) -> list[ModelCard]:
        """The ids of ``/v1/models``, classified by name."""
        response = await call(
            self._client,
            "GET",
            f"{self._base_url}/v1/models",
            headers=self._headers,
            upstream=UPSTREAM,
        )
        entries = json_field(response, "data", upstream=UPSTREAM)
        return [
            _kind(entry["id"])
            for entry in (entries if isinstance(entries, list) else [])
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
        ]
