"""The Broker: the one entry point that the WebSocket, HTTP and federation layers call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from rentahal.admission import Admission
from rentahal.backends import HttpClient
from rentahal.backends.health import HealthMonitor
from rentahal.bus.base import Bus
from rentahal.bus.counters import MemoryCounters, ShareCounters
from rentahal.bus.redis import RedisBus
from rentahal.bus.state import ClusterState, MemoryState
from rentahal.config import Settings
from rentahal.errors import BusError, LedgerDeferred, QueryRejected, QueueFull, StorageError
from rentahal.fleet import CONTROL_CHANNEL, Fleet
from rentahal.lost_jobs import LostJobSweeper
from rentahal.models import (
    Job,
    Query,
    QueryState,
    Result,
    User,
)
from rentahal.nicknames import normalize_nickname
from rentahal.realms.connections import Connection, RealmConnectionManager
from rentahal.realms.execution import QueryExecutor, SpeechCall
from rentahal.realms.metrics import RealmMetricsCollector
from rentahal.realms.notifier import QueueNotifier
from rentahal.realms.processor import QueryProcessor
from rentahal.realms.router import RouterStats
from rentahal.realms.service import RealmService, load_shared
from rentahal.realms.store import RealmStore
from rentahal.realms.sync import REALMS_CHANGED
from rentahal.realms.workers import WorkerRegistry
from rentahal.shares import Shares
from rentahal.storage.database import Storage
from rentahal.storage.ledger import Ledger
from rentahal.storage.spool import LedgerSpool, spool_path
from rentahal.vision import ChunkAssembler, UploadGauges, preprocess_image

logger = logging.getLogger(__name__)

LEGACY_QUEUE = "$LEGACY"
BROADCAST_CHANNEL = "broadcast"
RESULTS_CHANNEL = "results"
WATCHDOG_INTERVAL_S = 2.0
# A processor whose loop has not beaten for this long is stuck and restarted.
STUCK_AFTER_S = 5 * WATCHDOG_INTERVAL_S
USER_CACHE_S = 10.0
_ACTIVE = (QueryState.QUEUED, QueryState.DISPATCHED, QueryState.RUNNING)
USER_CACHE_SIZE = 100_000
NOT_RECORDED = "The query ran but could not be recorded: database unavailable"
NOT_RECORDED_LATER = (
    "The query ran but could not be recorded yet: database unavailable; "
    "it will be recorded when the database is back"
)


def user_totals(user: User) -> dict[str, Any]:
    """The running totals a result frame carries (``user_totals``; no identity)."""
    return {
        "query_count": user.query_count,
        "total_query_time": user.total_query_time,
        "total_cost": user.total_cost,
    }


def _longest_life_s(settings: Settings) -> float:
    """How long a query can live at most: its queue wait plus every attempt and speech step."""
    perf = settings.performance
    attempts = settings.workers.max_attempts * max(perf.query_timeout, perf.imagine_timeout)
    return settings.queue.queue_timeout + attempts + 2 * perf.query_timeout + 60


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
        self.storage = storage
        self.bus = bus
        self.client = client
        self.node_id = settings.broker.resolved_node_id()
        self.state: ClusterState = state or MemoryState()
        self.distributed = state is not None and not isinstance(state, MemoryState)
        self.ledger = Ledger(
            storage,
            settings.costs,
            LedgerSpool(spool_path(settings.database, self.node_id if self.distributed else None)),
            settings.database.spool_replay_s,
        )
        self.registry = WorkerRegistry(settings.workers)
        self.fleet = Fleet(self)
        if self.distributed:
            self.registry.cluster = self.state
            self.registry.on_cluster_release = self.fleet.announce_slot_free
            perf = settings.performance
            self.registry.lease_s = max(perf.query_timeout, perf.imagine_timeout) + 60
        self.executor = QueryExecutor(self.registry, client, settings)
        self.connections = RealmConnectionManager()
        self.uploads = ChunkAssembler(settings.chunking)
        self.shares = Shares(
            settings.queue, counters or MemoryCounters(), _longest_life_s(settings)
        )
        self.processors: dict[str, QueryProcessor] = {}
        self.health = HealthMonitor(
            self.registry.workers,
            client,
            self.registry.rules,
            settings.workers,
            self.fleet.health_changed,
            is_leader=lambda: self.state.try_lead(
                "health", self.node_id, settings.workers.health_check_interval * 3
            ),
            open_circuits=self.registry.open_circuits,
            on_probe_ok=self.registry.probe_succeeded,
        )
        self._waiters: dict[str, asyncio.Future[Result]] = {}
        # job_id -> (queue, user_guid) of jobs queued from this node and not yet delivered
        self._owner: dict[str, tuple[str, str]] = {}
        self.admission = Admission(settings.queue)  # HTTP callers wait for their share
        self.notifier = QueueNotifier(self)
        self.most_connected = 0
        self._users: dict[str, tuple[float, User]] = {}
        self.realms: RealmService | None = None
        self.metrics = RealmMetricsCollector(
            lambda: self.realms.router.stats if self.realms else RouterStats()
        )
        self.metrics.registry.register(UploadGauges(self.uploads))
        self._watchdog: asyncio.Task[None] | None = None
        self.stuck_after_s = STUCK_AFTER_S
        # Only Redis forgets jobs behind a live node's back (a restart without persistence).
        self.sweeper: LostJobSweeper | None = None
        if self.distributed and isinstance(bus, RedisBus):
            self.sweeper = LostJobSweeper(self, bus.holding, settings.broker.lost_job_check_s)

    async def start(self) -> None:
        """Migrate the database, load workers, start consumers and periodic jobs."""
        await self.storage.migrate()
        self.ledger.start()  # first replays what a previous run left in the spool
        await self.fleet.load()
        # Subscribe first: a channel subscribed before start is live when start returns.
        self.bus.subscribe(BROADCAST_CHANNEL, self._on_broadcast)
        self.bus.subscribe(RESULTS_CHANNEL, self._on_result)
        self.bus.subscribe(CONTROL_CHANNEL, self._on_control)
        await self.bus.start()
        self._add_processor(LEGACY_QUEUE)
        await self._start_realms()
        self.health.start()
        self.notifier.start()
        self.shares.start()
        if self.sweeper is not None:
            self.sweeper.start()
        self._watchdog = asyncio.create_task(self._watchdog_loop(), name="realm-watchdog")

    async def _start_realms(self) -> None:
        if not self.settings.broker.realms_enabled:
            return
        path = Path(self.settings.broker.realms_file)
        store = RealmStore(self.storage)
        stored = await load_shared(store, path, self.node_id)
        if not stored.file.enabled:
            return
        self.realms = RealmService(
            stored,
            path,
            store,
            self.bus,
            self.registry,
            self.executor,
            self.finish,
            self.processors,
            reroute=self.reroute,
            control_channel=CONTROL_CHANNEL,
            node_id=self.node_id,
            on_start=self.job_started,
        )
        self.realms.start()

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            self.watchdog(self.stuck_after_s)
            self.uploads.expire()
            try:
                await self.recheck_sysops()
            except StorageError as exc:
                logger.warning("could not re-read sysop rights: %s", exc)

    def watchdog(self, stuck_after_s: float) -> list[str]:
        """Restart processors that died or have not beaten for ``stuck_after_s``."""
        restarted = []
        legacy = self.processors.get(LEGACY_QUEUE)
        if legacy is not None and legacy.revive(stuck_after_s):
            restarted.append(LEGACY_QUEUE)
        if self.realms is not None:
            restarted += self.realms.watchdog(stuck_after_s)
        return restarted

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop consuming, drain running jobs, then stop periodic jobs and the bus."""
        if self._watchdog is not None:  # first, so it does not restart stopped processors
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self.realms is not None:
            await self.realms.close()
        if self.sweeper is not None:  # before the ledger closes: it may still fail lost jobs
            await self.sweeper.stop()
        await asyncio.gather(*(p.stop(drain_timeout_s) for p in self.processors.values()))
        await self.ledger.close()
        await self.health.stop()
        await self.notifier.stop()
        await self.shares.stop()
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        await self.bus.close()

    def _add_processor(self, queue: str) -> QueryProcessor:
        processor = QueryProcessor(
            queue, self.bus, self.registry, self.executor, self.finish, on_start=self.job_started
        )
        self.processors[queue] = processor
        processor.start()
        return processor

    async def connect_user(self, guid: str) -> User:
        """The user behind a connecting socket (created on first sight)."""
        return await self.storage.for_user(guid).get_or_create_user(guid)

    async def get_user(self, guid: str) -> User | None:
        """A user by GUID (read from the database)."""
        user = await self.storage.for_user(guid).get_user(guid)
        if user is not None:
            self._users[guid] = (time.monotonic(), user)
        return user

    async def cached_user(self, guid: str) -> User | None:
        """A user by GUID, from a short-lived cache that bans and renames invalidate."""
        hit = self._users.get(guid)
        if hit is not None and time.monotonic() - hit[0] < USER_CACHE_S:
            return hit[1]
        return await self.get_user(guid)

    async def sysop_rights(self, guid: str) -> bool:
        """Whether ``guid`` is a sysop now (read afresh: rights may change in another process).

        Open sockets of the user follow the answer.
        """
        user = await self.get_user(guid)
        rights = user is not None and user.is_sysop and not user.is_banned
        self.connections.set_sysop(guid, rights)
        return rights

    async def recheck_sysops(self) -> None:
        """Re-read the rights of users with a sysop socket here (a revoke without Redis)."""
        for guid in self.connections.sysop_users():
            await self.sysop_rights(guid)

    def _forget_user(self, guid: str) -> None:
        self._users.pop(guid, None)
        if len(self._users) > USER_CACHE_SIZE:
            self._users.clear()

    async def set_nickname(self, guid: str, nickname: str) -> User:
        """Rename a user; ``QueryRejected`` when the name is invalid or taken."""
        nickname = normalize_nickname(nickname)
        if not await self.storage.for_user(guid).set_nickname(guid, nickname):
            raise QueryRejected("Nickname already taken")
        self._forget_user(guid)
        user = await self.get_user(guid)
        assert user is not None
        return user

    async def set_banned(self, guid: str, banned: bool) -> bool:
        """Ban (closing every live session of the user on every node) or unban."""
        if not await self.storage.for_user(guid).set_banned(guid, banned):
            return False
        self._forget_user(guid)
        if banned:
            await self.terminate_user(guid, broadcast=False)
        await self.bus.publish(CONTROL_CHANNEL, {"op": "ban" if banned else "unban", "guid": guid})
        await self.tell_about(
            guid, {"type": "user_banned" if banned else "user_unbanned", "guid": guid}
        )
        return True

    async def route(self, query: Query) -> str:
        """The queue a query goes to: its realm, or the legacy queue as the fallback."""
        if self.realms is None:
            return LEGACY_QUEUE
        return await self.realms.route(query) or LEGACY_QUEUE

    def realm_for_user(self, guid: str) -> str | None:
        """The realm a user's connections are grouped in."""
        return self.realms.registry.assign_user(guid) if self.realms else None

    async def reroute(self, jobs: list[Job]) -> None:
        """Queue jobs taken out of a stopped or deleted realm again, wherever they now go."""
        for job in jobs:
            queue = await self.route(job.query)
            job.realm = queue
            if job.job_id in self._owner:
                self._owner[job.job_id] = (queue, job.user_guid)
            await self.bus.enqueue(queue, job)
        self.queue_changed()

    async def queue_depth(self) -> int:
        """Waiting plus running jobs, all queues (all nodes in a cluster)."""
        waiting = sum([await self.bus.depth(q) for q in list(self.processors)])
        if self.distributed:
            return waiting + await self.state.running_count()
        return waiting + sum(p.in_flight for p in self.processors.values())

    async def validate(self, user_guid: str, query: Query) -> Query:
        """Check a query before it is queued or streamed; the query as it will run.

        Raises ``QueryRejected`` (banned user, prompt too long or empty, missing
        image or audio, bad image) or ``NoWorkerAvailable``; images come back
        preprocessed.
        """
        user = await self.cached_user(user_guid)
        if user is None:
            raise QueryRejected("Unknown user")
        if user.is_banned:
            raise QueryRejected("You are banned from using this service.")
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
        self.registry.check_servable(query)
        if query.query_type == "speech" or query.model_type == "speech":
            self.registry.check_type_servable("speech")
        return query

    async def submit(self, user_guid: str, query: Query, *, want_result: bool = False) -> Job:
        """Validate and queue a query; ``QueryRejected`` says why not."""
        query = await self.validate(user_guid, query)
        limits = self.settings.queue
        if await self.queue_depth() >= limits.max_queue_size:
            raise QueueFull("Queue is full, please try again later")
        queue = await self.route(query)
        job = Job(user_guid=user_guid, query=query, realm=queue, origin_node=self.node_id)
        await self.shares.admit(job.job_id, user_guid)
        try:
            if want_result:
                self._waiters[job.job_id] = asyncio.get_running_loop().create_future()
            self._owner[job.job_id] = (queue, user_guid)
            await self.bus.enqueue(queue, job)
        except BaseException:
            self._owner.pop(job.job_id, None)
            self._waiters.pop(job.job_id, None)
            await asyncio.shield(self.shares.release(job.job_id))
            raise
        if self.sweeper is not None:
            self.sweeper.watch(job)
        self.queue_changed()
        return job

    def owned_queue(self, job_id: str) -> str | None:
        """The queue of a job this node queued and has not settled yet."""
        entry = self._owner.get(job_id)
        return entry[0] if entry is not None else None

    async def release_owned(self, job_id: str) -> None:
        """Forget a job this node queued (settled elsewhere or lost): its user's share is free."""
        if self.shares.holds(job_id):
            await self.shares.release(job_id)
        if self._owner.pop(job_id, None) is not None:
            self.notifier.forget(job_id)
            self.queue_changed()

    async def position_of(self, job_id: str) -> int | None:
        """1-based position among waiting jobs of its queue; None when not waiting."""
        entry = self._owner.get(job_id)
        if entry is None:
            return None
        for index, job in enumerate(await self.bus.waiting(entry[0]), start=1):
            if job.job_id == job_id:
                return index
        return None

    async def pending_jobs(self, user_guid: str) -> list[str]:
        """Ids of the user's jobs that are waiting or running (on any node)."""
        jobs = [
            job.job_id
            for queue in list(self.processors)
            for job in await self.bus.waiting(queue)
            if job.user_guid == user_guid
        ]
        # A finished job stays in running_jobs until its task's callback runs.
        jobs += [
            job_id
            for processor in list(self.processors.values())
            for job_id, job in list(processor.running_jobs.items())
            if job.user_guid == user_guid and job.state in _ACTIVE
        ]
        jobs += [
            job_id
            for job_id, (_queue, guid) in self._owner.items()
            if guid == user_guid and job_id not in jobs and await self.state.running(job_id)
        ]
        return jobs

    async def wait_result(self, job_id: str, timeout_s: float | None = None) -> Result:
        """Wait for a job submitted with ``want_result=True``."""
        fut = self._waiters[job_id]
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self._waiters.pop(job_id, None)

    async def cancel(self, user_guid: str, job_id: str, *, by_sysop: bool = False) -> bool:
        """Cancel a queued or running job of ``user_guid`` (sysops: of anyone), on any node."""
        for queue in list(self.processors):
            job = await self.bus.remove(queue, job_id)
            if job is None:
                continue
            if job.user_guid != user_guid and not by_sysop:
                await self.bus.requeue(queue, job)
                return False
            await self._finish_cancelled(job)
            return True
        running = await self.state.running(job_id)
        if running is None:
            return False
        node, owner = running
        if owner != user_guid and not by_sysop:
            return False
        if node == self.node_id:
            return self._cancel_local(job_id)
        await self.bus.publish(CONTROL_CHANNEL, {"op": "cancel", "job_id": job_id, "node": node})
        return True

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

    def _cancel_local(self, job_id: str) -> bool:
        return any(p.cancel(job_id) for p in list(self.processors.values()))

    async def terminate_user(self, guid: str, *, broadcast: bool = True) -> int:
        """Drop every queued and running job of ``guid`` on every node."""
        count = 0
        for queue in list(self.processors):
            for job in await self.bus.waiting(queue):
                if job.user_guid == guid and await self.bus.remove(queue, job.job_id):
                    await self._finish_cancelled(job)
                    count += 1
        await self.bus.publish(CONTROL_CHANNEL, {"op": "terminate", "guid": guid})
        if broadcast:
            await self.tell_about(guid, {"type": "query_terminated", "guid": guid})
        self.queue_changed()
        return count

    async def job_started(self, job: Job) -> None:
        """A processor of this node started ``job`` (so cancels can find it)."""
        await self.state.set_running(job.job_id, self.node_id, job.user_guid)

    async def finish(self, job: Job, result: Result) -> None:
        """Price, record and deliver a finished job, once (runs shielded).

        A job run twice (its node was presumed dead) is recorded and delivered
        only by the first run to finish. The result goes to the user's mailbox
        before the job leaves the queue and the running set, so a job is always
        findable somewhere (see :mod:`rentahal.lost_jobs`); a result Redis cannot
        take is delivered on this node and kept for a later try.
        """
        result = self.ledger.price(result)
        first, user = True, None
        try:
            first, user = await self.ledger.record_with_totals(job, result)
        except LedgerDeferred:
            result = result.model_copy(update={"recorded": False, "recorded_later": True})
        except StorageError as exc:
            logger.error("could not record job %s: %s", job.job_id, exc)
            result = result.model_copy(update={"recorded": False})
        payload: dict[str, Any] | None = None
        posted = False
        if first:
            self.metrics.observe(result)
            self.notifier.observe(result)
            if user is not None:
                result = result.model_copy(update={"user": user})
                self._users[user.guid] = (time.monotonic(), user)
            payload = result.model_dump()
            try:
                await self.state.post_result(job.user_guid, payload)
                posted = True
            except BusError as exc:
                logger.warning("could not keep the result of %s in a mailbox: %s", job.job_id, exc)
        try:
            await self.state.clear_running(job.job_id)
            await self.bus.ack(job.realm, job.job_id)
        except BusError as exc:  # a Redis that restarted has forgotten both anyway
            logger.warning("could not clear job %s from the queue: %s", job.job_id, exc)
        if payload is None:
            return
        delivered = await self.publish_result(payload)
        if not posted and self.sweeper is not None:
            await self.sweeper.hold(job.user_guid, payload, delivered=delivered)
        self.queue_changed()

    async def publish_result(self, payload: dict[str, Any]) -> bool:
        """Send a result to every node; delivered on this one when the bus cannot carry it.

        ``False`` when it was neither published nor received by a socket here.
        """
        try:
            await self.bus.publish(RESULTS_CHANNEL, payload)
            return True
        except BusError as exc:
            logger.warning("could not publish the result of %s: %s", payload["job_id"], exc)
            return await self._deliver_here(payload)

    async def _on_result(self, message: dict[str, Any]) -> None:
        await self._deliver_here(message)

    async def _deliver_here(self, message: dict[str, Any]) -> bool:
        """Hand a result to its waiter or the user's sockets on this node; whether any got it."""
        result = Result.model_validate(message)
        self._owner.pop(result.job_id, None)
        if self.shares.holds(result.job_id):
            await self.shares.release(result.job_id)
        self.notifier.forget(result.job_id)
        if self.sweeper is not None:
            self.sweeper.forget(result.job_id)
        fut = self._waiters.get(result.job_id)
        if fut is not None:
            if not fut.done():
                fut.set_result(result)
            await self._mark_delivered(result.job_id)
            return True
        if self.deliver(result, self.connections.of_user(result.user_guid)):
            await self._mark_delivered(result.job_id)
            return True
        return False

    async def _mark_delivered(self, job_id: str) -> None:
        try:
            await self.state.mark_delivered(job_id)
        except BusError as exc:
            logger.warning("could not note the delivery of %s: %s", job_id, exc)

    def deliver(self, result: Result, conns: list[Connection]) -> bool:
        """Send a result, with the user's updated totals in it, to sockets that lack it.

        No ``user_info`` follows, unlike before: the original client rebuilds its
        page (``init()``) on every ``user_info``, and the original sent none here.
        """
        frame = result.to_message()
        if result.user is not None:
            frame["user_totals"] = user_totals(result.user)
        frames = [frame]
        if not result.recorded:
            frames.append(
                {
                    "type": "error",
                    "job_id": result.job_id,
                    "message": NOT_RECORDED_LATER if result.recorded_later else NOT_RECORDED,
                }
            )
        sent = False
        for conn in conns:
            if conn.note_delivered(result.job_id):
                for frame in frames:
                    conn.send(frame)
                sent = True
        return sent

    async def deliver_pending(self, conn: Connection) -> None:
        """Results of the user that no socket received (they were offline): send them now."""
        for message in await self.state.undelivered(conn.user_guid):
            result = Result.model_validate(message)
            if self.deliver(result, [conn]):
                await self._mark_delivered(result.job_id)

    async def transcribe(self, audio: bytes, call: SpeechCall | None = None) -> str:
        """Speech to text on a speech worker (``call`` learns which worker answered)."""
        return await self.executor.transcribe(audio, call)

    async def speak(self, text: str, call: SpeechCall | None = None) -> bytes:
        """Text to speech on a speech worker (``call`` learns which worker answered)."""
        return await self.executor.speak(text, call)

    async def broadcast(self, message: dict[str, Any], *, sysops_only: bool = False) -> None:
        """Send to every connected client on every node."""
        await self.bus.publish(BROADCAST_CHANNEL, {"message": message, "sysops_only": sysops_only})

    async def tell_about(self, guid: str, message: dict[str, Any]) -> None:
        """Send a message about user ``guid`` to sysops and to that user only (every node).

        Such messages carry the GUID, which is the user's credential: no other
        user may see it.
        """
        await self.bus.publish(
            BROADCAST_CHANNEL, {"message": message, "sysops_only": True, "also_user": guid}
        )

    async def _on_broadcast(self, envelope: dict[str, Any]) -> None:
        self.connections.broadcast(
            envelope["message"],
            sysops_only=envelope["sysops_only"],
            also_user=envelope.get("also_user"),
        )

    async def _on_control(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op in ("ban", "unban", "sysop"):
            self._forget_user(message["guid"])
        if op == "sysop":
            self.connections.set_sysop(message["guid"], bool(message.get("is_sysop")))
        if op == "ban":
            self.connections.close_user(
                message["guid"],
                {"type": "error", "message": "You are banned from using this service."},
            )
        elif op == "cancel" and message.get("node") == self.node_id:
            self._cancel_local(message["job_id"])
        elif op == "terminate":
            for processor in list(self.processors.values()):
                for job_id, job in list(processor.running_jobs.items()):
                    if job.user_guid == message["guid"]:
                        processor.cancel(job_id)
        elif op == REALMS_CHANGED:
            if self.realms is not None:
                self.realms.sync.notify()
        else:
            await self.fleet.handle_control(message)

    def queue_changed(self) -> None:
        """Schedule a ``queue_update`` broadcast soon (coalesced)."""
        self.notifier.changed()
