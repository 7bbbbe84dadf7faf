"""Queries that skip the queue (streamed chats, whisper, bark) but end like queued ones.

Both kinds are routed to a realm, and both end in ``Broker.finish``: priced,
recorded, metered and published, so they count in ``/metrics`` and the realm
figures like any queued query.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from rentahal.broker.delivery import Delivery
from rentahal.errors import WorkerError
from rentahal.models import Job, Query, QueryState, Result
from rentahal.realms.execution import SpeechCall
from rentahal.streaming import QueryStream, StreamParts

# How long a direct call waits for its own published result to come back.
RESULT_ECHO_S = 10.0


class DirectCalls:
    """Starts streamed chats and runs direct speech calls for the Broker."""

    def __init__(self, node_id: str, parts: StreamParts, delivery: Delivery) -> None:
        self._node_id = node_id
        self._parts = parts
        self._delivery = delivery

    def stream(self, user_guid: str, query: Query) -> QueryStream:
        """A chat ``query`` streamed straight from a worker (see :mod:`rentahal.streaming`)."""
        return QueryStream(
            self._parts, Job(user_guid=user_guid, query=query, origin_node=self._node_id)
        )

    async def run(
        self,
        user_guid: str,
        query: Query,
        call: Callable[[SpeechCall], Awaitable[str]],
        *,
        prompt_is_result: bool = False,
    ) -> Result:
        """Run ``call`` (a speech worker call) as a job of ``query``'s realm, finished once.

        The result comes back to this caller rather than to the user's sockets
        (as for any query with a waiting caller). The billed time is the whole
        call, including any wait for a free speech worker; ``call`` notes the
        worker that answered in its :class:`SpeechCall`. With
        ``prompt_is_result`` the ledger row's prompt is the answer (the
        transcription), so the user's history shows what was said. A
        ``WorkerError`` is recorded as a failed job and raised.
        """
        finish = self._parts.finish
        job = Job(user_guid=user_guid, query=query, origin_node=self._node_id)
        job.realm = await self._parts.route(query)
        self._delivery.expect(job.job_id)
        try:
            started = time.monotonic()
            speech = SpeechCall()
            try:
                text = await call(speech)
            except WorkerError as exc:
                job.move_to(QueryState.FAILED)
                failed = Result.of(
                    job,
                    "failed",
                    error=str(exc),
                    worker=exc.worker,
                    attempts=1,
                    processing_time=round(time.monotonic() - started, 6),
                )
                await asyncio.shield(finish(job, failed))
                raise
            elapsed = round(time.monotonic() - started, 6)
            if prompt_is_result:
                job = job.model_copy(update={"query": query.model_copy(update={"prompt": text})})
            for state in (QueryState.DISPATCHED, QueryState.RUNNING, QueryState.DONE):
                job.move_to(state)
            done = Result.of(
                job,
                "done",
                result=text,
                result_type="audio" if query.model_type == "speech" else "text",
                processing_time=elapsed,
                attempts=1,
                worker=speech.worker,
            )
            finished = await asyncio.shield(finish(job, done))
            with contextlib.suppress(TimeoutError):
                return await self._delivery.wait(job.job_id, RESULT_ECHO_S)
            return finished
        finally:
            self._delivery.drop(job.job_id)
