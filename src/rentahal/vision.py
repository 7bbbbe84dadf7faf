"""Vision input: image preprocessing (off the event loop) and chunked uploads."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from rentahal.config import ChunkingSettings
from rentahal.errors import QueryRejected
from rentahal.media import strip_data_uri

MAX_SIDE = 512
JPEG_QUALITY = 85
MAX_PIXELS = 64_000_000


def preprocess_image_sync(image_b64: str, max_bytes: int) -> str:
    """RGBA onto white, RGB, fit in 512x512 (never upscale), JPEG q85, base64.

    Raises ``QueryRejected`` for bad base64, data that is not an image, or
    images over ``max_bytes`` / the pixel limit.
    """
    raw_b64 = strip_data_uri(image_b64.strip())
    if len(raw_b64) > max_bytes * 4 // 3 + 4:
        raise QueryRejected(f"Image too large (limit {max_bytes // (1024 * 1024)} MiB)")
    try:
        data = base64.b64decode(raw_b64, validate=True)
    except (binascii.Error, ValueError):
        raise QueryRejected("Invalid image data: not valid base64") from None
    if not data:
        raise QueryRejected("Invalid image data: empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise QueryRejected(f"Image too large ({img.width}x{img.height} pixels)")
            img.load()
            if img.mode in ("RGBA", "LA", "P"):
                rgba = img.convert("RGBA")
                background = Image.new("RGB", rgba.size, (255, 255, 255))
                background.paste(rgba, mask=rgba.split()[3])
                out = background
            else:
                out = img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise QueryRejected("Invalid image data: not a readable image") from None
    out.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def preprocess_image(image_b64: str, max_bytes: int) -> str:
    """:func:`preprocess_image_sync` in a worker thread."""
    return await asyncio.to_thread(preprocess_image_sync, image_b64, max_bytes)


@dataclass(slots=True)
class _Upload:
    total: int
    chunks: dict[int, str] = field(default_factory=dict)
    size: int = 0
    started: float = field(default_factory=time.monotonic)


class ChunkAssembler:
    """Collects ``vision_chunk`` slices per (user, image_id), in any order, with limits."""

    def __init__(self, settings: ChunkingSettings, expiry_s: float = 300.0) -> None:
        self.settings = settings
        self.expiry_s = expiry_s
        self._uploads: dict[tuple[str, str], _Upload] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, u in self._uploads.items() if now - u.started > self.expiry_s]:
            del self._uploads[key]

    def add(
        self, user_guid: str, image_id: str, chunk_id: int, total: int, data: str
    ) -> str | None:
        """Store one chunk; the whole base64 string once the last one arrived, else None."""
        s = self.settings
        if not (1 <= total <= s.max_chunks):
            raise QueryRejected(f"total_chunks must be between 1 and {s.max_chunks}")
        if not (0 <= chunk_id < total):
            raise QueryRejected(f"chunk_id must be between 0 and {total - 1}")
        if len(data) > s.chunk_size:
            raise QueryRejected(f"chunk_data larger than chunk_size ({s.chunk_size} characters)")
        if not image_id or len(image_id) > 128:
            raise QueryRejected("image_id must be a non-empty string of at most 128 characters")
        self._expire()
        key = (user_guid, image_id)
        upload = self._uploads.get(key)
        if upload is None:
            in_progress = sum(1 for (guid, _i) in self._uploads if guid == user_guid)
            if in_progress >= s.max_uploads_per_user:
                raise QueryRejected(
                    f"Too many uploads in progress (limit {s.max_uploads_per_user})"
                )
            upload = self._uploads[key] = _Upload(total=total)
        elif upload.total != total:
            raise QueryRejected("total_chunks changed during the upload")
        if chunk_id not in upload.chunks:
            upload.size += len(data)
            if upload.size > s.max_image_bytes * 4 // 3 + 4:
                del self._uploads[key]
                raise QueryRejected("Image too large")
        upload.chunks[chunk_id] = data
        if len(upload.chunks) < upload.total:
            return None
        del self._uploads[key]
        return "".join(upload.chunks[i] for i in range(upload.total))

    def pending(self, user_guid: str) -> int:
        """Uploads of ``user_guid`` still in progress."""
        return sum(1 for (guid, _i) in self._uploads if guid == user_guid)
