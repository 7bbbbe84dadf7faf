"""QueueNotifier: coalesced ``queue_update`` broadcasts, per-job positions, queue expiry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping

from rentahal.bus.base import Bus
from rentahal.config import QueueSettings
from rentahal.models import Job, QueryState, Result
from rentahal.realms.connections import RealmConnectionManager
from rentahal.realms.processor import FinishHandler, QueryProcessor
from rentahal.realms.workers import WorkerRegistry

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.1
PERIOD_S = 1.0
ACTIVE_USERS_INTERVAL_S = 1.0  # sysops' ``active_users``: at most one push per interval


class QueueNotifier:
    """Tells clients how the queues move, at most every ``MIN_INTERVAL_S``.

    ``active_users`` goes to sysops at most every ``ACTIVE_USERS_INTERVAL_S``
    after someone connected or left (a connect storm costs one list per
    interval, not one per connect). ``queue_update`` goes to everyone when
    something changed (and at least every second while it keeps changing);
    ``queue_position`` goes to the owner
    of each waiting job whose position moved, with an ETA from recent
    processing times. Jobs waiting longer than ``queue_timeout`` fail through
    ``finish``, like any other job.
    """

    def __init__(
        self,
        settings: QueueSettings,
        bus: Bus,
        processors: Mapping[str, QueryProcessor],
        connections: RealmConnectionManager,
        registry: WorkerRegistry,
        depth: Callable[[], Awaitable[int]],
        finish: FinishHandler,
    ) -> None:
        self._settings = settings
        self._bus = bus
        self._processors = processors
        self._connections = connections
        self._registry = registry
        self._depth = depth
        self._finish = finish
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_totals: tuple[int, int] | None = None
        self._positions: dict[str, int] = {}
        self._avg_s: defaultdict[str, float] = defaultdict(lambda: 1.0)
        self._users_changed = False
        self._users_pushed_at = -ACTIVE_USERS_INTERVAL_S
        self._queue_dirty = False

    def start(self) -> None:
        """Start the loop."""
        self._task = asyncio.create_task(self._run(), name="queue-notifier")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def changed(self) -> None:
        """A queue moved: broadcast soon."""
        self._queue_dirty = True
        self._event.set()

    def users_changed(self) -> None:
        """Someone connected or left: tell sysops soon (coalesced)."""
        self._users_changed = True
        self._event.set()

    def forget(self, job_id: str) -> None:
        """A job left the queue for good."""
        self._positions.pop(job_id, None)

    def observe(self, result: Result) -> None:
        """Fold a finished job's time into the ETA estimate of its query type."""
        if result.status == "done":
            avg = self._avg_s[result.query_type]
            self._avg_s[result.query_type] = 0.8 * avg + 0.2 * result.processing_time

    def totals(self, depth: int) -> tuple[int, int]:
        """``(depth, total)`` as the original client draws them (total never 0)."""
        return depth, max(1, len(self._registry.workers()))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PERIOD_S):
                    await self._event.wait()
            self._event.clear()
            queue_event, self._queue_dirty = self._queue_dirty, False
            try:
                now = time.monotonic()
                if self._users_changed and now - self._users_pushed_at >= ACTIVE_USERS_INTERVAL_S:
                    self._users_changed = False  # a change since waits for the next interval
                    self._users_pushed_at = now
                    connections = self._connections
                    connections.broadcast(
                        {"type": "active_users", "users": connections.users()}, sysops_only=True
                    )
                # One read of each queue per round serves expiry and positions.
                waiting = await self._waiting()
                if await self._expire_waiting(waiting):
                    waiting = await self._waiting()
                totals = self.totals(await self._depth())
                if queue_event or totals != self._last_totals:
                    self._last_totals = totals
                    self._connections.broadcast(
                        {"type": "queue_update", "depth": totals[0], "total": totals[1]}
                    )
                    self._send_positions(waiting)
            except Exception:
                logger.exception("queue notifier round failed")
            await asyncio.sleep(MIN_INTERVAL_S)

    async def _waiting(self) -> dict[str, list[Job]]:
        """The waiting jobs of every queue, in the order they are served."""
        return {queue: await self._bus.waiting(queue) for queue in list(self._processors)}

    def _send_positions(self, waiting: dict[str, list[Job]]) -> None:
        for queue, jobs in waiting.items():
            processor = self._processors.get(queue)
            capacity = max(1, processor.in_flight if processor is not None else 0)
            for index, job in enumerate(jobs, start=1):
                if self._positions.get(job.job_id) == index:
                    continue
                self._positions[job.job_id] = index
                eta = index * self._avg_s[job.query.query_type] / capacity
                self._connections.send_user(
                    job.user_guid,
                    {
                        "type": "queue_position",
                        "job_id": job.job_id,
                        "position": index,
                        "eta_s": round(eta, 1),
                    },
                )

    async def _expire_waiting(self, waiting: dict[str, list[Job]]) -> bool:
        """Fail the jobs that waited longer than ``queue_timeout``; True if any did."""
        limit = self._settings.queue_timeout
        now = time.time()
        expired = False
        for queue, jobs in waiting.items():
            for job in jobs:
                if now - job.submitted_at <= limit:
                    continue
                if await self._bus.remove(queue, job.job_id) is None:
                    continue
                expired = True
                job.move_to(QueryState.FAILED)
                await self._finish(
                    job,
                    Result.of(
                        job,
                        "failed",
                        error=f"No worker could take the query within {limit:g}s",
                        queue_wait=now - job.submitted_at,
                    ),
                )
        return expired
