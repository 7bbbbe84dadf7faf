"""Serving the worker app in a background thread, for embedding it (demos, tests)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn

from rentahal.worker.app import create_app
from rentahal.worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


class BackgroundWorker:
    """``create_app(settings)`` under uvicorn in a daemon thread with its own event loop.

    ``settings.port`` 0 picks a free port; :attr:`url` tells which. Use it as a
    context manager (``with`` or, off the caller's loop, ``async with``).
    """

    def __init__(self, settings: WorkerSettings, *, log_level: str = "warning") -> None:
        config = uvicorn.Config(
            create_app(settings),
            log_level=log_level,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((settings.host, settings.port))
        self.host = settings.host
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"rentahal-worker-{self.port}",
            daemon=True,
        )

    @property
    def address(self) -> str:
        """``host:port``, as an ``AIWorker.address``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    def start(self, timeout_s: float = 10.0) -> BackgroundWorker:
        """Start serving; returns once the lifespan ran and the socket accepts."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"worker on {self.address} failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"worker on {self.address} not up after {timeout_s:g}s")
            time.sleep(0.01)
        logger.debug("background worker serving on %s", self.address)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down gracefully and wait (at most ``timeout_s``) for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundWorker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> BackgroundWorker:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
