"""Worker protocols: one module each, all behind :class:`~rentahal.backends.base.Backend`."""

from __future__ import annotations

from rentahal.backends.base import Backend, WorkerReply
from rentahal.backends.predict import PredictBackend

_BACKENDS: dict[str, Backend] = {"predict": PredictBackend()}


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


__all__ = ["Backend", "WorkerReply", "get_backend", "register_backend"]
