"""Real servers for tests: the broker in a uvicorn thread, reference workers as processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from rentahal.admission import Admission
from rentahal.app import create_app
from rentahal.broker import Broker
from rentahal.config import Settings, load_settings
from rentahal.demo import start_worker_process, wait_healthy
from rentahal.models import AIWorker
from rentahal.realms.workers import WorkerRegistry
from rentahal.storage.database import Storage


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadServer:
    """A uvicorn server for ``app`` running in a background thread on a free port."""

    def __init__(self, app: FastAPI, port: int | None = None, **config: Any) -> None:
        self.app = app
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                ws_ping_interval=None,
                lifespan="on",
                **config,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self.port}"


class BrokerServer(ThreadServer):
    """The broker app on a free port with a SQLite file in ``tmp``."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        super().__init__(
            create_app(settings),
            port=port,
            ws_max_size=4 * (settings.websocket.max_message_size + 16 * 1024),
            ws_per_message_deflate=settings.websocket.per_message_deflate,
            proxy_headers=False,  # as `rentahal serve`: the app judges X-Forwarded-*
        )
        self.settings = settings

    @property
    def broker(self) -> Broker:
        """The live broker (read state only; it belongs to the server thread's loop)."""
        return self.app.state.broker  # type: ignore[no-any-return]

    @property
    def storage(self) -> Storage:
        """The broker's storage (tests read and seed the database through it)."""
        return self.broker._storage

    @property
    def registry(self) -> WorkerRegistry:
        """The broker's worker registry (tests read live worker state)."""
        return self.broker._registry

    @property
    def admission(self) -> Admission:
        """The broker's admission of HTTP callers (tests read how many hold a share)."""
        return self.broker._admission

    @property
    def ws_url(self) -> str:
        """The WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def call(self, coro: Any, timeout_s: float = 10.0) -> Any:
        """Run a coroutine on the broker's loop and return its result."""
        loop: asyncio.AbstractEventLoop = self.app.state.loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout_s)


def seed(settings: Settings, workers: list[AIWorker]) -> None:
    """Create the database and register ``workers`` before the broker starts."""

    async def run() -> None:
        storage = Storage(settings.database.url)
        try:
            await storage.migrate()
            for worker in workers:
                await storage.save_worker(worker)
        finally:
            await storage.close()

    # In a thread of its own, so async tests (with a running loop) can call it too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def broker_settings(tmp: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test broker: SQLite in ``tmp``, fast health checks off by default."""
    overrides: dict[str, dict[str, Any]] = {
        "database": {"database_name": str(tmp / "llm_broker.db")},
        "workers": {
            "health_check_interval": 3600,
            "circuit_probe_interval_s": 3600,
            "retry_backoff_s": 0.01,
        },
        "broker": {"realms_file": str(tmp / "realms.yml")},
        # Every test client comes from 127.0.0.1: per-address shares are tested on their own.
        "performance": {"max_connections_per_address": 10_000},
        "queue": {"max_queued_per_address": 1_000_000},
        "chunking": {"max_uploads_per_address": 10_000},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(None, environ={}, overrides=overrides)


@contextlib.contextmanager
def reference_worker(*, latency_ms: float = 0.0, max_concurrency: int = 0) -> Iterator[str]:
    """A reference worker process on a free port; yields ``host:port``."""
    port = free_port()
    proc = start_worker_process(port, latency_ms=latency_ms, max_concurrency=max_concurrency)
    address = f"127.0.0.1:{port}"
    try:
        wait_healthy(address, proc)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def worker_stats(address: str) -> dict[str, Any]:
    """The reference worker's ``/stats``."""
    return httpx.get(f"http://{address}/stats", timeout=5).json()  # type: ignore[no-any-return]


def demo_worker_records(addresses: dict[str, str], max_concurrency: int = 4) -> list[AIWorker]:
    """Worker records for reference workers keyed by type (chat, vision, imagine, speech)."""
    protocol = {"chat": "predict", "vision": "predict", "imagine": "a1111", "speech": "openai"}
    return [
        AIWorker(
            name=f"ref-{wtype}",
            address=address,
            type=wtype,  # type: ignore[arg-type]
            protocol=protocol[wtype],
            max_concurrency=max_concurrency,
        )
        for wtype, address in addresses.items()
    ]
