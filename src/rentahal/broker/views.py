"""Read-only views of the broker: status routes, metrics, the dashboard, welcome texts, models."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from rentahal.broker.fleet import Fleet
from rentahal.bus.base import Bus
from rentahal.config import ServerSettings
from rentahal.models import AIWorker, Query, User
from rentahal.realms.config import callback_url
from rentahal.realms.connections import RealmConnectionManager
from rentahal.realms.metrics import RealmLive, RealmMetricsCollector
from rentahal.realms.processor import QueryProcessor
from rentahal.realms.service import RealmService
from rentahal.realms.workers import WorkerRegistry
from rentahal.storage.database import Storage

WELCOME_CACHE_S = 2.0
LEGACY_TYPES = ["chat", "vision", "imagine", "speech"]
CONNECTED_LISTED = 20
AVERAGE_TYPES = (
    ("Chat", "chat"),
    ("Vision", "vision"),
    ("Imagine", "imagine"),
    ("Speech_in", "speech"),
    ("Speech_out", "speech_out"),
)


def _family(worker: AIWorker) -> str:
    return worker.protocol if worker.protocol in ("claude", "huggingface") else "worker_node"


class BrokerViews:
    """What the API layer may read about the broker; nothing here changes state."""

    def __init__(
        self,
        *,
        node_id: str,
        server: ServerSettings,
        storage: Storage,
        bus: Bus,
        registry: WorkerRegistry,
        fleet: Fleet,
        connections: RealmConnectionManager,
        processors: Mapping[str, QueryProcessor],
        metrics: RealmMetricsCollector,
        realms: Callable[[], RealmService | None],
        depth: Callable[[], Awaitable[int]],
    ) -> None:
        self._node_id = node_id
        self._server = server
        self._storage = storage
        self._bus = bus
        self._registry = registry
        self._fleet = fleet
        self._connections = connections
        self._processors = processors
        self._metrics = metrics
        self._realms = realms
        self._depth = depth
        self._figures: tuple[float, dict[str, Any], dict[str, float]] | None = None
        self._connected: tuple[float, tuple[str, ...], list[User]] | None = None

    # workers and models

    def workers(self) -> list[dict[str, object]]:
        """Worker records for clients (keys masked) with live load and circuit state."""
        return self._registry.public()

    def worker(self, name: str) -> AIWorker | None:
        """One worker's record."""
        state = self._registry.get(name)
        return state.worker if state is not None else None

    def hf_models(self) -> list[dict[str, Any]]:
        """The Hugging Face models, as ``huggingface_update`` carries them."""
        return [m.model_dump() for m in self._fleet.hf_models]

    def _live(self) -> list[AIWorker]:
        return [w for w in self._registry.workers() if not w.is_blacklisted]

    def served_models(self) -> list[str]:
        """Model ids live workers serve: their listed models, or the worker's name if none."""
        names: set[str] = set()
        for worker in self._live():
            names.update(worker.models or [worker.name])
        return sorted(names)

    def resolve_model(self, model: str, worker_types: Iterable[str]) -> tuple[str, str] | None:
        """``(model_name, model_type)`` of a query for ``model`` on ``worker_types``; None: unknown.

        A model a live worker lists is asked for by name. The name of a live
        worker that lists no models means "any model such a worker runs"
        (``model_name`` empty), since the broker routes by type and model.
        """
        if not model:
            return "", "worker_node"
        types = set(worker_types)
        live = [w for w in self._live() if w.type in types]
        for worker in live:
            if model in worker.models:
                return model, _family(worker)
        for worker in live:
            if not worker.models and worker.name == model:
                return "", _family(worker)
        return None

    def peek_worker(self, queue: str, query: Query) -> AIWorker | None:
        """The worker that would take ``query`` from ``queue`` now (no slot is taken)."""
        realms = self._realms()
        manager = realms.managers.get(queue) if realms is not None else None
        if manager is not None:
            return manager.peek(query)
        return self._registry.peek(query)

    # users and history

    async def recent_queries(self, guid: str, limit: int = 10) -> list[dict[str, Any]]:
        """The user's last queries (newest first)."""
        return await self._storage.for_user(guid).recent_queries(guid, limit=limit)

    async def system_stats(self) -> dict[str, Any]:
        """System-wide totals."""
        return await self._storage.system_stats()

    async def users(self) -> list[User]:
        """Every user (for sysops)."""
        return await self._storage.list_users()

    async def _system_figures(self) -> tuple[dict[str, Any], dict[str, float]]:
        """System totals and average times, read at most once per ``WELCOME_CACHE_S``."""
        now = time.monotonic()
        if self._figures is None or now - self._figures[0] >= WELCOME_CACHE_S:
            stats = await self._storage.system_stats()
            averages = await self._storage.average_times()
            self._figures = (now, stats, averages)
        return self._figures[1], self._figures[2]

    async def _connected_users(self, guids: list[str]) -> list[User]:
        """The listed connected users, read again when the list changed or is stale."""
        now = time.monotonic()
        key = tuple(guids)
        cached = self._connected
        if cached is None or cached[1] != key or now - cached[0] >= WELCOME_CACHE_S:
            cached = self._connected = (now, key, await self._storage.users_by_guid(guids))
        return cached[2]

    async def welcome_messages(
        self, user: User, recent: list[dict[str, Any]] | None = None
    ) -> list[str]:
        """The six ``sysop_message`` texts of the connect sequence.

        ``recent``: the user's recent queries if read already (the first five are
        listed). System-wide figures and the connected users come from a cache of
        ``WELCOME_CACHE_S``, so a burst of connects costs no database reads for them.
        """
        if recent is None:
            recent = await self.recent_queries(user.guid, limit=5)
        lines = ["Your recent queries:"]
        for row in recent[:5]:
            prompt = (row.get("prompt") or "")[:30]
            lines.append(f"Query: {prompt}... Time: {float(row.get('processing_time') or 0):.2f}s")
        stats, averages = await self._system_figures()
        avg_lines = ["Average service times:"] + [
            f"{label}: {averages.get(key, 0.0):.2f}s" for label, key in AVERAGE_TYPES
        ]
        # Name at most CONNECTED_LISTED users, so a connect costs the same at any load.
        online = self._connections.user_count
        connected = await self._connected_users(self._connections.first_users(CONNECTED_LISTED))
        user_lines = ["Connected users:"] + [
            f"{u.nickname}: {u.query_count} queries, ${u.total_cost:.2f}" for u in connected
        ]
        if online > CONNECTED_LISTED:
            user_lines.append(f"... and {online - CONNECTED_LISTED} more")
        most = self._connections.peak_users
        return [
            "\n".join(lines),
            f"Your total lifetime costs: ${user.total_cost:.2f}",
            f"System-wide total lifetime costs: ${float(stats.get('total_cost') or 0):.2f}",
            "\n".join(avg_lines),
            f"Connected users: {online} (most ever: {most})",
            "\n".join(user_lines),
        ]

    # status, metrics, dashboard

    async def system_status(self) -> dict[str, Any]:
        """The original's ``/debug/system_status`` (``database_exists``: the database answers)."""
        return {
            "database_exists": await self._storage.reachable(),
            "total_workers": len(self._registry.workers()),
            "queue_depth": await self._depth(),
            "huggingface_models": len(self._fleet.hf_models),
        }

    async def live_realms(self) -> list[RealmLive]:
        """Queue depth, load, connections and worker health per queue (realms and legacy)."""
        conns = self._connections.realm_counts()
        realms = self._realms()
        rows = []
        for name, processor in list(self._processors.items()):
            if realms is not None and name in realms.managers:
                states = realms.managers[name].states()
            elif realms is None:
                states = self._registry.states()
            else:
                states = []
            rows.append(
                RealmLive(
                    realm=name,
                    queue_depth=await self._bus.depth(name),
                    in_flight=processor.in_flight,
                    connections=conns.get(name, 0),
                    workers=[(s.worker.name, s.worker.health_score) for s in states],
                )
            )
        return rows

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition, sampled now."""
        self._metrics.sample(await self.live_realms())
        return self._metrics.render()

    def _worker_rows(self, live: RealmLive) -> list[dict[str, Any]]:
        rows = []
        for name, health in live.workers:
            state = self._registry.get(name)
            rows.append(
                {
                    "name": name,
                    "health_score": health,
                    "in_flight": state.in_flight if state else 0,
                    "max_concurrency": state.worker.max_concurrency if state else 0,
                }
            )
        return rows

    async def realm_summary(self) -> list[dict[str, Any]]:
        """Per realm: types, queue, load, totals and workers (for the dashboard)."""
        realms = self._realms()
        out = []
        for live in await self.live_realms():
            totals = self._metrics.totals(live.realm)
            realm = realms.registry.realms.get(live.realm) if realms else None
            types = [realm.config.primary_query_type] if realm is not None else LEGACY_TYPES
            out.append(
                {
                    "name": live.realm,
                    "query_types": types,
                    "queue_depth": live.queue_depth,
                    "in_flight": live.in_flight,
                    "connections": live.connections,
                    "processed": int(totals["processed"]),
                    "errors": int(totals["errors"]),
                    "stopped": bool(realm and realm.stopped),
                    "workers": self._worker_rows(live),
                }
            )
        return out

    async def federation_status(self) -> dict[str, Any]:
        """This instance's part of the federation: realms, workers, connections, totals."""
        summary = self._metrics.get_summary_metrics()
        realms = self._realms()
        router = realms.router if realms else None
        return {
            "federation_id": realms.registry.file.federation_id if realms else None,
            "callback_url": (
                callback_url(realms.registry.file, self._server.host, self._server.port)
                if realms
                else None
            ),
            "node_id": self._node_id,
            "total_realms": len(realms.registry.realms) if realms else 0,
            "realms_enabled": realms is not None,
            "realms": await self.realm_summary(),
            "routing_table": router.routing_table() if router else {},
            "router": (
                {
                    "cross_realm_queries": router.stats.cross_realm_queries,
                    "backup_routes": router.stats.backup_routes,
                    "failed_routes": router.stats.failed_routes,
                }
                if router
                else {}
            ),
            "workers": len(self._registry.workers()),
            "connections": self._connections.count,
            "peak_connections": self._connections.peak,
            "processed": summary["total_queries"],
            "errors": summary["total_errors"],
            "error_rate": summary["error_rate"],
        }
