"""The queues of one node and their consumers: the legacy queue, the realms, the watchdog."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from rentahal.broker.control import CONTROL_CHANNEL
from rentahal.bus.base import Bus
from rentahal.config import BrokerSettings
from rentahal.models import Job, Query
from rentahal.realms.execution import QueryExecutor
from rentahal.realms.processor import FinishHandler, QueryProcessor
from rentahal.realms.router import RouterStats
from rentahal.realms.service import RealmService, load_shared
from rentahal.realms.store import RealmStore
from rentahal.realms.workers import WorkerRegistry, WorkerSelector
from rentahal.storage.database import Storage

logger = logging.getLogger(__name__)

LEGACY_QUEUE = "$LEGACY"
WATCHDOG_INTERVAL_S = 2.0
# A processor whose loop has not beaten for this long is stuck and restarted.
STUCK_AFTER_S = 5 * WATCHDOG_INTERVAL_S


class NodeQueues:
    """Which queues this node consumes, and the realm a query goes to.

    ``processors`` maps every queue name to its consumer (the realm service
    adds and removes its realms' entries); a dead consumer is restarted by
    :meth:`watchdog`, which the Broker's housekeeping calls every
    ``WATCHDOG_INTERVAL_S``. With realms disabled only ``$LEGACY`` exists. The realm
    configuration is the shared one in the database (``RealmService``).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        node_id: str,
        storage: Storage,
        bus: Bus,
        registry: WorkerRegistry,
        executor: QueryExecutor,
        finish: FinishHandler,
        on_start: Callable[[Job], Awaitable[None]],
        reroute: Callable[[list[Job]], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._node_id = node_id
        self._storage = storage
        self._reroute = reroute
        self._bus = bus
        self._registry = registry
        self._executor = executor
        self._finish = finish
        self._on_start = on_start
        self.processors: dict[str, QueryProcessor] = {}
        self.realms: RealmService | None = None

    async def start(self) -> None:
        """Start the legacy consumer and the realms."""
        legacy = QueryProcessor(
            LEGACY_QUEUE,
            self._bus,
            self._registry,
            self._executor,
            self._finish,
            on_start=self._on_start,
        )
        self.processors[LEGACY_QUEUE] = legacy
        legacy.start()
        await self._start_realms()

    async def _start_realms(self) -> None:
        if not self._settings.realms_enabled:
            return
        path = Path(self._settings.realms_file)
        store = RealmStore(self._storage)
        stored = await load_shared(store, path, self._node_id)
        if not stored.file.enabled:
            return
        self.realms = RealmService(
            stored,
            path,
            store,
            self._bus,
            self._registry,
            self._executor,
            self._finish,
            self.processors,
            reroute=self._reroute,
            control_channel=CONTROL_CHANNEL,
            node_id=self._node_id,
            on_start=self._on_start,
        )
        self.realms.start()

    def watchdog(self, stuck_after_s: float = STUCK_AFTER_S) -> list[str]:
        """Restart processors that died or have not beaten for ``stuck_after_s``."""
        restarted = []
        legacy = self.processors.get(LEGACY_QUEUE)
        if legacy is not None and legacy.revive(stuck_after_s):
            restarted.append(LEGACY_QUEUE)
        if self.realms is not None:
            restarted += self.realms.watchdog(stuck_after_s)
        return restarted

    def realms_changed(self) -> None:
        """Another node changed the shared realm configuration: reload it soon."""
        if self.realms is not None:
            self.realms.sync.notify()

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop the realms' services, then drain every consumer."""
        if self.realms is not None:
            await self.realms.close()
        await asyncio.gather(*(p.stop(drain_timeout_s) for p in self.processors.values()))

    async def route(self, query: Query) -> str:
        """The queue a query goes to: its realm, or the legacy queue as the fallback."""
        if self.realms is None:
            return LEGACY_QUEUE
        return await self.realms.route(query) or LEGACY_QUEUE

    def selector_for(self, queue: str) -> WorkerSelector:
        """The worker selection of ``queue`` (its realm's manager, else the registry's)."""
        if self.realms is not None and queue in self.realms.managers:
            return self.realms.managers[queue]
        return self._registry

    def realm_for_user(self, guid: str) -> str | None:
        """The realm a user's connections are grouped in."""
        return self.realms.registry.assign_user(guid) if self.realms else None

    def router_stats(self) -> RouterStats:
        """The router's counters (zero in legacy mode)."""
        return self.realms.router.stats if self.realms else RouterStats()
