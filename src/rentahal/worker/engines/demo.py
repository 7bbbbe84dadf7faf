"""The demo engine: deterministic, honest stand-ins that need no model.

Chat echoes and analyses the prompt, vision reports real image properties,
imagine draws a prompt-seeded picture, speech uses espeak-ng (or a tone) and
transcription only says what audio it received. Every text says it is a demo.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import wave
from collections.abc import Sequence

from rentahal.worker.engines._canvas import render_png
from rentahal.worker.engines._voice import espeak_wav, find_espeak, tone_wav
from rentahal.worker.engines.base import ModelCard, Turn
from rentahal.worker.errors import InputError
from rentahal.worker.media import ImageFacts, inspect_image

DEMO_MODELS = (
    ModelCard("demo-chat", "chat"),
    ModelCard("demo-vision", "vision"),
    ModelCard("demo-imagine", "imagine"),
    ModelCard("demo-speech", "speech"),
)
_ECHO_CHARS = 400


def describe_image(facts: ImageFacts) -> str:
    """One sentence of real facts about an image, e.g. ``640x480 RGB PNG``."""
    colours = ", ".join(f"{hex_} ({share:g}%)" for hex_, share in facts.colours)
    text = f"a {facts.width}x{facts.height} {facts.mode} {facts.format} image"
    return f"{text}; dominant colours: {colours}" if colours else text


def _chat_text(prompt: str, model: str, history: Sequence[Turn]) -> str:
    words = prompt.split()
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    echo = prompt if len(prompt) <= _ECHO_CHARS else prompt[:_ECHO_CHARS] + "..."
    parts = [
        f"[demo chat] {model or 'demo-chat'} is a demo engine, not a language model.",
        f'You wrote {len(words)} words ({len(prompt)} characters): "{echo}".',
    ]
    if len(words) > 1:
        parts.append("Backwards: " + " ".join(reversed(words[:40])) + ".")
    if history:
        parts.append(f"The conversation had {len(history)} earlier messages.")
    parts.append(f"Prompt digest {digest}.")
    return " ".join(parts)


def _wav_details(audio: bytes) -> str:
    try:
        with wave.open(io.BytesIO(audio)) as reader:
            frames, rate, channels = (
                reader.getnframes(),
                reader.getframerate(),
                reader.getnchannels(),
            )
    except (wave.Error, EOFError):
        return ""
    seconds = frames / rate if rate else 0.0
    layout = "mono" if channels == 1 else f"{channels} channels"
    return f" ({seconds:.2f} s, {rate} Hz {layout})"


class DemoEngine:
    """Deterministic answers derived from the input, each labelled as demo output."""

    name = "demo"

    def __init__(self, espeak: str | None = None, *, use_espeak: bool = True) -> None:
        self._espeak = (espeak or find_espeak()) if use_espeak else None

    async def chat(
        self,
        prompt: str,
        model: str,
        images: Sequence[bytes] = (),
        history: Sequence[Turn] = (),
    ) -> str:
        """Echo and analyse ``prompt``; describe each image with real Pillow facts."""
        if not images:
            if not prompt.strip():
                raise InputError("prompt is empty")
            return _chat_text(prompt, model, history)
        descriptions = []
        for number, data in enumerate(images, start=1):
            facts = await asyncio.to_thread(inspect_image, data)
            descriptions.append(f"image {number} is {describe_image(facts)}")
        question = f' Question: "{prompt.strip()[:_ECHO_CHARS]}".' if prompt.strip() else ""
        return (
            f"[demo vision] {model or 'demo-vision'} cannot see, but Pillow reports: "
            + "; ".join(descriptions)
            + "."
            + question
        )

    async def imagine(self, prompt: str, width: int, height: int, seed: int) -> bytes:
        """A prompt-seeded gradient with shapes and the prompt drawn on, as PNG."""
        if not prompt.strip():
            raise InputError("prompt is empty")
        return await asyncio.to_thread(render_png, prompt, width, height, seed)

    async def transcribe(self, audio: bytes, audio_format: str, model: str) -> str:
        """Say what audio arrived; the demo recognises no speech."""
        details = _wav_details(audio) if audio_format == "WAV" else ""
        return f"[demo transcription] received {len(audio)} bytes of {audio_format} audio{details}"

    async def speak(self, text: str, voice: str) -> bytes:
        """``text`` as WAV: espeak-ng when available, else one beep per word."""
        if not text.strip():
            raise InputError("text to speak is empty")
        if self._espeak:
            return await espeak_wav(text, voice, self._espeak)
        return await asyncio.to_thread(tone_wav, text)

    async def models(self) -> list[ModelCard]:
        """The four demo models."""
        return list(DEMO_MODELS)
