"""Image preprocessing, chunk assembly, cost formula and job lifecycle."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from rentahal.config import ChunkingSettings, CostSettings
from rentahal.errors import QueryRejected
from rentahal.models import InvalidTransition, Job, Query, QueryState
from rentahal.storage.ledger import compute_cost
from rentahal.vision import ChunkAssembler, preprocess_image_sync


def _encode(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_cost_formula() -> None:
    assert compute_cost(0.0, CostSettings()) == 0.01
    assert compute_cost(2.5, CostSettings()) == 0.01 + 2.5 * 0.001
    assert compute_cost(1.0, CostSettings(base_cost_per_query=0, cost_per_second=2)) == 2


def test_preprocess_fits_512_and_keeps_aspect() -> None:
    out = _decode(preprocess_image_sync(_encode(Image.new("RGB", (2000, 1000))), 10**8))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (512, 256)


def test_preprocess_never_upscales() -> None:
    out = _decode(preprocess_image_sync(_encode(Image.new("RGB", (100, 50))), 10**8))
    assert out.size == (100, 50)


def test_preprocess_puts_transparency_on_white() -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    out = _decode(preprocess_image_sync(_encode(img), 10**8)).convert("RGB")
    assert all(c > 245 for c in out.getpixel((5, 5)))  # type: ignore[union-attr]


def test_preprocess_accepts_data_uri() -> None:
    data = "data:image/png;base64," + _encode(Image.new("RGB", (8, 8)))
    assert _decode(preprocess_image_sync(data, 10**8)).size == (8, 8)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("***", "not valid base64"),
        (base64.b64encode(b"GIF89a-but-not-really").decode(), "not a readable image"),
        ("", "empty image"),
    ],
)
def test_preprocess_rejects_bad_input(data: str, message: str) -> None:
    with pytest.raises(QueryRejected, match=message):
        preprocess_image_sync(data, 10**8)


def test_preprocess_rejects_oversized() -> None:
    with pytest.raises(QueryRejected, match="Image too large"):
        preprocess_image_sync("A" * 5000, 1024)


def test_chunks_in_any_order_and_namespaced() -> None:
    assembler = ChunkAssembler(ChunkingSettings(chunk_size=1024))
    assert assembler.add("u1", "img", 2, 3, "cc") is None
    assert assembler.add("u2", "img", 0, 3, "zz") is None  # another user's upload
    assert assembler.add("u1", "img", 0, 3, "aa") is None
    assert assembler.add("u1", "img", 1, 3, "bb") == "aabbcc"
    assert assembler.pending("u1") == 0 and assembler.pending("u2") == 1


def test_chunk_limits() -> None:
    assembler = ChunkAssembler(ChunkingSettings(chunk_size=1024, max_chunks=4))
    with pytest.raises(QueryRejected, match="total_chunks"):
        assembler.add("u", "i", 0, 1_000_000, "a")
    with pytest.raises(QueryRejected, match="chunk_size"):
        assembler.add("u", "i", 0, 2, "a" * 1025)
    assembler.add("u", "i", 0, 2, "a")
    with pytest.raises(QueryRejected, match="total_chunks changed"):
        assembler.add("u", "i", 1, 3, "a")


def test_job_lifecycle_refuses_bad_transitions() -> None:
    job = Job(user_guid="g", query=Query(prompt="p", query_type="chat"))
    job.move_to(QueryState.DISPATCHED)
    job.move_to(QueryState.RUNNING)
    job.move_to(QueryState.DONE)
    with pytest.raises(InvalidTransition, match="cannot go from done to running"):
        job.move_to(QueryState.RUNNING)


def test_unknown_model_type_means_worker_node() -> None:
    assert Query(prompt="p", query_type="chat", model_type="mystery").model_type == "worker_node"


def test_upload_budgets_and_freeing() -> None:
    settings = ChunkingSettings(
        chunk_size=1024, max_upload_bytes_total=3000, max_uploads_per_address=2
    )
    assembler = ChunkAssembler(settings)
    assembler.add("u1", "a", 0, 4, "x" * 1000, owner=1, address="198.51.100.7")
    assembler.add("u1", "a", 0, 4, "x" * 10, owner=1, address="198.51.100.7")  # resent smaller
    assert assembler.bytes == 10
    assembler.add("u2", "b", 0, 4, "x" * 1000, owner=2, address="198.51.100.7")
    with pytest.raises(QueryRejected, match="from your address"):
        assembler.add("u3", "c", 0, 4, "x", owner=3, address="198.51.100.7")
    assembler.add("u4", "d", 0, 4, "x" * 1000, owner=4, address="203.0.113.5")
    with pytest.raises(QueryRejected, match="busy receiving uploads"):
        assembler.add("u4", "d", 1, 4, "x" * 1000, owner=4, address="203.0.113.5")
    assert assembler.bytes == 2010
    assert assembler.drop_owner(2) == 1 and assembler.bytes == 1010
    assembler.settings = ChunkingSettings(upload_idle_timeout_s=1e-9)
    assert assembler.expire() == 2
    assert assembler.bytes == 0 and assembler.in_progress == 0
