"""Worker protocols: one module each, all behind :class:`~rentahal.backends.base.Backend`."""

from __future__ import annotations

from rentahal.backends.a1111 import A1111Backend
from rentahal.backends.base import Backend, HttpClient, WorkerReply
from rentahal.backends.claude import ClaudeBackend
from rentahal.backends.huggingface import HuggingFaceBackend
from rentahal.backends.ollama import OllamaBackend
from rentahal.backends.openai import OpenAIBackend
from rentahal.backends.predict import PredictBackend

_BACKENDS: dict[str, Backend] = {
    backend.protocol: backend
    for backend in (
        PredictBackend(),
        A1111Backend(),
        OllamaBackend(),
        OpenAIBackend(),
        ClaudeBackend(),
        HuggingFaceBackend(),
    )
}


def register_backend(backend: Backend) -> None:
    """Make ``backend`` available under its ``protocol`` name."""
    _BACKENDS[backend.protocol] = backend


def get_backend(protocol: str) -> Backend:
    """The backend for ``protocol``; ``KeyError`` names the known ones."""
    try:
        return _BACKENDS[protocol]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise KeyError(f"unknown protocol {protocol!r}; known: {known}") from None


__all__ = [
    "A1111Backend",
    "Backend",
    "ClaudeBackend",
    "HttpClient",
    "HuggingFaceBackend",
    "OllamaBackend",
    "OpenAIBackend",
    "PredictBackend",
    "WorkerReply",
    "get_backend",
    "register_backend",
]
