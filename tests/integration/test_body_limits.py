"""Request bodies are limited per route while they arrive: 413, and the broker's memory stays flat.

The broker runs as its own process (``rentahal serve``) so its resident memory
can be measured apart from the test's.
"""

from __future__ import annotations

import asyncio
import io
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.broker_process import BrokerProcess
from tests.support.client import WSClient
from tests.support.raw_http import post_streaming
from tests.support.servers import demo_worker_records

MIB = 1024 * 1024
BIG = 50 * MIB
RSS_GROWTH_LIMIT = 20 * MIB

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def proc(
    tmp_path_factory: pytest.TempPathFactory, ref_workers: dict[str, str]
) -> Iterator[BrokerProcess]:
    """One broker process with the reference workers."""
    home = Path(tmp_path_factory.mktemp("limits"))
    with BrokerProcess(home, demo_worker_records(ref_workers)) as started:
        yield started


@pytest.fixture(scope="module")
def api_key(proc: BrokerProcess) -> str:
    """An API key of a user of ``proc``."""

    async def create() -> str:
        client = await WSClient.connect(proc.ws_url)
        try:
            await client.connect_sequence()
            await client.send({"type": "create_api_key", "name": "limits"})
            return (await client.expect("api_key_created"))["key"]  # type: ignore[no-any-return]
        finally:
            await client.close()

    return asyncio.run(create())


class PeakRss:
    """Samples a process's RSS every 10 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, proc: BrokerProcess) -> None:
        self.proc = proc
        self.peak = proc.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.proc.rss_bytes())


async def _warm_up(proc: BrokerProcess, path: str) -> None:
    """One small refused request first, so lazy imports do not count as growth."""
    await post_streaming("127.0.0.1", proc.port, path, 1024 * 1024, chunked=True)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_unauthenticated_50_mib_body_gets_413(
    proc: BrokerProcess, path: str, chunked: bool
) -> None:
    await _warm_up(proc, path)
    before = proc.rss_bytes()
    with PeakRss(proc) as rss:
        answer = await post_streaming("127.0.0.1", proc.port, path, BIG, chunked=chunked)
    growth = rss.peak - before
    print(f"{path} chunked={chunked}: RSS {before / MIB:.1f} -> peak {rss.peak / MIB:.1f} MiB")
    assert answer.status == 413, answer
    body = answer.json()
    if path.startswith("/v1/"):
        assert body["error"]["code"] == "request_too_large"
    else:
        assert body["code"] == "request_too_large"
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / MIB:.1f} MiB"


async def test_invalid_key_is_unauthenticated(proc: BrokerProcess) -> None:
    headers = {"Authorization": "Bearer rah-not-a-key"}
    answer = await post_streaming(
        "127.0.0.1", proc.port, "/v1/chat/completions", BIG, chunked=True, headers=headers
    )
    assert answer.status == 413, proc.log_tail()
    assert answer.sent_bytes < 10 * MIB, "the body was refused while it arrived"


async def test_authenticated_chat_limit_is_prompt_sized(proc: BrokerProcess, api_key: str) -> None:
    await _warm_up(proc, "/api/chat")
    before = proc.rss_bytes()
    headers = {"Authorization": f"Bearer {api_key}"}
    with PeakRss(proc) as rss:
        answer = await post_streaming(
            "127.0.0.1", proc.port, "/api/chat", BIG, chunked=True, headers=headers
        )
    assert answer.status == 413
    assert rss.peak - before < RSS_GROWTH_LIMIT


def _noisy_png_b64(side: int = 360) -> str:
    import base64

    rng = random.Random(7)
    image = Image.frombytes(
        "RGB", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def test_image_routes_take_images_from_key_holders(proc: BrokerProcess, api_key: str) -> None:
    image = _noisy_png_b64()
    assert len(image) > 256 * 1024  # above the chat and anonymous limits
    body = {"prompt": "what is it?", "image": image}
    async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
        answered = await client.post(
            "/api/vision", json=body, headers={"Authorization": f"Bearer {api_key}"}
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()  # an answer (its shape is the legacy route's)
        chat = await client.post(
            "/api/chat", json=body, headers={"Authorization": f"Bearer {api_key}"}
        )
        assert chat.status_code == 413
        anonymous = await client.post("/api/vision", json=body)
        assert anonymous.status_code == 413
        small = await client.post("/api/chat", json={"prompt": "hi"})
        assert small.status_code == 401  # small bodies still learn what is wrong
