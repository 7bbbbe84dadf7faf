"""Queries between installations: the backend that sends them, the runs that receive them.

The sender posts the query with the job id (the idempotency key), its hop
count and the installations it visited; the receiver queues it in its own
realms as the sender's federation account and answers at once (``queued``),
or with the result when it is known. The sender then asks the signed result
endpoint (a bounded long poll) until the result is there or its deadline
passes, so no HTTP request outlives its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from rentahal.backends import HttpClient, WorkerReply
from rentahal.errors import (
    NoWorkerAvailable,
    PeerLost,
    QueryRejected,
    QueueFull,
    WorkerRateLimited,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnavailable,
)
from rentahal.federation.client import PeerCallFailed
from rentahal.federation.context import ROUTING_JOB
from rentahal.models import AIWorker, Query, Result, User
from rentahal.nicknames import RESERVED_PREFIX
from rentahal.storage import tables as t
from rentahal.storage.database import Storage

if TYPE_CHECKING:
    from rentahal.broker import Broker
    from rentahal.federation.service import FederationService

logger = logging.getLogger(__name__)

POLL_S = 20.0  # longest single wait on the result endpoint
MAX_RUNS = 10_000  # remembered incoming runs (finished ones are forgotten first)
ACCOUNT_NAMESPACE = uuid.UUID("6f1c7b1e-3c55-4b5e-9a43-5d1f3f0a7c11")


def account_guid(federation_id: str) -> str:
    """The user GUID under which a peer's queries are queued and charged here."""
    return str(uuid.uuid5(ACCOUNT_NAMESPACE, federation_id))


async def ensure_account(storage: Storage, federation_id: str) -> str:
    """Create the peer's federation account (never a sysop) when it does not exist."""
    guid = account_guid(federation_id)
    store = storage.for_user(guid)
    if await store.get_user(guid) is not None:
        return guid
    user = User(guid=guid, nickname=f"{RESERVED_PREFIX}{federation_id}"[:50])
    try:
        async with store.begin() as conn:
            await conn.execute(insert(t.users).values(**user.model_dump()))
    except IntegrityError:
        pass  # created concurrently
    return guid


@dataclass
class _Run:
    """One incoming query of a peer, by the peer's job id."""

    local_job_id: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    answer: dict[str, Any] = field(default_factory=dict)


class IncomingRuns:
    """Queries other installations sent here (at most once per peer job id)."""

    def __init__(
        self,
        broker: Broker,
        storage: Storage,
        federation_id: str,
        max_hops: int,
        on_accept: Callable[[str], None] = lambda _peer: None,
    ) -> None:
        self.on_accept = on_accept
        self.broker = broker
        self.storage = storage
        self.federation_id = federation_id
        self.max_hops = max_hops
        self.runs: OrderedDict[tuple[str, str], _Run] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def _answer(self, job_id: str, status: str, **fields: Any) -> dict[str, Any]:
        return {"status": status, "federation_id": self.federation_id, "job_id": job_id, **fields}

    async def submit(self, peer_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Queue a peer's query (or report the one already queued under its job id)."""
        job_id = payload.get("job_id")
        if not isinstance(job_id, str) or not 1 <= len(job_id) <= 64:
            return 422, {"error": "job_id: 1 to 64 characters"}
        existing = self.runs.get((peer_id, job_id))
        if existing is not None:
            return 200, existing.answer or self._answer(job_id, "queued")
        try:
            query = Query.model_validate(payload.get("query"))
            hops = int(payload.get("hops", 1))
            visited = [str(v) for v in payload.get("visited", [])][:16]
        except (ValueError, TypeError) as exc:
            return 422, {"error": f"malformed query: {exc}"}
        if self.federation_id in visited or hops > self.max_hops:
            return 409, {"error": "routing loop: this installation was already visited"}
        query = query.model_copy(
            update={"federation_hops": hops, "federation_visited": [*visited, self.federation_id]}
        )
        guid = await ensure_account(self.storage, peer_id)
        try:
            job = await self.broker.submit(guid, query, want_result=True)
        except QueueFull as exc:
            return 429, {"error": str(exc)}
        except NoWorkerAvailable as exc:
            return 503, {"error": str(exc)}
        except QueryRejected as exc:
            return 422, {"error": str(exc)}
        run = _Run(job.job_id)
        self.runs[(peer_id, job_id)] = run
        self.on_accept(peer_id)
        self._forget_old()
        task = asyncio.create_task(self._await(run, job_id), name=f"federation-run:{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A short query answers in this very call; a long one is polled for.
        wait_s = payload.get("wait_s", 0)
        if isinstance(wait_s, int | float) and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(float(wait_s), POLL_S)):
                    await run.done.wait()
        return 200, run.answer or self._answer(job_id, "queued")

    async def _await(self, run: _Run, job_id: str) -> None:
        limit = self.broker.settings.queue.queue_timeout + 2 * max(
            self.broker.settings.performance.query_timeout,
            self.broker.settings.performance.imagine_timeout,
        )
        try:
            result: Result = await self.broker.wait_result(run.local_job_id, limit)
            if result.status == "done":
                run.answer = self._answer(
                    job_id,
                    "done",
                    result=result.result,
                    result_type=result.result_type,
                    processing_time=result.processing_time,
                    cost=result.cost,
                    worker=result.worker,
                )
            else:
                run.answer = self._answer(job_id, "failed", error=result.error or result.status)
        except TimeoutError:
            run.answer = self._answer(job_id, "failed", error="no result in time")
        finally:
            run.done.set()

    def _forget_old(self) -> None:
        while len(self.runs) > MAX_RUNS:
            key = next((k for k, r in self.runs.items() if r.done.is_set()), None)
            if key is None:
                break
            self.runs.pop(key)

    async def result(self, peer_id: str, job_id: str, wait_s: float) -> tuple[int, dict[str, Any]]:
        """The answer of a peer's query, waiting up to ``wait_s`` for it to finish."""
        run = self.runs.get((peer_id, job_id))
        if run is None:
            return 404, {"error": "no such query from your federation"}
        if not run.done.is_set():
            try:
                async with asyncio.timeout(max(0.0, min(wait_s, POLL_S))):
                    await run.done.wait()
            except TimeoutError:
                pass
        return 200, run.answer or self._answer(job_id, "queued")

    async def close(self) -> None:
        """Stop waiting for incoming runs."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)


class FederationBackend:
    """The ``federation`` worker protocol: a peer installation as a worker."""

    protocol = "federation"

    def __init__(self, service: FederationService) -> None:
        self.service = service

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        """Send ``query`` to the peer and wait (bounded) for its answer."""
        service = self.service
        peer = service.peer_for(worker)
        if peer is None or not peer.usable():
            raise WorkerUnavailable(
                f"federation {worker.address} is not available", worker=worker.name
            )
        job = ROUTING_JOB.get()
        job_id = job.job_id if job is not None else uuid.uuid4().hex
        me = service.identity.federation_id
        payload = {
            "federation_id": me,
            "source_federation": me,
            "job_id": job_id,
            "hops": query.federation_hops + 1,
            # The peer may answer within this call when the query is quick.
            "wait_s": round(min(timeout_s, service.config.request_timeout_s) / 2, 2),
            "visited": [*query.federation_visited, me],
            "query": query.model_dump(
                include={"prompt", "query_type", "model_type", "model_name", "image", "audio"}
            ),
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        peer.queries_out += 1
        service.metrics.queries_out += 1
        started = time.monotonic()
        try:
            status, answer = await service.client.call(
                peer,
                "POST",
                "/api/federation/route",
                payload,
                min(timeout_s, service.config.request_timeout_s),
            )
        except PeerCallFailed as exc:
            peer.failed(service.discovery.advertise_interval)
            service.metrics.failures += 1
            raise WorkerUnavailable(
                f"federation {peer.federation_id} did not take the query ({exc})",
                worker=worker.name,
            ) from None
        self._raise_for(status, answer, worker)
        while answer.get("status") == "queued":
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise WorkerTimeout(
                    f"federation {peer.federation_id} gave no answer within {timeout_s:g}s",
                    worker=worker.name,
                )
            wait = min(POLL_S, remaining)
            try:
                status, answer = await service.client.call(
                    peer,
                    "GET",
                    f"/api/federation/result/{job_id}?wait_s={wait:.1f}",
                    None,
                    wait + service.config.request_timeout_s,
                )
            except PeerCallFailed as exc:
                peer.failed(service.discovery.advertise_interval)
                service.metrics.failures += 1
                raise PeerLost(
                    f"federation {peer.federation_id} failed while running the query ({exc})",
                    worker=worker.name,
                ) from None
            self._raise_for(status, answer, worker)
        if answer.get("status") != "done":
            raise WorkerUnavailable(
                f"federation {peer.federation_id} could not answer: "
                f"{answer.get('error', 'failed')}",
                worker=worker.name,
            )
        service.metrics.observe_out(time.monotonic() - started)
        result_type = answer.get("result_type", "text")
        if result_type not in ("text", "image", "audio"):
            result_type = "text"
        return WorkerReply(str(answer.get("result", "")), result_type)

    @staticmethod
    def _raise_for(status: int, answer: dict[str, Any], worker: AIWorker) -> None:
        if status == 200:
            if answer.get("status") not in ("queued", "done", "failed"):
                raise WorkerUnavailable(
                    f"federation {worker.address} answered garbage", worker=worker.name
                )
            return
        error = str(answer.get("error", ""))[:200]
        if status == 429:
            raise WorkerRateLimited(
                f"federation {worker.address} is busy: {error}", worker=worker.name, status=status
            )
        if 400 <= status < 500 and status != 404:
            raise WorkerRejected(
                f"federation {worker.address} refused: {error}", worker=worker.name, status=status
            )
        raise WorkerUnavailable(
            f"federation {worker.address} answered {status}", worker=worker.name, status=status
        )

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        """The peer answers its identity document."""
        peer = self.service.peer_for(worker)
        if peer is None:
            raise WorkerUnavailable(f"federation {worker.address} is unknown", worker=worker.name)
        try:
            status, _doc, _rtt = await self.service.client.exchange(
                peer.callback_url, "GET", "/api/federation/identity", None, timeout_s, expect=None
            )
        except PeerCallFailed as exc:
            raise WorkerUnavailable(str(exc), worker=worker.name) from None
        return status

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        """Models come from the peer's advertisement."""
        return list(worker.models)
