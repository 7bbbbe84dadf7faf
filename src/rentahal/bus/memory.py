"""The in-process bus of the embedded deployment."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import defaultdict
from collections.abc import Hashable
from typing import Any

from rentahal.bus.base import JobFilter, JobReserver, MessageHandler
from rentahal.bus.fair import FairClock, Tag, Weight, job_cost, unit_weight
from rentahal.models import Job

logger = logging.getLogger(__name__)


class _Queue:
    """One queue: waiting jobs in fair order, and the tags of waiting and taken jobs."""

    __slots__ = ("changed", "clock", "jobs", "order", "tags")

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}  # waiting jobs
        self.order: list[tuple[float, int, str]] = []  # (start, seq, job_id), ascending
        self.tags: dict[str, Tag] = {}  # waiting and taken (until acked)
        self.clock = FairClock()
        self.changed = asyncio.Event()

    def file(self, job: Job, tag: Tag) -> None:
        self.jobs[job.job_id] = job
        self.tags[job.job_id] = tag
        bisect.insort(self.order, (*tag.key, job.job_id))

    def unfile(self, job_id: str) -> tuple[Job, Tag] | None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return None
        tag = self.tags[job_id]
        index = bisect.bisect_left(self.order, (*tag.key, job_id))
        del self.order[index]
        return job, tag


# Most jobs one take_batch answers.
BATCH_TAKES = 8


class MemoryBus:
    """Fair-ordered queues with change events; channels as direct callbacks.

    ``weight`` gives each job's user its share of a queue (see
    :mod:`rentahal.bus.fair`); by default every user has the same.
    """

    def __init__(self, *, weight: Weight = unit_weight) -> None:
        self._weight = weight
        self._queues: defaultdict[str, _Queue] = defaultdict(_Queue)
        self._handlers: defaultdict[str, list[MessageHandler]] = defaultdict(list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for q in self._queues.values():
            q.changed.set()

    async def enqueue(self, queue: str, job: Job) -> None:
        q = self._queues[queue]
        old = q.unfile(job.job_id)
        if old is not None:
            q.clock.withdrawn(old[1])
        q.file(job, q.clock.stamp(job.user_guid, job_cost(self._weight, job)))
        q.changed.set()

    def _first_acceptable(self, q: _Queue, accept: JobFilter | None) -> Job | None:
        """Take the first job in fair order that ``accept`` takes.

        A :class:`KeyedJobFilter` is asked once per key: the scan is synchronous,
        so a key refused once stays refused for the rest of it.
        """
        key_of = getattr(accept, "scan_key", None)
        refused: set[Hashable] = set()
        for _start, _seq, job_id in q.order:
            job = q.jobs[job_id]
            key = key_of(job) if key_of is not None else None
            if key is not None and key in refused:
                continue
            if accept is None or accept(job):
                q.unfile(job_id)
                q.clock.served(q.tags[job_id])
                return job
            if key is not None:
                refused.add(key)
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

    async def take_batch(
        self,
        queue: str,
        *,
        accept: JobFilter | None = None,
        reserve: JobReserver | None = None,
        timeout_s: float = 1.0,
    ) -> list[Job]:
        """:meth:`take`, then with ``reserve`` the next jobs in fair order that it holds a
        worker for, up to :data:`BATCH_TAKES` in all: a consume loop then starts them in
        one turn of the event loop rather than one turn each."""
        job = await self.take(queue, accept=accept, timeout_s=timeout_s)
        if job is None:
            return []
        jobs = [job]
        # The first job's worker is held before any other: the next in fair order
        # must not take the slot it needs.
        if reserve is None or not reserve.reserve(job):
            return jobs
        q = self._queues[queue]

        def held(candidate: Job) -> bool:
            return (accept is None or accept(candidate)) and reserve.reserve(candidate)

        while len(jobs) < BATCH_TAKES:
            more = self._first_acceptable(q, held)
            if more is None:
                break
            jobs.append(more)
        return jobs

    def wake(self, queue: str) -> None:
        self._queues[queue].changed.set()

    async def ack(self, queue: str, job_id: str) -> None:
        q = self._queues[queue]
        if job_id not in q.jobs:
            q.tags.pop(job_id, None)

    async def requeue(self, queue: str, job: Job) -> None:
        """Hand a taken job back at its place in the fair order (it keeps its tag)."""
        q = self._queues[queue]
        tag = q.tags.get(job.job_id)
        if tag is None or job.job_id in q.jobs:
            await self.enqueue(queue, job)
            return
        q.clock.refile(tag)
        q.file(job, tag)
        q.changed.set()

    async def remove(self, queue: str, job_id: str) -> Job | None:
        q = self._queues[queue]
        found = q.unfile(job_id)
        if found is None:
            return None
        job, tag = found
        del q.tags[job_id]
        q.clock.withdrawn(tag)
        return job

    async def waiting(self, queue: str) -> list[Job]:
        q = self._queues[queue]
        return [q.jobs[job_id] for _start, _seq, job_id in q.order]

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
