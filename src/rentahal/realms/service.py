"""RealmService: runs this node's realms and is the one way to change the shared configuration.

Realms and pools are cluster state (:mod:`rentahal.realms.store`). A change
is validated against the newest stored version, written with a version
check, applied here, announced on the control channel and exported to
``realms.yml``; every other node applies it through :class:`RealmSync`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from rentahal.bus.base import Bus
from rentahal.errors import ConfigError, PoolNotFound, StaleVersion, StorageError
from rentahal.models import Job, Query
from rentahal.realms.config import (
    PoolConfig,
    RealmConfig,
    RealmsFile,
    load_realms,
    new_federation_id,
    save_realms,
    with_identity,
)
from rentahal.realms.execution import QueryExecutor
from rentahal.realms.manager import RealmWorkerManager
from rentahal.realms.processor import FinishHandler, QueryProcessor
from rentahal.realms.registry import RealmRegistry
from rentahal.realms.router import FederationRouter
from rentahal.realms.store import RealmStore, StoredRealms
from rentahal.realms.sync import RealmSync, realms_changed
from rentahal.realms.workers import WorkerRegistry

logger = logging.getLogger(__name__)

T = TypeVar("T")
Reroute = Callable[[list[Job]], Awaitable[None]]
# Keys of an admin request body that are not configuration fields.
_NOT_CONFIG = frozenset({"name", "stopped", "version"})
# Writes without a version retry on a concurrent write this often.
_WRITE_ATTEMPTS = 8


async def load_shared(store: RealmStore, path: Path | None, node_id: str = "") -> StoredRealms:
    """The shared configuration; seeded from ``path`` (or the defaults) when there is none."""
    stored = await store.load()
    if stored is not None:
        return stored
    if path is not None:
        seed = with_identity(path, load_realms(path))
    else:
        seed = RealmsFile(federation_id=new_federation_id())
    stored = await store.seed(seed, node_id)
    logger.info("realm configuration seeded from %s (version %d)", path, stored.version)
    return stored


class RealmService:
    """The realms of one broker node, kept at the shared configuration's newest version.

    ``processors`` is the broker's own map of queue name to processor; the
    service adds and removes its realms' entries there. ``reroute`` queues
    jobs taken out of a stopped or deleted realm again.
    """

    def __init__(
        self,
        stored: StoredRealms,
        path: Path | None,
        store: RealmStore,
        bus: Bus,
        workers: WorkerRegistry,
        executor: QueryExecutor,
        finish: FinishHandler,
        processors: dict[str, QueryProcessor],
        *,
        reroute: Reroute,
        control_channel: str,
        node_id: str = "",
        on_start: Callable[[Job], Awaitable[None]] | None = None,
        drain_timeout_s: float = 5.0,
    ) -> None:
        self.path = path
        self.store = store
        self.bus = bus
        self.workers = workers
        self.executor = executor
        self._finish = finish
        self.processors = processors
        self._reroute = reroute
        self._channel = control_channel
        self.node_id = node_id
        self._on_start = on_start
        self.drain_timeout_s = drain_timeout_s
        self.registry = RealmRegistry(stored.file, stored.stopped)
        self.version = stored.version
        self.router = FederationRouter(self.registry, workers)
        self.managers: dict[str, RealmWorkerManager] = {}
        self.sync = RealmSync(store, self._apply, lambda: self.version)
        self._running: set[str] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start a processor for every running realm, and the sync with the database."""
        for name, realm in self.registry.realms.items():
            if not realm.stopped:
                self._start_processor(name)
        self._export(startup=True)
        self.sync.start()

    def _start_processor(self, name: str) -> None:
        manager = self.managers.get(name)
        if manager is None:
            manager = self.managers[name] = RealmWorkerManager(
                name, self.workers, self.registry, self.router
            )
        processor = self.processors.get(name)
        if processor is None:
            processor = self.processors[name] = QueryProcessor(
                name,
                self.bus,
                self.workers,
                self.executor,
                self._finish,
                selector=manager,
                on_start=self._on_start,
            )
        processor.start()
        self._running.add(name)

    def _retire(self, name: str) -> None:
        """Stop a realm's processor in the background (running jobs finish)."""
        self._running.discard(name)
        processor = self.processors.pop(name, None)
        if processor is None:
            return
        task = asyncio.create_task(processor.stop(self.drain_timeout_s), name=f"retire:{name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def watchdog(self, stuck_after_s: float) -> list[str]:
        """Restart processors of running realms that died or are stuck; the restarted names."""
        restarted = []
        for name, realm in self.registry.realms.items():
            if realm.stopped:
                continue
            processor = self.processors.get(name)
            if processor is None:
                logger.warning("realm %s has no processor; starting one", name)
                self._start_processor(name)
                restarted.append(name)
            elif processor.revive(stuck_after_s):
                restarted.append(name)
        return restarted

    async def route(self, query: Query) -> str | None:
        """The realm for ``query`` or ``None`` (legacy path)."""
        return await self.router.route_query(query, self.bus.depth)

    # applying a stored version ---------------------------------------------

    async def _apply(self, stored: StoredRealms) -> None:
        """Bring this node to ``stored`` (ignored when not newer than what runs)."""
        async with self._lock:
            if stored.version <= self.version:
                return
            self.registry.replace(stored.file, stored.stopped)
            self.version = stored.version
            live = {n for n, r in self.registry.realms.items() if not r.stopped}
            halted = sorted(self._running - live)
            for name in halted:
                self._retire(name)
            for name in live:
                self._start_processor(name)
            for name in [n for n in self.managers if n not in self.registry.realms]:
                del self.managers[name]
            logger.info("realm configuration version %d applied", stored.version)
            self._export()
            # The changing node moves the waiting jobs; others find only those
            # queued in between (removal is atomic, so each job moves once).
            await self._reroute_waiting(halted)

    async def _reroute_waiting(self, names: list[str]) -> None:
        moved = []
        for name in names:
            for job in await self.bus.waiting(name):
                if await self.bus.remove(name, job.job_id) is not None:
                    moved.append(job)
        if moved:
            await self._reroute(moved)

    def _export(self, *, startup: bool = False) -> None:
        """Write ``realms.yml`` (atomically) when it differs from the running configuration."""
        if self.path is None:
            return
        try:
            on_disk = load_realms(self.path).model_dump()
        except ConfigError:
            on_disk = None
        if on_disk == self.registry.file.model_dump():
            return
        if startup and self.path.exists():
            logger.warning(
                "%s differs from the shared realm configuration (version %d); "
                "the shared one applies and the file is rewritten",
                self.path,
                self.version,
            )
        try:
            save_realms(self.path, self.registry.file)
        except OSError as exc:
            logger.warning("could not export the realm configuration to %s: %s", self.path, exc)

    # changing the shared configuration --------------------------------------

    async def _change(self, mutate: Callable[[RealmRegistry], T], version: int | None) -> T:
        """Apply ``mutate`` to the newest stored version and write it as the next one.

        ``version`` given: the write must be based on it, else ``StaleVersion``.
        Not given: the change is made to whatever version is newest (a
        concurrent write makes it retry on the newer one).
        """
        for _attempt in range(_WRITE_ATTEMPTS):
            current = await self.store.load()
            if current is None:
                raise StorageError("the realm configuration is missing from the database")
            if version is not None and current.version != version:
                raise StaleVersion(version, current.version)
            draft = RealmRegistry(current.file.model_copy(deep=True), current.stopped)
            outcome = mutate(draft)
            checked = RealmsFile.model_validate(draft.file.model_dump())
            try:
                saved = await self.store.save(
                    checked, draft.stopped_names(), current.version, self.node_id
                )
            except StaleVersion:
                if version is not None:
                    raise
                continue
            await self._apply(saved)
            await self.bus.publish(self._channel, realms_changed(saved.version, self.node_id))
            return outcome
        raise StorageError("the realm configuration kept changing under this write; try again")

    async def create_realm(
        self, name: str, fields: dict[str, Any], version: int | None = None
    ) -> None:
        """Add a realm (and start it everywhere)."""
        config = RealmConfig.model_validate(_config_fields(fields))
        await self._change(lambda reg: reg.create(name, config), version)

    async def update_realm(
        self, name: str, fields: dict[str, Any], version: int | None = None
    ) -> None:
        """Change some of a realm's fields; ``"stopped": true|false`` stops or resumes it."""
        stopped = fields.get("stopped")

        def mutate(reg: RealmRegistry) -> None:
            realm = reg.get(name)
            merged = {**realm.config.model_dump(), **_config_fields(fields)}
            reg.update(name, RealmConfig.model_validate(merged))
            if isinstance(stopped, bool):
                realm.stopped = stopped

        await self._change(mutate, version)

    async def stop_realm(self, name: str, version: int | None = None) -> None:
        """Stop a realm on every node; its waiting jobs are re-routed."""
        await self.update_realm(name, {"stopped": True}, version)

    async def start_realm(self, name: str, version: int | None = None) -> None:
        """Resume a stopped realm on every node."""
        await self.update_realm(name, {"stopped": False}, version)

    async def delete_realm(self, name: str, version: int | None = None) -> None:
        """Delete a (non-primary) realm; its waiting jobs are re-routed."""
        await self._change(lambda reg: reg.delete(name), version)

    async def set_pool(
        self, name: str, fields: dict[str, Any], *, create: bool, version: int | None = None
    ) -> PoolConfig:
        """Create (``create``) or change a pool alias; the pool as stored."""

        def mutate(reg: RealmRegistry) -> PoolConfig:
            current = reg.pools.get(name)
            if create and current is not None:
                raise ValueError(f"Pool {name} already exists")
            if not create and current is None:
                raise PoolNotFound(f"No pool named {name}")
            base = current.model_dump() if current is not None else {}
            pool = PoolConfig.model_validate({**base, **_config_fields(fields)})
            if pool.realm is not None:
                reg.get(pool.realm)
            reg.pools[name] = pool
            return pool

        return await self._change(mutate, version)

    async def delete_pool(self, name: str, version: int | None = None) -> None:
        """Remove a pool alias; ``PoolNotFound`` when there is none."""

        def mutate(reg: RealmRegistry) -> None:
            if reg.pools.pop(name, None) is None:
                raise PoolNotFound(f"No pool named {name}")

        await self._change(mutate, version)

    async def close(self) -> None:
        """Stop the sync and wait for processors being retired."""
        await self.sync.close()
        if self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)


def _config_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _NOT_CONFIG}
