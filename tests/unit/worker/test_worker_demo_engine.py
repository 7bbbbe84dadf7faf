"""The demo engine: deterministic, labelled, and truthful about its inputs."""

from __future__ import annotations

import io
import wave

import pytest
from PIL import Image

from rentahal.worker.engines import DemoEngine, Turn
from rentahal.worker.engines._voice import espeak_voice, find_espeak, tone_wav
from rentahal.worker.errors import InputError


@pytest.fixture
def engine() -> DemoEngine:
    return DemoEngine()


async def test_chat_is_labelled_deterministic_and_derived_from_the_prompt(
    engine: DemoEngine,
) -> None:
    first = await engine.chat("the quick brown fox", "demo-chat")
    assert first.startswith("[demo chat]")
    assert '"the quick brown fox"' in first
    assert "fox brown quick the" in first
    assert first == await engine.chat("the quick brown fox", "demo-chat")
    assert first != await engine.chat("the slow brown fox", "demo-chat")


async def test_chat_mentions_history_and_rejects_empty_prompts(engine: DemoEngine) -> None:
    text = await engine.chat("and now?", "m", history=[Turn("user", "hi"), Turn("assistant", "yo")])
    assert "2 earlier messages" in text
    with pytest.raises(InputError, match="prompt is empty"):
        await engine.chat("  ", "demo-chat")


async def test_vision_reports_real_image_properties(engine: DemoEngine) -> None:
    image = Image.new("RGB", (640, 480), (255, 0, 0))
    image.paste((0, 0, 255), (480, 0, 640, 480))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = await engine.chat("what is this?", "demo-vision", [buffer.getvalue()])
    assert text.startswith("[demo vision]")
    assert "640x480 RGB PNG" in text
    assert "#ff0000 (75%)" in text
    assert "#0000ff (25%)" in text
    assert "what is this?" in text


async def test_imagine_is_a_deterministic_png_of_the_requested_size(engine: DemoEngine) -> None:
    png = await engine.imagine("a lighthouse at dusk", 320, 200, -1)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (320, 200)
        colours = image.convert("RGB").getcolors(maxcolors=320 * 200) or []
        assert len(colours) > 50  # a picture, not a flat fill
    assert png == await engine.imagine("a lighthouse at dusk", 320, 200, -1)
    assert png != await engine.imagine("a lighthouse at dawn", 320, 200, -1)
    assert png != await engine.imagine("a lighthouse at dusk", 320, 200, 7)


def _frames(wav_bytes: bytes) -> int:
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        assert reader.getsampwidth() == 2
        assert reader.getnchannels() == 1
        frames: int = reader.getnframes()
        assert len(reader.readframes(frames)) == frames * 2
        return frames


async def test_speak_with_espeak_gives_a_valid_wav(engine: DemoEngine) -> None:
    assert find_espeak() is not None, "espeak-ng not found: `make test` installs it"
    wav_bytes = await engine.speak("Hello from the reference worker.", "alloy")
    assert _frames(wav_bytes) > 10_000


async def test_speak_without_espeak_gives_a_tone_wav() -> None:
    engine = DemoEngine(use_espeak=False)
    wav_bytes = await engine.speak("two words", "alloy")
    assert _frames(wav_bytes) > 1_000
    assert tone_wav("two words") == wav_bytes


def test_voice_names_map_to_espeak_voices() -> None:
    assert espeak_voice("alloy") == "en"
    assert espeak_voice("de") == "de"
    assert espeak_voice("en-us") == "en-us"
    assert espeak_voice("--rm -rf") == "en"


async def test_speak_rejects_empty_text(engine: DemoEngine) -> None:
    with pytest.raises(InputError, match="empty"):
        await engine.speak("   ", "alloy")


async def test_transcribe_is_an_honest_demo(engine: DemoEngine) -> None:
    wav_bytes = tone_wav("one")
    text = await engine.transcribe(wav_bytes, "WAV", "demo-speech")
    assert text.startswith(f"[demo transcription] received {len(wav_bytes)} bytes of WAV audio")
    assert "16000 Hz mono" in text
    assert await engine.transcribe(b"OggS....", "OGG", "x") == (
        "[demo transcription] received 8 bytes of OGG audio"
    )


async def test_models(engine: DemoEngine) -> None:
    names = [card.name for card in await engine.models()]
    assert names == ["demo-chat", "demo-vision", "demo-imagine", "demo-speech"]
