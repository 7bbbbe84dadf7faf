"""Vision input: image preprocessing (off the event loop) and chunked uploads."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
    owner: int
    address: str
    chunks: dict[int, str] = field(default_factory=dict)
    size: int = 0
    touched: float = field(default_factory=time.monotonic)


class ChunkAssembler:
    """Collects ``vision_chunk`` slices per (user, image_id), in any order, within budgets.

    Bounded per user (``max_uploads_per_user``), per client address
    (``max_uploads_per_address``) and in all (``max_upload_bytes_total``
    characters held). An upload belongs to the socket that started it: it is
    freed when that socket closes (:meth:`drop_owner`) or after
    ``upload_idle_timeout_s`` without a chunk (:meth:`expire`, run on a timer).
    """

    def __init__(self, settings: ChunkingSettings) -> None:
        self.settings = settings
        self._uploads: dict[tuple[str, str], _Upload] = {}
        self.bytes = 0

    def _drop(self, key: tuple[str, str]) -> None:
        upload = self._uploads.pop(key, None)
        if upload is not None:
            self.bytes -= upload.size

    def expire(self) -> int:
        """Free uploads that received no chunk for ``upload_idle_timeout_s``; how many."""
        limit = time.monotonic() - self.settings.upload_idle_timeout_s
        stale = [k for k, u in self._uploads.items() if u.touched < limit]
        for key in stale:
            self._drop(key)
        return len(stale)

    def drop_owner(self, owner: int) -> int:
        """Free the uploads started by socket ``owner`` (it closed); how many."""
        mine = [k for k, u in self._uploads.items() if u.owner == owner]
        for key in mine:
            self._drop(key)
        return len(mine)

    def _start(self, key: tuple[str, str], total: int, owner: int, address: str) -> _Upload:
        s = self.settings
        if self.pending(key[0]) >= s.max_uploads_per_user:
            raise QueryRejected(f"Too many uploads in progress (limit {s.max_uploads_per_user})")
        cap = s.max_uploads_per_address
        if address and sum(1 for u in self._uploads.values() if u.address == address) >= cap:
            raise QueryRejected(f"Too many uploads in progress from your address (limit {cap})")
        upload = self._uploads[key] = _Upload(total=total, owner=owner, address=address)
        return upload

    def add(
        self,
        user_guid: str,
        image_id: str,
        chunk_id: int,
        total: int,
        data: str,
        *,
        owner: int = 0,
        address: str = "",
    ) -> str | None:
        """Store one chunk; the whole base64 string once the last one arrived, else None.

        ``owner`` is the socket sending it, ``address`` its client address.
        """
        s = self.settings
        if not (1 <= total <= s.max_chunks):
            raise QueryRejected(f"total_chunks must be between 1 and {s.max_chunks}")
        if not (0 <= chunk_id < total):
            raise QueryRejected(f"chunk_id must be between 0 and {total - 1}")
        if len(data) > s.chunk_size:
            raise QueryRejected(f"chunk_data larger than chunk_size ({s.chunk_size} characters)")
        if not image_id or len(image_id) > 128:
            raise QueryRejected("image_id must be a non-empty string of at most 128 characters")
        self.expire()
        key = (user_guid, image_id)
        upload = self._uploads.get(key)
        if upload is None:
            upload = self._start(key, total, owner, address)
        elif upload.total != total:
            raise QueryRejected("total_chunks changed during the upload")
        grow = len(data) - len(upload.chunks.get(chunk_id, ""))
        if upload.size + grow > s.max_image_bytes * 4 // 3 + 4:
            self._drop(key)
            raise QueryRejected("Image too large")
        if self.bytes + grow > s.max_upload_bytes_total:
            if not upload.chunks:
                self._drop(key)
            raise QueryRejected("The server is busy receiving uploads; please try again shortly")
        upload.chunks[chunk_id] = data
        upload.size += grow
        self.bytes += grow
        upload.touched = time.monotonic()
        if len(upload.chunks) < upload.total:
            return None
        self._drop(key)
        return "".join(upload.chunks[i] for i in range(upload.total))

    def pending(self, user_guid: str) -> int:
        """Uploads of ``user_guid`` still in progress."""
        return sum(1 for (guid, _i) in self._uploads if guid == user_guid)

    @property
    def in_progress(self) -> int:
        """Uploads in progress (all users)."""
        return len(self._uploads)


class UploadGauges(Collector):
    """``rentahal_uploads_in_progress`` and ``rentahal_upload_bytes`` for ``/metrics``."""

    def __init__(self, assembler: ChunkAssembler) -> None:
        self.assembler = assembler

    def collect(self) -> Iterator[Metric]:
        """The two gauges, read at scrape time."""
        count = GaugeMetricFamily("rentahal_uploads_in_progress", "Chunked uploads in progress")
        count.add_metric([], self.assembler.in_progress)
        held = GaugeMetricFamily("rentahal_upload_bytes", "Characters held by chunked uploads")
        held.add_metric([], self.assembler.bytes)
        yield count
        yield held
