"""Speech for the demo engine: espeak-ng when installed, else a generated tone."""

from __future__ import annotations

import array
import asyncio
import contextlib
import io
import logging
import math
import re
import shutil
import sys
import wave

from rentahal.worker.errors import InputError, UpstreamError
from rentahal.worker.media import fix_wav_sizes

logger = logging.getLogger(__name__)

ESPEAK_TIMEOUT_S = 30.0
_OPENAI_VOICES = {
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
}
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,8})*$")


def espeak_voice(voice: str) -> str:
    """The espeak-ng voice for ``voice``: OpenAI voice names and blanks map to English."""
    name = voice.strip().lower()
    if not name or name in _OPENAI_VOICES or not _LANGUAGE.match(name):
        return "en"
    return name


async def espeak_wav(text: str, voice: str, binary: str) -> bytes:
    """``text`` spoken by the espeak-ng ``binary``; the text goes on stdin, never argv."""
    process = await asyncio.create_subprocess_exec(
        binary,
        "--stdout",
        "--stdin",
        "-v",
        espeak_voice(voice),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(ESPEAK_TIMEOUT_S):
            stdout, stderr = await process.communicate(text.encode())
    except BaseException:
        # Timeout or cancellation: never leave the synthesizer running.
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip()
        if "voice does not exist" in message:
            raise InputError(f"unknown voice {voice!r}")
        logger.warning("espeak-ng failed with code %s: %s", process.returncode, message)
        raise UpstreamError(f"espeak-ng failed: {message or process.returncode}")
    return fix_wav_sizes(stdout)


def tone_wav(text: str, sample_rate: int = 16_000) -> bytes:
    """A short melody, one beep per word, standing in for speech when espeak-ng is absent."""
    words = text.split()[:40] or ["."]
    samples = array.array("h")
    for word in words:
        frequency = 220.0 + (sum(word.encode()) % 24) * 27.5
        beep = int(sample_rate * min(0.4, 0.06 + 0.03 * len(word)))
        for n in range(beep):
            envelope = min(1.0, n / 200, (beep - n) / 200)
            samples.append(
                int(12_000 * envelope * math.sin(2 * math.pi * frequency * n / sample_rate))
            )
        samples.extend([0] * (sample_rate // 20))
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def find_espeak() -> str | None:
    """Path of espeak-ng (or espeak) on ``PATH``."""
    return shutil.which("espeak-ng") or shutil.which("espeak")
