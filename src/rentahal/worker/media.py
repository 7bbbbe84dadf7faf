"""Decoding and sniffing of the media clients send: base64, images, audio.

The functions that touch Pillow are synchronous; callers run them in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from rentahal.worker.errors import InputError

MAX_IMAGE_PIXELS = 40_000_000
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,]*)?,", re.IGNORECASE)


def decode_base64(data: str, what: str = "image") -> bytes:
    """Bytes of a base64 string, with or without a ``data:...;base64,`` prefix."""
    if not isinstance(data, str) or not data.strip():
        raise InputError(f"{what} is empty")
    text = data.strip()
    match = _DATA_URI.match(text)
    if match:
        if ";base64" not in text[: match.end()].lower():
            raise InputError(f"{what} data URI is not base64 encoded")
        text = text[match.end() :]
    elif text.lower().startswith(("http://", "https://")):
        raise InputError(f"{what} must be base64 or a data: URI; this worker fetches no URLs")
    text = "".join(text.split())
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None
    if not raw:
        raise InputError(f"{what} is empty")
    return raw


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What Pillow found in an image: format, size, mode and dominant colours."""

    format: str
    width: int
    height: int
    mode: str
    colours: tuple[tuple[str, float], ...]
    """Up to three ``(#rrggbb, percent)`` pairs, most frequent first."""


def open_image(data: bytes) -> Image.Image:
    """A fully loaded Pillow image, or ``InputError`` when ``data`` is not one."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise InputError(
                f"image is {image.width}x{image.height}, more than {MAX_IMAGE_PIXELS} pixels"
            )
        image.load()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError("image is not a decodable image (PNG, JPEG, GIF, WebP, ...)") from None
    return image


def dominant_colours(image: Image.Image, count: int = 3) -> tuple[tuple[str, float], ...]:
    """The ``count`` most frequent colours as ``(#rrggbb, percent)``, by median cut."""
    rgba = image.convert("RGBA")
    # Transparent pixels count as the white they are usually shown on.
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    scale = max(rgb.width, rgb.height) / 128
    if scale > 1:
        size = (max(1, round(rgb.width / scale)), max(1, round(rgb.height / scale)))
        rgb = rgb.resize(size, Image.Resampling.NEAREST)
    quantized = rgb.quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    palette = quantized.getpalette() or []
    counts = sorted(quantized.getcolors() or [], key=lambda item: (-item[0], item[1]))
    total = rgb.width * rgb.height
    result: list[tuple[str, float]] = []
    for pixels, index in counts[:count]:
        assert isinstance(index, int)  # a palette image's colours are indices
        red, green, blue = palette[index * 3 : index * 3 + 3]
        result.append((f"#{red:02x}{green:02x}{blue:02x}", round(100.0 * pixels / total, 1)))
    return tuple(result)


def inspect_image(data: bytes) -> ImageFacts:
    """Decode ``data`` and describe it; ``InputError`` when it is not an image."""
    image = open_image(data)
    return ImageFacts(
        format=image.format or "unknown",
        width=image.width,
        height=image.height,
        mode=image.mode,
        colours=_safe_colours(image),
    )


def _safe_colours(image: Image.Image) -> tuple[tuple[str, float], ...]:
    try:
        return dominant_colours(image)
    except (ValueError, OSError):  # exotic modes (e.g. 16-bit) Pillow cannot convert
        return ()


def image_mime(data: bytes) -> str:
    """The MIME type of an image by its magic bytes (``image/png`` when unsure)."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def sniff_audio(data: bytes) -> str | None:
    """The audio container of ``data`` (``WAV``, ``OGG``, ``WebM``, ``MP3``, ``FLAC``)."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"OggS":
        return "OGG"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:3] == b"ID3":
        return "MP3"
    # An MPEG audio frame header: 11 sync bits, a valid version, layer and bitrate.
    if len(data) >= 4 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0:
        version, layer, bitrate = (data[1] >> 3) & 3, (data[1] >> 1) & 3, data[2] >> 4
        if version != 1 and layer != 0 and bitrate not in (0, 15):
            return "MP3"
    return None


def require_audio(data: bytes) -> str:
    """The format of ``data``, or ``InputError`` when it is not audio we know."""
    if not data:
        raise InputError("audio file is empty")
    kind = sniff_audio(data)
    if kind is None:
        raise InputError("file is not audio (expected WAV, OGG, WebM, MP3 or FLAC)")
    return kind


def fix_wav_sizes(data: bytes) -> bytes:
    """Patch the RIFF and ``data`` chunk sizes of a WAV written to a pipe.

    ``espeak-ng --stdout`` cannot seek back, so it leaves placeholder sizes.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    out = bytearray(data)
    struct.pack_into("<I", out, 4, len(out) - 8)
    offset = 12
    while offset + 8 <= len(out):
        chunk_id = bytes(out[offset : offset + 4])
        (size,) = struct.unpack_from("<I", out, offset + 4)
        if chunk_id == b"data":
            struct.pack_into("<I", out, offset + 4, len(out) - offset - 8)
            break
        offset += 8 + size + (size & 1)
    return bytes(out)


def check_image(data: bytes) -> None:
    """``InputError`` unless ``data`` decodes as an image."""
    open_image(data)


async def load_images(encoded: list[str]) -> list[bytes]:
    """Decode base64 images and check each one decodes (in a thread: Pillow blocks)."""
    images = []
    for number, item in enumerate(encoded, start=1):
        what = "image" if len(encoded) == 1 else f"image {number}"
        data = decode_base64(item, what)
        try:
            await asyncio.to_thread(check_image, data)
        except InputError as exc:
            raise InputError(exc.message.replace("image", what, 1)) from None
        images.append(data)
    return images
