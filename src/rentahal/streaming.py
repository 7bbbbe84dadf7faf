"""Streaming a chat answer straight from a worker, outside the queue (``stream: true``).

A streamed query does not wait in a realm queue: it is validated like
:meth:`Broker.submit` validates a chat, routed like a queued query (its realm
picks the worker, with the same slots, circuits and cluster confirmation:
:func:`~rentahal.realms.execution.reserve_confirmed`), and
its answer is passed on delta by delta while the worker produces it. Backends
with a ``stream_chat`` method (``openai``, ``ollama``) stream for real; any
other protocol answers the whole text as one delta.

The finished query goes through :meth:`Broker.finish` like a queued one: it is
priced, written to the ledger and published, so the user's WebSocket tabs (if
any) also receive its ``query_result``. Differences from the queue path: no
retry on another worker (deltas may already be out), no place in a realm queue
(a stream takes one of its user's shares, waiting for it like any HTTP query,
:class:`~rentahal.admission.Admission`; the wait for a worker slot is bounded
by the query timeout), and a streamed query is
not in any processor, so ``cancel_query`` / ``terminate_query`` do not reach it;
closing the HTTP connection cancels it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from rentahal.admission import Admission
from rentahal.backends import HttpClient, get_backend
from rentahal.errors import QueryRejected, ShareFull, WorkerError
from rentahal.models import AIWorker, Job, Query, QueryState, Result
from rentahal.realms.execution import reserve_confirmed
from rentahal.realms.workers import WorkerRegistry, WorkerSelector
from rentahal.shares import Shares

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Bookkeeping (slot release, ledger write) that must finish even when the HTTP
# caller is cancelled: held here until done, so no task is dropped mid-way.
_finishing: set[asyncio.Task[Any]] = set()


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that can pass a chat answer on as it is produced."""

    def stream_chat(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> AsyncIterator[str]:
        """Yield the answer's content deltas as they arrive."""
        ...


async def _close(deltas: AsyncIterator[str]) -> None:
    """Close an async generator of deltas (ends its HTTP stream to the worker)."""
    if isinstance(deltas, AsyncGenerator):
        await deltas.aclose()


def _finished(task: asyncio.Task[Any]) -> None:
    _finishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("bookkeeping of a streamed query failed", exc_info=task.exception())


async def _shielded(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.create_task(coro)
    _finishing.add(task)
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


@dataclass(frozen=True, slots=True)
class StreamParts:
    """What a streamed query needs of the broker (handed over by ``Broker.stream``)."""

    registry: WorkerRegistry
    client: HttpClient
    timeout_s: float
    validate: Callable[[str, Query], Awaitable[Query]]
    route: Callable[[Query], Awaitable[str]]
    selector_for: Callable[[str], WorkerSelector]
    finish: Callable[[Job, Result], Coroutine[Any, Any, Result]]
    admission: Admission
    shares: Shares
    share_wait_s: float  # how long a stream waits for its user's share (queue_timeout)


class QueryStream:
    """One chat query streamed from a worker: iterate it for the answer's deltas.

    Errors before the first delta are raised from the first ``__anext__``:
    ``QueryRejected`` (not recorded), ``NoWorkerAvailable`` or a ``WorkerError``
    (recorded as failed). A worker failing later raises after the deltas that
    arrived. Cancelling or closing the stream early records it as cancelled.
    ``job`` is known at once; ``worker`` once a worker is reserved; ``result``
    (priced) once the query is recorded.
    """

    def __init__(self, parts: StreamParts, job: Job) -> None:
        self._parts = parts
        self.job = job
        self.worker: str | None = None
        self.result: Result | None = None
        self._deltas = self._run()

    def __aiter__(self) -> QueryStream:
        return self

    async def __anext__(self) -> str:
        return await self._deltas.__anext__()

    async def aclose(self) -> None:
        """Stop early (a cancelled query) or release a finished stream (no effect)."""
        await self._deltas.aclose()

    async def _validate(self) -> None:
        """The checks :meth:`Broker.submit` makes for a chat, before anything is recorded."""
        query = self.job.query
        if query.query_type != "chat" or query.model_type == "speech":
            raise QueryRejected("Only text chat queries can be streamed")
        await self._parts.validate(self.job.user_guid, query)

    def _deltas_from(self, worker: AIWorker, timeout_s: float) -> AsyncIterator[str]:
        backend = get_backend(worker.protocol)
        if isinstance(backend, StreamingBackend):
            return backend.stream_chat(self._parts.client, worker, self.job.query, timeout_s)
        return self._whole_answer(worker, timeout_s)

    async def _whole_answer(self, worker: AIWorker, timeout_s: float) -> AsyncIterator[str]:
        """The answer of a backend that cannot stream, honestly as one delta."""
        backend = get_backend(worker.protocol)
        reply = await backend.run(self._parts.client, worker, self.job.query, timeout_s)
        if reply.result:
            yield reply.result

    async def _run(self) -> AsyncGenerator[str, None]:
        await self._validate()
        parts = self._parts
        async with parts.admission.share(self.job.user_guid, streamed=True):
            # A stream holds a place of the user's share on every node, like a queued query.
            await self._take_share()
            try:
                deltas = self._run_admitted()
                try:
                    async for delta in deltas:
                        yield delta
                finally:
                    await deltas.aclose()  # records a cancelled stream before the share is free
            finally:
                await asyncio.shield(parts.shares.release(self.job.job_id))

    async def _take_share(self) -> None:
        """Take the share place, waiting (bounded) while the user's other queries hold it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._parts.share_wait_s
        delay = 0.05
        while True:
            try:
                await self._parts.shares.admit(self.job.job_id, self.job.user_guid)
                return
            except ShareFull:
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _run_admitted(self) -> AsyncGenerator[str, None]:
        parts, job = self._parts, self.job
        job.realm = await parts.route(job.query)
        registry, timeout_s = parts.registry, parts.timeout_s
        texts: list[str] = []
        started: float | None = None
        queue_wait: float | None = None
        try:
            worker, holder = await reserve_confirmed(
                registry, parts.selector_for(job.realm), job.query, job.job_id, timeout_s=timeout_s
            )
            self.worker = worker.name
            queue_wait = time.time() - job.submitted_at
            job.move_to(QueryState.DISPATCHED)
            job.move_to(QueryState.RUNNING)
            job.attempts = 1
            logger.info("streaming job %s from %s", job.job_id, worker.name)
            try:
                started = time.monotonic()
                deltas = self._deltas_from(worker, timeout_s)
                try:
                    async for delta in deltas:
                        texts.append(delta)
                        yield delta
                finally:
                    await _close(deltas)  # at once, so the worker stops producing
            except WorkerError as exc:
                registry.report_failure(worker.name, exc)
                logger.warning("streaming job %s from %s failed: %s", job.job_id, worker.name, exc)
                raise
            else:
                registry.report_success(worker.name)
            finally:
                await _shielded(registry.release_call(worker.name, holder))
        except Exception as exc:
            await self._record("failed", started, error=str(exc))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away: record, then let the cancellation go on.
            await self._record("cancelled", started, error="Cancelled")
            raise
        await self._record("done", started, text="".join(texts), queue_wait=queue_wait)

    async def _record(
        self,
        status: Literal["done", "failed", "cancelled"],
        started: float | None,
        *,
        text: str = "",
        error: str | None = None,
        queue_wait: float | None = None,
    ) -> None:
        """Price, record and publish the outcome through :meth:`Broker.finish`."""
        job = self.job
        if job.state in (QueryState.QUEUED, QueryState.DISPATCHED, QueryState.RUNNING):
            job.move_to(QueryState(status))
        elapsed = time.monotonic() - started if started is not None else 0.0
        if queue_wait is None:
            queue_wait = time.time() - job.submitted_at - elapsed
        result = Result.of(
            job,
            status,
            result=text,
            processing_time=round(elapsed, 6),
            queue_wait=round(max(0.0, queue_wait), 6),
            worker=self.worker,
            attempts=job.attempts,
            error=error,
        )
        self.result = await _shielded(self._parts.finish(job, result))
