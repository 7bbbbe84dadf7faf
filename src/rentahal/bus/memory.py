"""The in-process bus of the embedded deployment."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from rentahal.bus.base import JobFilter, MessageHandler
from rentahal.models import Job

logger = logging.getLogger(__name__)


class _Queue:
    __slots__ = ("changed", "jobs")

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}  # insertion-ordered: the queue order
        self.changed = asyncio.Event()


class MemoryBus:
    """Queues as ordered dicts with change events; channels as direct callbacks."""

    def __init__(self) -> None:
        self._queues: defaultdict[str, _Queue] = defaultdict(_Queue)
        self._handlers: defaultdict[str, list[MessageHandler]] = defaultdict(list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for q in self._queues.values():
            q.changed.set()

    async def enqueue(self, queue: str, job: Job) -> None:
        q = self._queues[queue]
        q.jobs[job.job_id] = job
        q.changed.set()

    def _first_acceptable(self, q: _Queue, accept: JobFilter | None) -> Job | None:
        for job in q.jobs.values():
            if accept is None or accept(job):
                del q.jobs[job.job_id]
                return job
        return None

    async def take(
        self, queue: str, *, accept: JobFilter | None = None, timeout_s: float = 1.0
    ) -> Job | None:
        q = self._queues[queue]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            q.changed.clear()
            job = self._first_acceptable(q, accept)
            if job is not None:
                return job
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await q.changed.wait()
            except TimeoutError:
                return None

    def wake(self, queue: str) -> None:
        self._queues[queue].changed.set()

    async def ack(self, queue: str, job_id: str) -> None:
        return None

    async def requeue(self, queue: str, job: Job) -> None:
        q = self._queues[queue]
        q.jobs = {job.job_id: job, **q.jobs}
        q.changed.set()

    async def remove(self, queue: str, job_id: str) -> Job | None:
        return self._queues[queue].jobs.pop(job_id, None)

    async def waiting(self, queue: str) -> list[Job]:
        return list(self._queues[queue].jobs.values())

    async def depth(self, queue: str) -> int:
        return len(self._queues[queue].jobs)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        for handler in list(self._handlers.get(channel, ())):
            try:
                await handler(message)
            except Exception:
                logger.exception("handler of channel %s failed", channel)

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        self._handlers[channel].append(handler)
