"""Registration with a broker: register, heartbeat, and unregister on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import httpx

from rentahal.worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

RETRY_MAX_S = 30.0
# What the reference worker speaks for each type of query.
PROTOCOL_OF_TYPE = {"chat": "predict", "vision": "predict", "imagine": "a1111", "speech": "openai"}


class Registrar:
    """Keeps this worker registered with ``settings.broker_url`` while it runs."""

    def __init__(self, settings: WorkerSettings, client: httpx.AsyncClient) -> None:
        assert settings.broker_url and settings.token
        self.settings = settings
        self.client = client
        self.base = settings.broker_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {settings.token}"}
        self.name = settings.name or f"{socket.gethostname()}-{settings.port}"
        self.registered = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Register (retrying) and heartbeat in the background."""
        self._task = asyncio.create_task(self._run(), name="broker-registration")

    async def _register(self) -> float:
        s = self.settings
        body: dict[str, object] = {
            "name": self.name,
            "type": s.worker_type,
            "protocol": PROTOCOL_OF_TYPE[s.worker_type],
            "max_concurrency": s.max_concurrency or 4,
        }
        if s.advertise:
            body["address"] = s.advertise
        else:
            body["port"] = s.port
        response = await self.client.post(
            f"{self.base}/api/workers/register", json=body, headers=self.headers, timeout=10
        )
        if response.status_code != 201:
            raise RuntimeError(
                f"registration refused: {response.status_code} {response.text[:200]}"
            )
        self.registered = True
        logger.info("registered with %s as %s", self.base, self.name)
        return float(response.json().get("heartbeat_s", 5.0))

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                interval = await self._register()
                delay = 1.0
                while True:
                    await asyncio.sleep(interval)
                    beat = await self.client.post(
                        f"{self.base}/api/workers/heartbeat",
                        json={"name": self.name},
                        headers=self.headers,
                        timeout=10,
                    )
                    if beat.status_code != 200:
                        logger.warning(
                            "heartbeat refused (%s); registering again", beat.status_code
                        )
                        self.registered = False
                        break
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                self.registered = False
                logger.warning("broker registration: %s; retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)

    async def close(self) -> None:
        """Stop heartbeating and unregister (best effort, bounded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.registered:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.post(
                    f"{self.base}/api/workers/unregister",
                    json={"name": self.name},
                    headers=self.headers,
                    timeout=3,
                )
