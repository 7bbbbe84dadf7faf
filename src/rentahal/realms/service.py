"""RealmService: builds and runs the realms (managers, processors) and changes them live."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from rentahal.bus.base import Bus
from rentahal.models import Job, Query
from rentahal.realms.config import PoolConfig, RealmConfig, RealmsFile, save_realms
from rentahal.realms.execution import QueryExecutor
from rentahal.realms.manager import RealmWorkerManager
from rentahal.realms.processor import FinishHandler, QueryProcessor
from rentahal.realms.registry import RealmRegistry
from rentahal.realms.router import FederationRouter
from rentahal.realms.workers import WorkerRegistry

logger = logging.getLogger(__name__)


class RealmService:
    """The realms of one broker node.

    ``processors`` is the broker's own map of queue name to processor; the
    service adds and removes its realms' entries there.
    """

    def __init__(
        self,
        realms_file: RealmsFile,
        path: Path | None,
        bus: Bus,
        workers: WorkerRegistry,
        executor: QueryExecutor,
        finish: FinishHandler,
        processors: dict[str, QueryProcessor],
        on_start: Callable[[Job], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self.bus = bus
        self.workers = workers
        self.executor = executor
        self._finish = finish
        self.processors = processors
        self._on_start = on_start
        self.registry = RealmRegistry(realms_file)
        self.router = FederationRouter(self.registry, workers)
        self.managers: dict[str, RealmWorkerManager] = {}

    def start(self) -> None:
        """Start a processor for every realm."""
        for name in self.registry.realms:
            self._start_processor(name)

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

    async def _drain(self, name: str, drain_timeout_s: float) -> list[Job]:
        processor = self.processors.pop(name, None)
        if processor is not None:
            await processor.stop(drain_timeout_s)
        waiting = []
        for job in await self.bus.waiting(name):
            if await self.bus.remove(name, job.job_id) is not None:
                waiting.append(job)
        return waiting

    async def stop_realm(self, name: str, drain_timeout_s: float = 5.0) -> list[Job]:
        """Stop a realm's processor; returns its waiting jobs for re-routing."""
        self.registry.get(name).stopped = True
        return await self._drain(name, drain_timeout_s)

    def start_realm(self, name: str) -> None:
        """Resume a stopped realm."""
        self.registry.get(name).stopped = False
        self._start_processor(name)

    def create_realm(self, name: str, config: RealmConfig) -> None:
        """Add a realm and start its processor; saved to ``realms.yml``."""
        self.registry.create(name, config)
        self._start_processor(name)
        self.save()

    def update_realm(self, name: str, config: RealmConfig) -> None:
        """Change a realm's configuration; saved."""
        self.registry.update(name, config)
        self.save()

    async def delete_realm(self, name: str, drain_timeout_s: float = 5.0) -> list[Job]:
        """Delete a (non-primary) realm; returns its waiting jobs for re-routing."""
        if self.registry.is_primary(name):
            self.registry.delete(name)  # raises with the design's message
        waiting = await self._drain(name, drain_timeout_s)
        self.registry.delete(name)
        self.managers.pop(name, None)
        self.save()
        return waiting

    def set_pool(self, name: str, pool: PoolConfig) -> None:
        """Create or replace a pool alias; saved."""
        if pool.realm is not None:
            self.registry.get(pool.realm)
        self.registry.pools[name] = pool
        self.save()

    def delete_pool(self, name: str) -> bool:
        """Remove a pool alias; saved."""
        found = self.registry.pools.pop(name, None) is not None
        if found:
            self.save()
        return found

    def save(self) -> None:
        """Write the realms file atomically (when the broker has one)."""
        if self.path is not None:
            save_realms(self.path, self.registry.file)
