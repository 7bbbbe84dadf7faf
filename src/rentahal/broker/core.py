"""The Broker: the one entry point that the WebSocket, HTTP and federation layers call.

It submits, validates, routes, cancels, terminates and finishes queries; the
rooms beside it (queues, direct, users, jobs, delivery, control, fleet,
notifier, views, sockets) each own one thing and are handed only the parts
they need. The components behind it are private: the API layer calls methods
and the public rooms (``fleet``, ``views``, ``sockets``, ``realms``), never
the storage or the registry (``scripts/import_graph.py`` counts reach-throughs;
``tests/unit/test_api_boundary.py`` keeps them at none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from rentahal.admission import Admission
from rentahal.backends import HttpClient
from rentahal.broker.control import (
    CONTROL_CHANNEL,
    Cancel,
    ControlChannel,
    RealmsChanged,
    ShardsChanged,
    Terminate,
)
from rentahal.broker.delivery import Delivery
from rentahal.broker.direct import DirectCalls
from rentahal.broker.fleet import Fleet
from rentahal.broker.jobs import JobBook
from rentahal.broker.notifier import QueueNotifier
from rentahal.broker.queues import WATCHDOG_INTERVAL_S, NodeQueues
from rentahal.broker.sockets import Sockets
from rentahal.broker.users import BANNED_MESSAGE, UserDirectory
from rentahal.broker.views import BrokerViews
from rentahal.bus.base import Bus
from rentahal.bus.counters import MemoryCounters, ShareCounters
from rentahal.bus.redis import RedisBus
from rentahal.bus.state import ClusterState, MemoryState
from rentahal.bus.state.redis import RedisState
from rentahal.config import Settings
from rentahal.errors import BusError, LedgerDeferred, QueryRejected, QueueFull, StorageError
from rentahal.lost_jobs import LostJobSweeper, SweeperParts
from rentahal.models import Job, Query, QueryState, Result, User
from rentahal.realms.connections import RealmConnectionManager
from rentahal.realms.execution import QueryExecutor, SpeechCall
from rentahal.realms.metrics import RealmMetricsCollector
from rentahal.realms.service import RealmService
from rentahal.realms.workers import WorkerRegistry
from rentahal.shares import Shares
from rentahal.storage.database import Storage
from rentahal.storage.keys import KeyStore
from rentahal.storage.ledger import Ledger
from rentahal.storage.spool import LedgerSpool, spool_path
from rentahal.streaming import QueryStream, StreamParts
from rentahal.vision import UploadGauges, preprocess_image

logger = logging.getLogger(__name__)


def _longest_life_s(settings: Settings) -> float:
    """How long a query can live at most: its queue wait plus every attempt and speech step."""
    perf = settings.performance
    attempts = settings.workers.max_attempts * max(perf.query_timeout, perf.imagine_timeout)
    return settings.queue.queue_timeout + attempts + 2 * perf.query_timeout + 60


@dataclass(frozen=True, slots=True)
class BrokerParts:
    """The parts the services beside the Broker work with (federation, scaler, registration).

    The API layer never asks for these (``tests/unit/test_api_boundary.py``); it
    calls the Broker's methods.
    """

    registry: WorkerRegistry
    client: HttpClient
    metrics: RealmMetricsCollector
    state: ClusterState
    bus: Bus


class Broker:
    """Queues queries, runs them on workers, records them, and delivers results."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        bus: Bus,
        client: HttpClient,
        state: ClusterState | None = None,
        counters: ShareCounters | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.broker.resolved_node_id()
        self._storage = storage
        self._bus = bus
        self._client = client
        self._state: ClusterState = state or MemoryState()
        distributed = state is not None and not isinstance(state, MemoryState)
        self._ledger = Ledger(
            storage,
            settings.costs,
            LedgerSpool(spool_path(settings.database, self.node_id if distributed else None)),
            settings.database.spool_replay_s,
        )
        self._registry = WorkerRegistry(settings.workers)
        self._control = ControlChannel(bus, self.node_id)
        self._connections = RealmConnectionManager()
        self._executor = QueryExecutor(self._registry, client, settings)
        self._queues = NodeQueues(
            settings.broker,
            self.node_id,
            storage,
            bus,
            self._registry,
            self._executor,
            self.finish,
            self._job_started,
            self._reroute,
        )
        self._processors = self._queues.processors
        self._shares = Shares(
            settings.queue, counters or MemoryCounters(), _longest_life_s(settings)
        )
        self._admission = Admission(settings.queue)  # HTTP callers wait for their share
        self._jobs = JobBook(
            bus, self._state, self._processors, self._shares, distributed=distributed
        )
        self._delivery = Delivery(bus, self._state, self._connections, self._delivered)
        self._users = UserDirectory(
            storage,
            self._connections,
            self._control,
            lambda guid: self.terminate_user(guid, broadcast=False),
            self._delivery.tell_about,
        )
        self.fleet = Fleet(
            settings,
            storage,
            self._registry,
            self._control,
            self._delivery.broadcast,
            self._queue_changed,
            client=client,
            is_leader=lambda: self._state.try_lead(
                "health", self.node_id, settings.workers.health_check_interval * 3
            ),
            distributed=distributed,
            alone=(
                (lambda: bus.alone_on(CONTROL_CHANNEL))
                if isinstance(bus, RedisBus)
                else (lambda: False)
            ),
        )
        if distributed:
            self._registry.cluster = self._state
            self._registry.on_cluster_release = self.fleet.announce_slot_free
            perf = settings.performance
            self._registry.lease_s = max(perf.query_timeout, perf.imagine_timeout) + 60
        self.sockets = Sockets(
            settings.performance,
            settings.chunking,
            self._connections,
            deliver_pending=self._delivery.deliver_pending,
            users_changed=lambda: self._notifier.users_changed(),
            realm_for_user=self._queues.realm_for_user,
        )
        self._notifier = QueueNotifier(
            settings.queue,
            bus,
            self._processors,
            self._connections,
            self._registry,
            self._jobs.depth,
            self.finish,
        )
        self._metrics = RealmMetricsCollector(self._queues.router_stats)
        self._metrics.registry.register(UploadGauges(self.sockets.uploads))
        self.views = BrokerViews(
            node_id=self.node_id,
            server=settings.server,
            storage=storage,
            bus=bus,
            registry=self._registry,
            fleet=self.fleet,
            connections=self._connections,
            processors=self._processors,
            metrics=self._metrics,
            realms=lambda: self._queues.realms,
            depth=self._jobs.depth,
        )
        parts = StreamParts(
            registry=self._registry,
            client=client,
            timeout_s=self._executor.timeout_for("chat"),
            validate=self.validate,
            route=self._queues.route,
            selector_for=self._queues.selector_for,
            finish=self.finish,
            admission=self._admission,
            shares=self._shares,
            share_wait_s=settings.queue.queue_timeout,
        )
        self._direct = DirectCalls(self.node_id, parts, self._delivery)
        # Only Redis forgets jobs behind a live node's back (a restart without persistence).
        self._sweeper: LostJobSweeper | None = None
        if distributed and isinstance(bus, RedisBus):
            self._sweeper = LostJobSweeper(
                SweeperParts(
                    node_id=self.node_id,
                    state=self._state,
                    holds=bus.holding,
                    running_here=self._jobs.running_here,
                    queue_of=self._jobs.queue_of,
                    finish=self.finish,
                    settle=self._settle,
                    publish=self._delivery.publish,
                    refund=self._ledger.refund,
                    registry=self._metrics.registry,
                ),
                settings.broker.lost_job_check_s,
            )
        self._running_on_take = isinstance(bus, RedisBus) and isinstance(self._state, RedisState)
        self._housekeeping: asyncio.Task[None] | None = None
        self._control.on(Cancel, self._on_cancel)
        self._control.on(Terminate, self._on_terminate)
        self._control.on(RealmsChanged, self._on_realms_changed)
        self._control.on(ShardsChanged, self._on_shards_changed)

    # lifecycle

    async def start(self) -> None:
        """Migrate the database, load workers, start consumers and periodic jobs."""
        await self._storage.migrate()
        self._ledger.start()  # first replays what a previous run left in the spool
        await self.fleet.load()
        # Subscribe first: a channel subscribed before start is live when start returns.
        self._delivery.subscribe()
        self._control.subscribe()
        await self._bus.start()
        await self._queues.start()
        self.fleet.start_probes()
        self._notifier.start()
        self._shares.start()
        if self._sweeper is not None:
            self._sweeper.start()
        self._housekeeping = asyncio.create_task(self._housekeeping_loop(), name="housekeeping")

    async def _housekeeping_loop(self) -> None:
        """Every ``WATCHDOG_INTERVAL_S``: revive stuck consumers, expire uploads, re-read sysops."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            self._queues.watchdog()
            self.sockets.uploads.expire()
            try:
                await self._users.recheck_sysops()
            except StorageError as exc:
                logger.warning("could not re-read sysop rights: %s", exc)

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop consuming, drain running jobs, then stop periodic jobs and the bus."""
        if self._housekeeping is not None:  # first, so it does not restart stopped processors
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self._sweeper is not None:  # before the ledger closes: it may still fail lost jobs
            await self._sweeper.stop()
        await self._queues.stop(drain_timeout_s)
        await self._ledger.close()
        await self.fleet.stop_probes()
        await self._notifier.stop()
        await self._shares.stop()
        self._delivery.close()
        await self._bus.close()

    def parts(self) -> BrokerParts:
        """The parts the federation, scaler and worker registration services need."""
        return BrokerParts(self._registry, self._client, self._metrics, self._state, self._bus)

    @property
    def realms(self) -> RealmService | None:
        """The realms of this node (the admin API changes them); None in legacy mode."""
        return self._queues.realms

    # users

    async def connect_user(self, guid: str, *, fresh: bool = False) -> User:
        """The user behind a connecting socket (created on first sight; ``fresh``: new GUID)."""
        return await self._users.connect(guid, fresh=fresh)

    async def get_user(self, guid: str) -> User | None:
        """A user by GUID (read from the database)."""
        return await self._users.get(guid)

    async def cached_user(self, guid: str) -> User | None:
        """A user by GUID, from a short-lived cache that bans and renames invalidate."""
        return await self._users.cached(guid)

    async def user_of_key(self, key: str) -> User | None:
        """The owner of a live API key."""
        return await self._users.of_key(key)

    async def revoke_api_key(self, prefix: str, user_guid: str | None = None) -> bool:
        """Revoke a live API key by prefix; every node's key cache forgets it at once."""
        return await self._users.revoke_key(prefix, user_guid)

    @property
    def api_keys(self) -> KeyStore:
        """The API key store (users create, list and revoke their own keys)."""
        return self._users.keys

    async def sysop_rights(self, guid: str) -> bool:
        """Whether ``guid`` is a sysop now (read afresh); the user's open sockets follow."""
        return await self._users.sysop_rights(guid)

    async def set_nickname(self, guid: str, nickname: str) -> User:
        """Rename a user; ``QueryRejected`` when the name is invalid or taken."""
        return await self._users.set_nickname(guid, nickname)

    async def set_banned(self, guid: str, banned: bool) -> bool:
        """Ban (closing every live session of the user on every node) or unban."""
        return await self._users.set_banned(guid, banned)

    # queries

    async def route(self, query: Query) -> str:
        """The queue a query goes to: its realm, or the legacy queue as the fallback."""
        return await self._queues.route(query)

    async def _reroute(self, jobs: list[Job]) -> None:
        """Queue jobs taken out of a stopped or deleted realm again, wherever they now go."""
        for job in jobs:
            job.realm = await self.route(job.query)
            self._jobs.moved(job)
            await self._bus.enqueue(job.realm, job)
        self._queue_changed()

    async def queue_depth(self) -> int:
        """Waiting plus running jobs, all queues (all nodes in a cluster)."""
        return await self._jobs.depth()

    def timeout_for(self, query_type: str) -> float:
        """Per-attempt worker deadline for a query type."""
        return self._executor.timeout_for(query_type)

    def share(self, user_guid: str) -> AbstractAsyncContextManager[None]:
        """Hold one of an HTTP caller's slots, waiting for it (:class:`Admission`)."""
        return self._admission.share(user_guid)

    async def validate(self, user_guid: str, query: Query) -> Query:
        """Check a query before it is queued or streamed; the query as it will run.

        Raises ``QueryRejected`` (banned user, prompt too long or empty, missing
        image or audio, bad image) or ``NoWorkerAvailable``; images come back
        preprocessed.
        """
        self._storage.check_available(user_guid)  # the user's shard is down: a clear error
        user = await self._users.cached(user_guid)
        if user is None:
            raise QueryRejected("Unknown user")
        if user.is_banned:
            raise QueryRejected(BANNED_MESSAGE)
        limit = self.settings.queue.max_prompt_chars
        if len(query.prompt) > limit:
            raise QueryRejected(f"Prompt too long (limit {limit} characters)")
        if query.query_type == "vision":
            if not query.image:
                raise QueryRejected("A vision query needs an image")
            image = await preprocess_image(query.image, self.settings.chunking.max_image_bytes)
            query = query.model_copy(update={"image": image})
        elif query.query_type == "speech" and not query.audio:
            raise QueryRejected("A speech query needs audio")
        elif query.query_type in ("chat", "imagine") and not query.prompt.strip():
            raise QueryRejected("The prompt is empty")
        self._registry.check_servable(query)
        if query.query_type == "speech" or query.model_type == "speech":
            self._registry.check_type_servable("speech")
        return query

    async def submit(self, user_guid: str, query: Query, *, want_result: bool = False) -> Job:
        """Validate and queue a query; ``QueryRejected`` says why not.

        ``ShareFull`` when the user's share (counted on every node) is used up.
        """
        job, _depth = await self.submit_counted(user_guid, query, want_result=want_result)
        return job

    async def submit_counted(
        self, user_guid: str, query: Query, *, want_result: bool = False
    ) -> tuple[Job, int]:
        """:meth:`submit`, also answering the queue depth with the new job counted.

        The depth is the one read for the ``max_queue_size`` check (one read
        serves both: a WebSocket submit tells it in ``query_queued``).
        """
        query = await self.validate(user_guid, query)
        if self._jobs.one_step():  # Redis: depth check, share and enqueue in one script
            queue = await self.route(query)
            job = Job(user_guid=user_guid, query=query, realm=queue, origin_node=self.node_id)
            if want_result:
                self._delivery.expect(job.job_id)
            try:
                depth = await self._jobs.add_queued(job, self.settings.queue.max_queue_size)
            except BaseException:
                self._delivery.drop(job.job_id)
                raise
            return self._queued(job), depth
        depth = await self._jobs.depth()
        if depth >= self.settings.queue.max_queue_size:
            raise QueueFull("Queue is full, please try again later")
        queue = await self.route(query)
        job = Job(user_guid=user_guid, query=query, realm=queue, origin_node=self.node_id)
        await self._jobs.add(job)
        try:
            if want_result:
                self._delivery.expect(job.job_id)
            await self._bus.enqueue(queue, job)
        except BaseException:
            self._delivery.drop(job.job_id)
            await self._jobs.drop(job.job_id)
            raise
        return self._queued(job), depth + 1

    def _queued(self, job: Job) -> Job:
        """``job`` is in its queue: watch it (Redis mode) and schedule a ``queue_update``."""
        if self._sweeper is not None:
            self._sweeper.watch(job)
        self._queue_changed()
        return job

    def stream(self, user_guid: str, query: Query) -> QueryStream:
        """Stream a chat ``query`` straight from a worker (see :mod:`rentahal.streaming`)."""
        return self._direct.stream(user_guid, query)

    async def run_direct(
        self,
        user_guid: str,
        query: Query,
        call: Callable[[SpeechCall], Awaitable[str]],
        *,
        prompt_is_result: bool = False,
    ) -> Result:
        """Run a speech call outside the queue (whisper, bark), finished like a queued job."""
        return await self._direct.run(user_guid, query, call, prompt_is_result=prompt_is_result)

    async def wait_result(self, job_id: str, timeout_s: float | None = None) -> Result:
        """Wait for a job submitted with ``want_result=True``."""
        return await self._delivery.wait(job_id, timeout_s)

    async def position_of(self, job_id: str) -> int | None:
        """1-based position among waiting jobs of its queue; None when not waiting."""
        return await self._jobs.position_of(job_id)

    async def pending_jobs(self, user_guid: str) -> list[str]:
        """Ids of the user's jobs that are waiting or running (on any node)."""
        return await self._jobs.pending(user_guid)

    async def transcribe(self, audio: bytes, call: SpeechCall | None = None) -> str:
        """Speech to text on a speech worker (``call`` learns which worker answered)."""
        return await self._executor.transcribe(audio, call)

    async def speak(self, text: str, call: SpeechCall | None = None) -> bytes:
        """Text to speech on a speech worker (``call`` learns which worker answered)."""
        return await self._executor.speak(text, call)

    # cancelling

    async def cancel(self, user_guid: str, job_id: str, *, by_sysop: bool = False) -> bool:
        """Cancel a queued or running job of ``user_guid`` (sysops: of anyone), on any node."""
        job = await self._jobs.take_waiting(job_id)
        if job is not None:
            if job.user_guid != user_guid and not by_sysop:
                await self._bus.requeue(job.realm, job)
                return False
            await self._finish_cancelled(job)
            return True
        running = await self._jobs.running_where(job_id)
        if running is None:
            return False
        node, owner = running
        if owner != user_guid and not by_sysop:
            return False
        if node == self.node_id:
            return self._jobs.cancel_here(job_id)
        await self._control.publish(Cancel(job_id=job_id, node=node))
        return True

    async def _on_realms_changed(self, message: RealmsChanged) -> None:
        self._queues.realms_changed()

    async def _on_shards_changed(self, message: ShardsChanged) -> None:
        self._storage.directory_changed()

    async def _on_cancel(self, message: Cancel) -> None:
        self._jobs.cancel_here(message.job_id)

    async def _finish_cancelled(self, job: Job) -> None:
        job.move_to(QueryState.CANCELLED)
        await self.finish(
            job,
            Result.of(
                job,
                "cancelled",
                error="Cancelled",
                queue_wait=max(0.0, time.time() - job.submitted_at),
            ),
        )

    async def terminate_user(self, guid: str, *, broadcast: bool = True) -> int:
        """Drop every queued and running job of ``guid`` on every node."""
        waiting = await self._jobs.take_waiting_of(guid)
        for job in waiting:
            await self._finish_cancelled(job)
        await self._on_terminate(Terminate(guid=guid))
        await self._control.publish(Terminate(guid=guid))
        if broadcast:
            await self._delivery.tell_about(guid, {"type": "query_terminated", "guid": guid})
        self._queue_changed()
        return len(waiting)

    async def _on_terminate(self, message: Terminate) -> None:
        for job in self._jobs.running_of(message.guid):
            self._jobs.cancel_here(job.job_id)

    # finishing

    async def _job_started(self, job: Job) -> None:
        """A processor of this node started ``job`` (so cancels can find it).

        The Redis bus noted it in the running set when it was taken (same step).
        """
        if not self._running_on_take:
            await self._state.set_running(job.job_id, self.node_id, job.user_guid)

    async def finish(self, job: Job, result: Result) -> Result:
        """Price, record, meter and publish a finished job, once (runs shielded).

        Every way in ends here: queued jobs, streamed chats, direct speech
        calls, cancels, expiries and lost jobs. A job run twice (its node was
        presumed dead) is recorded and delivered only by the first run to
        finish. The result goes to the user's mailbox before the job leaves the
        queue and the running set, so a job is always findable somewhere (see
        :mod:`rentahal.lost_jobs`); a result Redis cannot take is delivered on
        this node and kept for a later try. Returns the result as priced and
        recorded.
        """
        result = self._ledger.price(result)
        first, user = True, None
        try:
            first, user = await self._ledger.record_with_totals(job, result)
        except LedgerDeferred:
            result = result.model_copy(update={"recorded": False, "recorded_later": True})
        except StorageError as exc:
            logger.error("could not record job %s: %s", job.job_id, exc)
            result = result.model_copy(update={"recorded": False})
        payload: dict[str, Any] | None = None
        posted = False
        if first:
            self._metrics.observe(result)
            self._notifier.observe(result)
            if user is not None:
                result = result.model_copy(update={"user": user})
                self._users.remember(user)
            payload = result.model_dump()
            # The job's share leases, when they are in Redis too, go in the same step.
            shares = self._shares.take_over(job.job_id) if self._jobs.one_step() else []
            if await self._delivery.keep_and_publish(job.realm, job.job_id, payload, shares):
                await self._delivery.deliver_finished(result)
                self._queue_changed()
                return result
            if shares:
                self._shares.adopt(job.job_id, shares)  # released as before, on delivery
            posted = await self._delivery.keep(job.user_guid, payload, finished=job.job_id)
        try:
            if not posted:  # a kept result left the running set with it
                await self._state.clear_running(job.job_id)
            await self._bus.ack(job.realm, job.job_id)
        except BusError as exc:  # a Redis that restarted has forgotten both anyway
            logger.warning("could not clear job %s from the queue: %s", job.job_id, exc)
        if payload is None:
            return result
        delivered = await self._delivery.publish(payload)
        if not posted and self._sweeper is not None:
            await self._sweeper.hold(job.user_guid, payload, delivered=delivered)
        self._queue_changed()
        return result

    async def _delivered(self, job_id: str) -> None:
        """A result reached this node: its job is settled here."""
        await self._jobs.settle(job_id)
        self._notifier.forget(job_id)
        if self._sweeper is not None:
            self._sweeper.forget(job_id)

    async def _settle(self, job_id: str) -> None:
        """Forget a job this node queued (settled elsewhere or lost): its user's share is free."""
        if await self._jobs.settle(job_id):
            self._notifier.forget(job_id)
            self._queue_changed()

    # broadcasts

    async def broadcast(self, message: dict[str, Any], *, sysops_only: bool = False) -> None:
        """Send to every connected client on every node."""
        await self._delivery.broadcast(message, sysops_only=sysops_only)

    def _queue_changed(self) -> None:
        """Schedule a ``queue_update`` broadcast soon (coalesced)."""
        self._notifier.changed()

    def database(self, user_guid: str | None = None) -> Storage:
        """The storage for ``user_guid``'s data (its shard), else the main database."""
        return self._storage if user_guid is None else self._storage.for_user(user_guid)
