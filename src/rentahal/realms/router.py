"""FederationRouter (local part): routing table, query routing, worker lookup across realms."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from rentahal.models import AIWorker, Query, dispatch_type, worker_family
from rentahal.realms.registry import Realm, RealmRegistry
from rentahal.realms.strategies import HealthStrategy
from rentahal.realms.workers import WorkerRegistry, WorkerState

_HEALTH = HealthStrategy()


@dataclass(slots=True)
class RouterStats:
    """Counters of the router."""

    routed: int = 0
    cross_realm_queries: int = 0
    backup_routes: int = 0
    failed_routes: int = 0


class FederationRouter:
    """Routes queries to realms and finds workers across realms of this broker."""

    def __init__(self, realms: RealmRegistry, workers: WorkerRegistry) -> None:
        self.realms = realms
        self.workers = workers
        self.stats = RouterStats()

    def routing_table(self) -> dict[str, list[str]]:
        """Query type -> realms in routing order."""
        return self.realms.routing_table()

    def realm_can_take(self, realm: Realm, query: Query) -> bool:
        """Running, and holding a worker (not blacklisted) of the query's type."""
        if realm.stopped:
            return False
        wanted = {query.query_type, dispatch_type(query)}
        return any(self.find_workers(t, realm.name) for t in wanted)

    async def route_query(
        self, query: Query, depth_of: Callable[[str], Awaitable[int]]
    ) -> str | None:
        """The realm for ``query``: the primary unless it has no usable worker or its queue is
        over its threshold, then the first fitting backup; ``None`` means the legacy path."""
        candidates = self.realms.route_candidates(query.query_type)
        if not candidates:
            self.stats.failed_routes += 1
            return None
        primary = candidates[0]
        primary_ok = self.realm_can_take(primary, query)
        if primary_ok and len(candidates) == 1:  # no backup: its depth changes nothing
            self.stats.routed += 1
            return primary.name
        if primary_ok and await depth_of(primary.name) < primary.config.queue_threshold:
            self.stats.routed += 1
            return primary.name
        for backup in candidates[1:]:
            if self.realm_can_take(backup, query) and (
                await depth_of(backup.name) < backup.config.queue_threshold
            ):
                self.stats.routed += 1
                self.stats.backup_routes += 1
                return backup.name
        if primary_ok or (not primary.stopped and self._served_anywhere(query)):
            self.stats.routed += 1
            return primary.name
        self.stats.failed_routes += 1
        return None

    def _served_anywhere(self, query: Query) -> bool:
        return bool(self.find_workers(dispatch_type(query)))

    def find_workers(self, query_type: str, realm: str | None = None) -> list[AIWorker]:
        """Workers (not blacklisted) of ``query_type``, in ``realm`` when given."""
        return [
            w
            for w in self.workers.workers()
            if w.type == query_type
            and not w.is_blacklisted
            and (realm is None or self.realms.realm_of_worker(w) == realm)
        ]

    def find_best_worker(
        self,
        query: Query,
        exclude_realm: str | None = None,
        exclude: Iterable[str] = (),
        model: str | None = None,
    ) -> WorkerState | None:
        """The healthiest free worker for ``query`` outside ``exclude_realm`` (cross-realm).

        ``exclude`` are workers to avoid when others exist; ``model`` overrides
        the query's ``model_name`` (a pool alias is no model).
        """
        others = {
            w.name
            for w in self.workers.workers()
            if self.realms.realm_of_worker(w) != exclude_realm
        }
        free = self.workers.free(
            self.workers.candidates(
                dispatch_type(query),
                query.model_name if model is None else model,
                worker_family(query.model_type),
                within=others,
            ),
            exclude,
        )
        return _HEALTH.pick(free) if free else None

    def free_in_other_pools(
        self, pool: str, query: Query, realm: str, exclude: Iterable[str]
    ) -> list[WorkerState]:
        """Free members of pool ``pool`` that sit in other realms (cross-realm lookup)."""
        cfg = self.realms.pools.get(pool)
        if cfg is None:
            return []
        members = {
            name
            for name in cfg.members
            if (s := self.workers.get(name)) is not None
            and self.realms.realm_of_worker(s.worker) != realm
        }
        return self.workers.free(
            self.workers.candidates(
                dispatch_type(query), "", worker_family(query.model_type), within=members
            ),
            exclude,
        )
