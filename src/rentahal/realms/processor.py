"""Queue consumers: take jobs when a worker is free and run them concurrently."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

from rentahal.bus.base import Bus
from rentahal.errors import NoWorkerAvailable
from rentahal.federation.context import ROUTING_JOB
from rentahal.models import AIWorker, Job, QueryState, Result
from rentahal.realms.execution import QueryExecutor
from rentahal.realms.workers import WorkerRegistry, WorkerSelector

logger = logging.getLogger(__name__)

# Loop turns a finished job waits before it is recorded when a job waits for its
# worker: one for the consume loop to take and start that job, one for the new call's
# request to be written (aiohttp writes the body from a task of its own).
HANDOVER_TURNS = 2

FinishHandler = Callable[[Job, Result], Awaitable[object]]


class _Dispatchable:
    """The consume loop's filter (a :class:`~rentahal.bus.base.KeyedJobFilter`).

    Whether a job can be dispatched depends on its query's type, model name and
    model type only, unless the federation gate looks at each job (its hops, how
    long it waited): then every job is its own key.
    """

    __slots__ = ("_processor",)

    def __init__(self, processor: QueryProcessor) -> None:
        self._processor = processor

    def __call__(self, job: Job) -> bool:
        ok = self._processor._dispatchable(job)
        if not ok:
            self._processor._jobs_wait_for_workers = True
        return ok

    def scan_key(self, job: Job) -> Hashable | None:
        if self._processor.registry.remote_gate is not None:
            return None
        query = job.query
        return (query.query_type, query.model_name, query.model_type)


class _Reserver:
    """Holds a worker for a job a take may start with (a :class:`~rentahal.bus.base.
    JobReserver`): a bus that answers several jobs at once (the memory bus) answers
    only jobs with a worker held, so it never takes more than can start now."""

    __slots__ = ("_processor",)

    def __init__(self, processor: QueryProcessor) -> None:
        self._processor = processor

    def reserve(self, job: Job) -> bool:
        worker = self._processor._reserve(job)
        if worker is None:
            return False
        self._processor._held[job.job_id] = worker
        return True

    def release(self, job: Job) -> None:
        worker = self._processor._held.pop(job.job_id, None)
        if worker is not None:
            self._processor.registry.release(worker.name)


class QueryProcessor:
    """Consumes one queue of the :class:`Bus` (the legacy queue or a realm's).

    It takes a job only when some worker able to run it has a free slot, so
    dispatch is concurrent up to the workers' combined ``max_concurrency`` and
    waits on wake-ups from the bus and the registry, never on sleeps. Each
    round of the consume loop (at least one a second) sets ``last_heartbeat``;
    :meth:`revive` restarts a loop that died or stopped beating.
    """

    #: Longest wait of one ``Bus.take``: the heartbeat's period while idle.
    take_timeout_s = 1.0

    def __init__(
        self,
        queue: str,
        bus: Bus,
        registry: WorkerRegistry,
        executor: QueryExecutor,
        finish: FinishHandler,
        selector: WorkerSelector | None = None,
        on_start: Callable[[Job], Awaitable[None]] | None = None,
    ) -> None:
        self.queue = queue
        self.selector: WorkerSelector = selector or registry
        self._on_start = on_start
        self.bus = bus
        self.registry = registry
        self.executor = executor
        self._finish = finish
        self.last_heartbeat = 0.0  # time.monotonic() of the consume loop's latest round
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.running_jobs: dict[str, Job] = {}
        self._cancel_requested: set[str] = set()
        self._finishing: set[str] = set()  # jobs whose result is being recorded
        self._loop_task: asyncio.Task[None] | None = None
        self._abandoned: set[asyncio.Task[None]] = set()  # stuck loops, cancelled
        self._stopping = False
        self._accept = _Dispatchable(self)
        self._reserver = _Reserver(self)
        self._held: dict[str, AIWorker] = {}  # workers held for jobs a take answered
        # The consume loop's latest look left a job waiting for a busy worker.
        self._jobs_wait_for_workers = False

    @property
    def alive(self) -> bool:
        """True while the consume loop runs."""
        return self._loop_task is not None and not self._loop_task.done()

    def start(self) -> None:
        """Start consuming (no-op when already running)."""
        if self.alive:
            return
        self._stopping = False
        self.last_heartbeat = time.monotonic()
        self.registry.add_listener(self._wake)
        self._loop_task = asyncio.create_task(self._consume(), name=f"processor:{self.queue}")

    def _wake(self) -> None:
        self.bus.wake(self.queue)

    def stuck(self, max_silence_s: float) -> bool:
        """True when the loop runs but has not beaten for ``max_silence_s``."""
        return self.alive and time.monotonic() - self.last_heartbeat > max_silence_s

    def revive(self, max_silence_s: float) -> bool:
        """Restart the consume loop if it died or is stuck; True when it was restarted.

        A stuck loop is cancelled (kept until it ends); running jobs are not touched.
        """
        if self._stopping:
            return False
        if self.stuck(max_silence_s):
            assert self._loop_task is not None
            silent_s = time.monotonic() - self.last_heartbeat
            logger.warning("processor %s silent for %.1fs; restarting it", self.queue, silent_s)
            stale = self._loop_task
            stale.cancel()
            self._abandoned.add(stale)
            stale.add_done_callback(self._abandoned.discard)
            self._loop_task = None
        elif self.alive:
            return False
        else:
            logger.warning("processor %s is not running; restarting it", self.queue)
        self.start()
        return True

    def _dispatchable(self, job: Job) -> bool:
        # Jobs no worker can serve (open circuits, removed workers) are taken to fail them.
        token = ROUTING_JOB.set(job)
        try:
            return self.selector.can_serve_now(job.query) or self._refusal(job) is not None
        finally:
            ROUTING_JOB.reset(token)

    def _reserve(self, job: Job) -> AIWorker | None:
        token = ROUTING_JOB.set(job)
        try:
            return self.selector.reserve(job.query)
        finally:
            ROUTING_JOB.reset(token)

    def _refusal(self, job: Job) -> NoWorkerAvailable | None:
        """Why no worker will serve ``job`` soon, or ``None`` when one may (busy is fine)."""
        token = ROUTING_JOB.set(job)
        try:
            self.registry.check_servable(job.query)
        except NoWorkerAvailable as exc:
            return exc
        finally:
            ROUTING_JOB.reset(token)
        return None

    async def _fail_refused(self, job: Job, refusal: NoWorkerAvailable) -> None:
        job.move_to(QueryState.FAILED)
        result = Result.of(
            job, "failed", error=str(refusal), queue_wait=max(0.0, time.time() - job.submitted_at)
        )
        await asyncio.shield(self._finish(job, result))

    async def _consume(self) -> None:
        while not self._stopping:
            self.last_heartbeat = time.monotonic()
            self._jobs_wait_for_workers = False
            jobs = await self.bus.take_batch(
                self.queue,
                accept=self._accept,
                reserve=self._reserver,
                timeout_s=self.take_timeout_s,
            )
            # Every job with a worker held starts at once (no wait between them);
            # only one without has to be refused or handed back.
            late = [job for job in jobs if not self._dispatch(job)]
            for job in late:
                worker = self._reserve(job)
                if worker is not None:
                    self._start(job, worker)
                    continue
                refusal = self._refusal(job)
                if refusal is not None:
                    await self._fail_refused(job, refusal)
                else:  # capacity vanished between check and reserve
                    await self.bus.requeue(self.queue, job)
            if jobs:
                # Run the jobs now rather than take the next ones first.
                await asyncio.sleep(0)

    def _dispatch(self, job: Job) -> bool:
        """Start ``job`` on the worker held for it; ``False`` when none was held."""
        worker = self._held.pop(job.job_id, None)
        if worker is None:
            return False
        self._start(job, worker)
        return True

    def _start(self, job: Job, worker: AIWorker) -> None:
        job.move_to(QueryState.DISPATCHED)
        task = asyncio.create_task(self._run(job, worker.name), name=f"job:{job.job_id}")
        self.tasks[job.job_id] = task
        self.running_jobs[job.job_id] = job
        task.add_done_callback(functools.partial(self._forget_task, job.job_id))

    def _forget_task(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        self.tasks.pop(job_id, None)
        self.running_jobs.pop(job_id, None)
        self._cancel_requested.discard(job_id)
        self._finishing.discard(job_id)

    async def _run(self, job: Job, worker_name: str) -> None:
        worker_state = self.registry.get(worker_name)
        try:
            job.move_to(QueryState.RUNNING)
            if self._on_start is not None:
                await self._on_start(job)
            if worker_state is None:
                raise RuntimeError(f"worker {worker_name} vanished")
            result = await self.executor.execute(job, worker_state.worker, self.selector)
        except asyncio.CancelledError:
            if job.job_id in self._cancel_requested:
                result = Result.of(job, "cancelled", error="Cancelled")
                job.move_to(QueryState.CANCELLED)
                await asyncio.shield(self._finish(job, result))
            else:  # shutting down: hand the job back
                job.move_to(QueryState.QUEUED)
                await asyncio.shield(self.bus.requeue(self.queue, job))
            raise
        except Exception as exc:
            logger.exception("job %s crashed", job.job_id)
            result = Result.of(job, "failed", error=f"Internal error: {exc}")
        job.move_to(QueryState.DONE if result.status == "done" else QueryState.FAILED)
        # From here on cancel() and stop() leave the task be, so finishing needs no
        # shield (which would run it as another task, a turn of the loop later).
        self._finishing.add(job.job_id)
        if self._jobs_wait_for_workers:
            # The worker slot just freed has a job waiting for it: let the consume loop
            # start that job, and its call go out, before this one is recorded.
            for _ in range(HANDOVER_TURNS):
                await asyncio.sleep(0)
        await self._finish(job, result)

    def cancel(self, job_id: str) -> bool:
        """Cancel a running job of this processor; ``False`` when it is not running."""
        task = self.tasks.get(job_id)
        if task is None or task.done() or job_id in self._finishing:
            return False
        self._cancel_requested.add(job_id)
        task.cancel()
        return True

    @property
    def in_flight(self) -> int:
        """Jobs running now."""
        return len(self.tasks)

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop taking jobs, let running ones finish for ``drain_timeout_s``, cancel the rest."""
        self._stopping = True
        self.registry.remove_listener(self._wake)
        self.bus.wake(self.queue)
        loops = [t for t in (self._loop_task, *self._abandoned) if t is not None]
        for loop_task in loops:
            loop_task.cancel()
        if loops:
            await asyncio.wait(loops, timeout=2.0)
        for loop_task in loops:
            if loop_task.done() and not loop_task.cancelled():
                failure = loop_task.exception()
                if failure is not None:
                    logger.error("processor %s loop had failed", self.queue, exc_info=failure)
        pending = list(self.tasks.values())
        if pending:
            _done, still = await asyncio.wait(pending, timeout=drain_timeout_s)
            finishing = {self.tasks.get(job_id) for job_id in self._finishing}
            for task in still:
                if task not in finishing:  # a result being recorded is not cut off
                    task.cancel()
            if still:
                await asyncio.wait(still, timeout=2.0)
