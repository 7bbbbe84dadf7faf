"""Jobs lost with Redis, and results that could not be handed out: found and settled.

A Redis restarted without persistence forgets every waiting job, the running
jobs hash and the mailboxes. The node that queued a job (its owner) keeps a
slim copy of it and checks it every ``check_s``: a job that is neither in its
queue (waiting or taken) nor running on some node nor in its user's mailbox
for :data:`MISSES_TO_LOST` checks in a row is lost. It is failed through
``Broker.finish`` (a failed, uncharged ledger row, an error to its user, the
user's share freed). The sweeper is handed the parts it works with
(:class:`SweeperParts`), not the Broker. Every node re-asserts its running jobs on each check, so
a job still running after the restart is not taken for lost. A job found in
the mailbox but not delivered (its pub/sub message fell into the outage) is
published again.

Results that could not be put in the mailbox (Redis down for longer than the
retries) wait in an outbox and are posted and published once Redis is back,
for at most ``OUTBOX_TTL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from rentahal.bus.state import ClusterState
from rentahal.bus.state.base import MAILBOX_TTL_S
from rentahal.errors import BrokerError, BusError
from rentahal.models import Job, QueryState, Result

logger = logging.getLogger(__name__)

MISSES_TO_LOST = 3
OUTBOX_TTL_S = float(MAILBOX_TTL_S)
OUTBOX_SIZE = 10_000
LOST_MESSAGE = "Your query was lost when the queue server restarted; please resubmit it"
UNDELIVERED_MESSAGE = "The answer could not be delivered (queue server unavailable); not charged"

#: ``holds(queue, job_ids)``: the ids among ``job_ids`` that ``queue`` still holds.
HoldsProbe = Callable[[str, list[str]], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class SweeperParts:
    """What the sweeper works with (handed over by the Broker)."""

    node_id: str
    state: ClusterState
    holds: HoldsProbe
    running_here: Callable[[], list[Job]]  # jobs running on this node
    queue_of: Callable[[str], str | None]  # the queue of a job this node queued, if unsettled
    finish: Callable[[Job, Result], Awaitable[object]]
    settle: Callable[[str], Awaitable[None]]  # the job is settled: its user's share is free
    publish: Callable[[dict[str, Any]], Awaitable[bool]]  # a result to every node
    refund: Callable[[str, str, str], Awaitable[object]]  # job_id, user_guid, reason
    registry: CollectorRegistry  # where the sweeper's counters are exposed


@dataclass(slots=True)
class _Watched:
    job: Job
    misses: int = 0


@dataclass(slots=True)
class _Held:
    user_guid: str
    payload: dict[str, Any]
    since: float
    delivered: bool  # published or delivered on this node: a user online has it


class LostJobSweeper:
    """The owner-side check of queued jobs, the running-job re-assertion and the outbox."""

    def __init__(self, parts: SweeperParts, check_s: float) -> None:
        self._parts = parts
        self.check_s = check_s
        self._watched: dict[str, _Watched] = {}
        self._outbox: dict[str, _Held] = {}
        self._task: asyncio.Task[None] | None = None
        self.lost = Counter(
            "rentahal_jobs_lost",
            "Queued jobs that vanished with the queue server and were failed",
            registry=parts.registry,
        )
        self.undeliverable = Counter(
            "rentahal_results_undeliverable",
            "Results that could be neither published nor kept in a mailbox in time",
            registry=parts.registry,
        )

    def watch(self, job: Job) -> None:
        """Keep a slim copy of a job this node queued (without its image or audio)."""
        query = job.query.model_copy(update={"image": None, "audio": None})
        self._watched[job.job_id] = _Watched(job.model_copy(update={"query": query}))

    def forget(self, job_id: str) -> None:
        """The job's result or error reached this node: stop watching it."""
        self._watched.pop(job_id, None)

    async def hold(self, user_guid: str, payload: dict[str, Any], *, delivered: bool) -> None:
        """A result not in the mailbox: post and publish it when Redis is back.

        Given up after ``OUTBOX_TTL_S``; a result no socket received is then
        refunded (its row marked failed, its charge taken back).
        """
        if len(self._outbox) >= OUTBOX_SIZE:
            oldest = next(iter(self._outbox))
            await self._give_up(oldest, self._outbox.pop(oldest))
        self._outbox[payload["job_id"]] = _Held(user_guid, payload, time.monotonic(), delivered)

    def start(self) -> None:
        """Start the periodic check."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="lost-job-sweeper")

    async def stop(self) -> None:
        """Stop the periodic check."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.sweep()
            except BusError as exc:  # Redis down: nothing can be told apart now
                logger.debug("lost-job check skipped: %s", exc)
            except Exception:
                logger.exception("lost-job check failed")

    async def sweep(self) -> None:
        """One round: re-assert running jobs, flush the outbox, check watched jobs."""
        await self._assert_running()
        await self._flush_outbox()
        await self._check_watched()

    async def _assert_running(self) -> None:
        parts = self._parts
        for job in parts.running_here():
            if job.state in (QueryState.DISPATCHED, QueryState.RUNNING):
                await parts.state.set_running(job.job_id, parts.node_id, job.user_guid)

    async def _flush_outbox(self) -> None:
        parts = self._parts
        now = time.monotonic()
        for job_id, held in list(self._outbox.items()):
            if now - held.since > OUTBOX_TTL_S:
                await self._give_up(job_id, self._outbox.pop(job_id))
                continue
            await parts.state.post_result(held.user_guid, held.payload)
            self._outbox.pop(job_id, None)
            await parts.publish(held.payload)

    async def _give_up(self, job_id: str, held: _Held) -> None:
        logger.error("the result of job %s could not be kept in a mailbox in time", job_id)
        if held.delivered or held.payload.get("status") != "done":
            return
        self.undeliverable.inc()
        try:
            await self._parts.refund(job_id, held.user_guid, UNDELIVERED_MESSAGE)
        except BrokerError as exc:
            logger.error("could not refund undelivered job %s: %s", job_id, exc)

    async def _check_watched(self) -> None:
        parts = self._parts
        by_queue: dict[str, list[str]] = {}
        for job_id in list(self._watched):
            owner = parts.queue_of(job_id)
            if owner is None:  # settled meanwhile
                self._watched.pop(job_id, None)
            else:
                by_queue.setdefault(owner, []).append(job_id)
        absent: list[str] = []
        for queue, job_ids in by_queue.items():
            held = await parts.holds(queue, job_ids)
            absent += [j for j in job_ids if j not in held]
        for job_id in set(self._watched) - set(absent):
            self._watched[job_id].misses = 0
        mail: dict[str, dict[str, dict[str, Any]]] = {}
        for job_id in absent:
            watched = self._watched.get(job_id)
            if watched is None or job_id in self._outbox:
                continue
            if await parts.state.running(job_id) is not None:
                watched.misses = 0
                continue
            guid = watched.job.user_guid
            if guid not in mail:
                mail[guid] = {m["job_id"]: m for m in await parts.state.undelivered(guid)}
            message = mail[guid].get(job_id)
            if message is not None:
                # Finished, but its pub/sub message fell into the outage: say it again.
                self._watched.pop(job_id, None)
                await parts.publish(message)
                continue
            watched.misses += 1
            if watched.misses >= MISSES_TO_LOST:
                watched.job.realm = parts.queue_of(job_id) or watched.job.realm
                await self._fail_lost(watched.job)

    async def _fail_lost(self, job: Job) -> None:
        self._watched.pop(job.job_id, None)
        self.lost.inc()
        logger.warning(
            "job %s of queue %s vanished from the queue server; failing it", job.job_id, job.realm
        )
        job.move_to(QueryState.FAILED)
        result = Result.of(
            job,
            "failed",
            error=LOST_MESSAGE,
            queue_wait=max(0.0, time.time() - job.submitted_at),
        )
        try:
            await asyncio.shield(self._parts.finish(job, result))
        except BrokerError as exc:
            logger.error("could not fail lost job %s: %s", job.job_id, exc)
        # Recorded by another run (its result is in flight) or failed now: the share is free.
        await self._parts.settle(job.job_id)
