"""Admission of model calls: counts them, bounds their concurrency, adds simulated latency."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rentahal.worker.engines.base import Engine
from rentahal.worker.settings import WorkerSettings


class Gate:
    """Every model call passes here; ``/stats`` reports what it saw.

    ``max_in_flight_seen`` is measured at arrival, before the semaphore, so it shows
    how many calls a client sent at once, not how many the worker let through.
    """

    def __init__(self, latency_ms: float = 0.0, max_concurrency: int = 0) -> None:
        self._latency_s = latency_ms / 1000.0
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None
        self.requests_total = 0
        self.in_flight = 0
        self.max_in_flight_seen = 0

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a slot for one model call, after the simulated latency has passed."""
        self.requests_total += 1
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            async with self._semaphore or contextlib.nullcontext():
                if self._latency_s > 0:
                    await asyncio.sleep(self._latency_s)
                yield
        finally:
            self.in_flight -= 1

    def snapshot(self) -> dict[str, int]:
        """The counters as ``/stats`` shows them."""
        return {
            "requests_total": self.requests_total,
            "in_flight": self.in_flight,
            "max_in_flight_seen": self.max_in_flight_seen,
        }


@dataclass(slots=True)
class WorkerState:
    """What the routes need, kept on ``app.state.worker`` for the app's lifetime."""

    settings: WorkerSettings
    engine: Engine
    gate: Gate
