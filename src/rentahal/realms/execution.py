"""Running one job on workers: speech steps, retries on other workers, timeouts."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rentahal.backends import HttpClient, WorkerReply, get_backend
from rentahal.config import Settings
from rentahal.errors import (
    BrokerError,
    NoWorkerAvailable,
    WorkerError,
    WorkerRejected,
    WorkerTimeout,
)
from rentahal.federation.context import ROUTING_JOB
from rentahal.media import decode_audio
from rentahal.models import AIWorker, Job, Query, Result, dispatch_type, worker_family
from rentahal.realms.workers import WorkerRegistry, WorkerSelector

logger = logging.getLogger(__name__)


async def reserve_confirmed(
    registry: WorkerRegistry,
    selector: WorkerSelector,
    query: Query,
    job_id: str,
    *,
    timeout_s: float,
    first: AIWorker | None = None,
    exclude: Sequence[str] = (),
    check: Callable[[], None] | None = None,
) -> tuple[AIWorker, str | None]:
    """A worker slot reserved locally and, in a cluster, confirmed in shared state.

    The one slot reservation of the broker (queued jobs and streamed chats).
    ``first`` is an already reserved worker (or None); ``exclude`` are workers
    to avoid (read afresh on each try); ``check`` raises when waiting is
    pointless. Returns the worker and the holder id of its cluster slot (None
    on a single node); the caller releases it with ``registry.release_call``.
    """
    candidate = first
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if candidate is None:
            candidate = await registry.acquire(
                selector,
                query,
                exclude=exclude,
                timeout_s=max(0.0, deadline - loop.time()),
                check=check,
            )
        if registry.cluster is None:
            return candidate, None
        holder = f"{job_id}:{uuid.uuid4().hex[:8]}"
        try:
            confirmed = await registry.confirm(candidate, holder)
        except BaseException:
            await asyncio.shield(registry.release_call(candidate.name, holder))
            raise
        if confirmed:
            return candidate, holder
        candidate = None  # every slot is busy on other nodes: wait for another


# The query a selector by worker type is handed (it looks at the type only).
_ANY_QUERY = Query(query_type="chat")


@dataclass(slots=True)
class _Run:
    """Book-keeping of one job's calls."""

    job_id: str = ""
    billed_s: float = 0.0
    attempts: int = 0
    worker: str | None = None
    tried: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SpeechCall:
    """Which speech worker answered a ``transcribe``/``speak`` call (filled in by the call)."""

    worker: str | None = None


class QueryExecutor:
    """Runs a job to a :class:`Result` (never raises for worker failures)."""

    def __init__(self, registry: WorkerRegistry, client: HttpClient, settings: Settings) -> None:
        self.registry = registry
        self.client = client
        self.settings = settings

    def timeout_for(self, query_type: str) -> float:
        """Per-attempt deadline for a query type."""
        perf = self.settings.performance
        return perf.imagine_timeout if query_type == "imagine" else perf.query_timeout

    async def execute(
        self, job: Job, worker: AIWorker, selector: WorkerSelector | None = None
    ) -> Result:
        """Run ``job``, starting on the already reserved ``worker``.

        Retries reserve through ``selector`` (the realm's manager; default: any worker).
        """
        ROUTING_JOB.set(job)  # this task runs only this job
        run = _Run(job_id=job.job_id)
        queue_wait = max(0.0, time.time() - job.submitted_at)
        base: dict[str, Any] = {
            "job_id": job.job_id,
            "user_guid": job.user_guid,
            "realm": job.realm,
            "queue_wait": round(queue_wait, 6),
            "query_type": job.query.query_type,
        }
        handed_over = False
        try:
            query = job.query
            if query.query_type == "speech":
                text = await self._transcribe(query, run)
                query = query.model_copy(update={"prompt": text, "audio": None})
            handed_over = True
            reply = await self._run_with_retries(query, worker, run, selector or self.registry)
            if job.query.model_type == "speech" or job.speak_result:
                if reply.result_type == "text":
                    audio = await self._speak(reply.result, run)
                    reply = WorkerReply(base64.b64encode(audio).decode("ascii"), "audio")
        except BrokerError as exc:
            return Result(
                status="failed",
                error=str(exc),
                attempts=run.attempts,
                worker=run.worker,
                processing_time=round(run.billed_s, 6),
                **base,
            )
        finally:
            if not handed_over:
                self.registry.release(worker.name)
        return Result(
            status="done",
            result=reply.result,
            result_type=reply.result_type,
            processing_time=round(run.billed_s, 6),
            worker=run.worker,
            attempts=run.attempts,
            **base,
        )

    async def _call(self, worker: AIWorker, query: Query, run: _Run) -> WorkerReply:
        backend = get_backend(worker.protocol)
        started = time.monotonic()
        reply = await backend.run(self.client, worker, query, self.timeout_for(query.query_type))
        run.billed_s += time.monotonic() - started
        return reply

    def _check_retry_possible(self, query: Query) -> None:
        """Raise ``NoWorkerAvailable`` unless some worker for ``query`` is usable now.

        A retry waits for a busy worker to free a slot, but not for circuits or
        cool-downs to end: those outlast any reasonable wait of one query.
        """
        self.registry.check_servable(query)
        now = time.monotonic()
        states = self.registry.candidates(
            dispatch_type(query), query.model_name, worker_family(query.model_type)
        )
        # Slots held on other nodes free up soon; circuits and cool-downs do not.
        if not any(s.available(now, ignore_saturation=True) for s in states):
            raise NoWorkerAvailable(f"No {dispatch_type(query)} worker is usable for a retry")

    async def _run_with_retries(
        self, query: Query, worker: AIWorker, run: _Run, selector: WorkerSelector
    ) -> WorkerReply:
        """Call workers until one answers; ``worker`` is reserved and always released."""
        attempts_max = self.settings.workers.max_attempts
        current: AIWorker | None = worker
        last: WorkerError | None = None
        for attempt in range(1, attempts_max + 1):
            try:
                current, holder = await reserve_confirmed(
                    self.registry,
                    selector,
                    query,
                    run.job_id,
                    timeout_s=self.timeout_for(query.query_type),
                    first=current,
                    exclude=run.tried,
                    check=lambda: self._check_retry_possible(query),
                )
            except NoWorkerAvailable:
                if last is None:
                    raise
                # No worker for another attempt: the user needs the failure that
                # happened, not "no worker became free".
                break
            run.attempts = attempt
            run.worker = current.name
            run.tried.append(current.name)
            try:
                reply = await self._call(current, query, run)
            except WorkerError as exc:
                last = exc
                self.registry.report_failure(current.name, exc)
                logger.warning("attempt %d of %s failed: %s", attempt, current.name, exc)
                if not exc.retryable:
                    break
                if (
                    isinstance(exc, WorkerTimeout)
                    and query.query_type == "imagine"
                    and not self.settings.workers.retry_image_on_timeout
                ):
                    break
            else:
                self.registry.report_success(current.name)
                return reply
            finally:
                await self._release(current.name, holder)
            current = None
            if attempt < attempts_max:
                await asyncio.sleep(self.settings.workers.retry_backoff_s * 2 ** (attempt - 1))
        assert last is not None
        if run.attempts > 1:
            raise type(last)(
                f"{last} (after {run.attempts} attempts)", worker=last.worker, status=last.status
            )
        raise last

    async def _speech_call(self, method: str, run: _Run, *args: Any) -> Any:
        registry = self.registry
        worker, holder = await reserve_confirmed(
            registry,
            registry.type_selector("speech"),
            _ANY_QUERY,
            run.job_id or "speech",
            timeout_s=self.settings.performance.query_timeout,
            check=lambda: registry.check_type_servable("speech"),
        )
        run.worker = worker.name
        try:
            backend = get_backend(worker.protocol)
            fn = getattr(backend, method, None)
            if fn is None:
                raise WorkerRejected(
                    f"speech worker {worker.name} ({worker.protocol}) cannot {method}",
                    worker=worker.name,
                )
            started = time.monotonic()
            out = await fn(self.client, worker, *args, self.settings.performance.query_timeout)
            run.billed_s += time.monotonic() - started
            self.registry.report_success(worker.name)
            return out
        except WorkerError as exc:
            self.registry.report_failure(worker.name, exc)
            raise
        finally:
            await self._release(worker.name, holder)

    async def _release(self, name: str, holder: str | None) -> None:
        """Give the slot back: at once on one node, shielded when shared state is told too."""
        if holder is None:
            self.registry.release(name)  # no await: no task, no loop turn
        else:
            await asyncio.shield(self.registry.release_call(name, holder))

    async def _transcribe(self, query: Query, run: _Run) -> str:
        audio = decode_audio(query.audio or "")
        text = await self._speech_call("transcribe", run, audio, "audio.webm")
        return str(text)

    async def _speak(self, text: str, run: _Run) -> bytes:
        return bytes(await self._speech_call("speak", run, text))

    async def transcribe(self, audio: bytes, call: SpeechCall | None = None) -> str:
        """Transcribe audio on a speech worker; ``call`` learns which one."""
        run = _Run()
        try:
            return str(await self._speech_call("transcribe", run, audio, "audio.webm"))
        finally:
            if call is not None:
                call.worker = run.worker

    async def speak(self, text: str, call: SpeechCall | None = None) -> bytes:
        """Speak text on a speech worker; ``call`` learns which one."""
        run = _Run()
        try:
            return bytes(await self._speech_call("speak", run, text))
        finally:
            if call is not None:
                call.worker = run.worker
