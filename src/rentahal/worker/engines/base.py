"""The interface every engine implements, and the shapes it speaks in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier message of a conversation (the current prompt is passed apart)."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A model an engine serves and the capability it is for."""

    name: str
    kind: Literal["chat", "vision", "imagine", "speech"]


class Engine(Protocol):
    """What answers the worker's endpoints: the demo engine or an upstream server.

    Methods raise :mod:`rentahal.worker.errors` types only: ``InputError`` for bad
    input, ``UnsupportedError`` for a missing capability, ``UpstreamError`` when
    the upstream server fails.
    """

    name: str

    async def chat(
        self,
        prompt: str,
        model: str,
        images: Sequence[bytes] = (),
        history: Sequence[Turn] = (),
    ) -> str:
        """Answer ``prompt`` (about ``images``, if any) after the ``history`` turns."""
        ...

    async def imagine(self, prompt: str, width: int, height: int, seed: int) -> bytes:
        """A PNG of ``width`` x ``height`` for ``prompt``; ``seed`` -1 means any."""
        ...

    async def transcribe(self, audio: bytes, audio_format: str, model: str) -> str:
        """The text spoken in ``audio`` (already sniffed as ``audio_format``)."""
        ...

    async def speak(self, text: str, voice: str) -> bytes:
        """``text`` spoken as WAV bytes."""
        ...

    async def models(self) -> list[ModelCard]:
        """The models this engine serves."""
        ...
