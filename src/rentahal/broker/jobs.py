"""Where each job is and whose it is: the one record behind positions, pending jobs and shares."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple

from rentahal.bus import keys
from rentahal.bus.base import Bus
from rentahal.bus.counters import RedisCounters
from rentahal.bus.redis import QUEUE_FULL, RedisBus
from rentahal.bus.state import ClusterState
from rentahal.errors import QueueFull
from rentahal.models import Job, QueryState
from rentahal.realms.processor import QueryProcessor
from rentahal.shares import LEASE_S, Shares

_ACTIVE = (QueryState.QUEUED, QueryState.DISPATCHED, QueryState.RUNNING)


class _Place(NamedTuple):
    queue: str
    user_guid: str


class JobBook:
    """The jobs of this node and their places.

    A job queued from this node is kept here (its queue and its user, not its
    image or audio) until its result is delivered, and holds one of its user's
    shares (:class:`~rentahal.shares.Shares`, cluster-wide in Redis mode) as
    long; a running job is in the processor that runs it and, cluster-wide, in
    the running-jobs map of the ``ClusterState``; a waiting job of any node is
    in its queue on the bus.
    """

    def __init__(
        self,
        bus: Bus,
        state: ClusterState,
        processors: Mapping[str, QueryProcessor],
        shares: Shares,
        *,
        distributed: bool,
    ) -> None:
        self._bus = bus
        self._state = state
        self._processors = processors
        self._shares = shares
        self._distributed = distributed
        self._queued: dict[str, _Place] = {}
        # Place in the fair order of a job just queued in one step (read once, by the
        # ``query_queued`` answer; gone when read or when the job settles).
        self._placed: dict[str, int] = {}

    async def add(self, job: Job) -> None:
        """Take a share for ``job`` and note it as queued from this node.

        ``ShareFull`` / ``QueueFull`` (nothing taken) when the user's or the
        client address's share is used up.
        """
        await self._shares.admit(job.job_id, job.user_guid)
        self._queued[job.job_id] = _Place(job.realm, job.user_guid)

    def one_step(self) -> bool:
        """Whether :meth:`add_queued` can admit and queue in one Redis step."""
        return (
            self._distributed
            and isinstance(self._bus, RedisBus)
            and isinstance(self._shares.counters, RedisCounters)
        )

    async def add_queued(self, job: Job, max_depth: int) -> int:
        """:meth:`add` and enqueue ``job``, the depth check first, in one Redis step.

        Answers the depth with ``job`` counted; ``QueueFull`` (nothing taken) when the
        queues hold ``max_depth`` jobs, ``ShareFull`` / ``QueueFull`` as :meth:`add`.
        Only when :meth:`one_step`.
        """
        assert isinstance(self._bus, RedisBus)
        caps = self._shares.caps(job.user_guid)
        self._queued[job.job_id] = _Place(job.realm, job.user_guid)
        try:
            got = await self._bus.submit(
                job.realm,
                job,
                depth_of=self.queues(),
                running_key=keys.running_key(),
                max_depth=max_depth,
                shares=caps,
                lease_s=LEASE_S,
            )
        except BaseException:
            self._queued.pop(job.job_id, None)
            raise
        if got.full is not None:
            self._queued.pop(job.job_id, None)
            if got.full == QUEUE_FULL:
                raise QueueFull("Queue is full, please try again later")
            raise self._shares.refusal(got.full, caps, job.user_guid)
        self._shares.adopt(job.job_id, caps)
        if got.position:
            self._placed[job.job_id] = got.position
        return got.depth

    async def drop(self, job_id: str) -> None:
        """Undo :meth:`add` (the job never reached its queue)."""
        self._queued.pop(job_id, None)
        await asyncio.shield(self._shares.release(job_id))

    def moved(self, job: Job) -> None:
        """``job`` was queued again in ``job.realm`` (its realm stopped or was deleted)."""
        if job.job_id in self._queued:
            self._queued[job.job_id] = _Place(job.realm, job.user_guid)

    async def settle(self, job_id: str) -> bool:
        """The job's result is out (or it was lost): free its share; whether it was ours."""
        self._placed.pop(job_id, None)
        if self._shares.holds(job_id):
            await self._shares.release(job_id)
        return self._queued.pop(job_id, None) is not None

    def queue_of(self, job_id: str) -> str | None:
        """The queue of a job this node queued and has not settled yet."""
        place = self._queued.get(job_id)
        return place.queue if place is not None else None

    def queues(self) -> list[str]:
        """Every queue of this node (realms and the legacy queue)."""
        return list(self._processors)

    async def depth(self) -> int:
        """Waiting plus running jobs, all queues (all nodes in a cluster)."""
        if self._distributed and isinstance(self._bus, RedisBus):  # one round trip
            return await self._bus.total_depth(self.queues(), keys.running_key())
        if self._distributed:  # asked at once: one round trip's wait, not one per count
            counts = await asyncio.gather(
                *(self._bus.depth(q) for q in self.queues()), self._state.running_count()
            )
            return sum(counts)
        waiting = sum([await self._bus.depth(q) for q in self.queues()])
        return waiting + sum(p.in_flight for p in list(self._processors.values()))

    async def position_of(self, job_id: str) -> int | None:
        """1-based position among waiting jobs of its queue; None when not waiting."""
        queue = self.queue_of(job_id)
        if queue is None:
            return None
        placed = self._placed.pop(job_id, None)
        if placed is not None:
            return placed
        for index, waiting in enumerate(await self._bus.waiting(queue), start=1):
            if waiting.job_id == job_id:
                return index
        return None

    async def pending(self, user_guid: str) -> list[str]:
        """Ids of the user's jobs that are waiting or running (on any node)."""
        jobs = [
            job.job_id
            for queue in self.queues()
            for job in await self._bus.waiting(queue)
            if job.user_guid == user_guid
        ]
        # A finished job stays in running_jobs until its task's callback runs.
        jobs += [job.job_id for job in self.running_of(user_guid) if job.state in _ACTIVE]
        jobs += [
            job_id
            for job_id, place in list(self._queued.items())
            if place.user_guid == user_guid
            and job_id not in jobs
            and await self._state.running(job_id)
        ]
        return jobs

    def running_here(self) -> list[Job]:
        """Every job running on this node."""
        return [
            job
            for processor in list(self._processors.values())
            for job in list(processor.running_jobs.values())
        ]

    def running_of(self, user_guid: str) -> list[Job]:
        """The user's jobs running on this node."""
        return [job for job in self.running_here() if job.user_guid == user_guid]

    async def take_waiting(self, job_id: str) -> Job | None:
        """Take a waiting job out of whichever queue holds it."""
        for queue in self.queues():
            job = await self._bus.remove(queue, job_id)
            if job is not None:
                return job
        return None

    async def take_waiting_of(self, user_guid: str) -> list[Job]:
        """Take every waiting job of ``user_guid`` out of its queue."""
        taken = []
        for queue in self.queues():
            for job in await self._bus.waiting(queue):
                if job.user_guid == user_guid and await self._bus.remove(queue, job.job_id):
                    taken.append(job)
        return taken

    async def running_where(self, job_id: str) -> tuple[str, str] | None:
        """``(node_id, user_guid)`` of a job running anywhere, or None."""
        return await self._state.running(job_id)

    def cancel_here(self, job_id: str) -> bool:
        """Cancel a job running on this node."""
        return any(p.cancel(job_id) for p in list(self._processors.values()))
