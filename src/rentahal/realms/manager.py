"""RealmWorkerManager: one realm's workers and pools, and how it picks among them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rentahal.models import AIWorker, Query, dispatch_type, worker_family
from rentahal.realms.registry import RealmRegistry
from rentahal.realms.strategies import Strategy, make_strategy
from rentahal.realms.workers import WorkerRegistry, WorkerState

if TYPE_CHECKING:
    from rentahal.realms.router import FederationRouter

#: Free candidates of the first step that has any, its strategy, and cross-realm-ness.
_Plan = tuple[list[WorkerState], Strategy, bool]


class RealmWorkerManager:
    """Selects workers for one realm's queries.

    Order: the pool the query names (its ``model_name``) by the pool's
    strategy; pools of that name in other realms (through the router); the
    realm's own workers by the realm's strategy; the best worker of another realm.
    """

    def __init__(
        self,
        realm: str,
        workers: WorkerRegistry,
        realms: RealmRegistry,
        router: FederationRouter,
    ) -> None:
        self.realm = realm
        self.workers = workers
        self.realms = realms
        self.router = router
        self._strategies: dict[str, Strategy] = {}
        self._members: set[str] = set()
        self._members_key: tuple[int, int] | None = None
        # The plan ``can_serve_now`` made, for the ``reserve`` of the same query that
        # follows it (the consume loop asks both): (query, epochs, plan).
        self._last: tuple[Query, tuple[int, int], _Plan] | None = None

    def strategy(self, key: str, name: str) -> Strategy:
        """The strategy object for a pool or realm (kept, so round robin remembers)."""
        current = self._strategies.get(key)
        if current is None or current.name != name:
            current = self._strategies[key] = make_strategy(name)
        return current

    def member_names(self) -> set[str]:
        """Names of the workers in this realm (recomputed only when workers or realms change)."""
        key = (self.workers.version, self.realms.version)
        if self._members_key != key:
            self._members = {
                w.name
                for w in self.workers.workers()
                if self.realms.realm_of_worker(w) == self.realm
            }
            self._members_key = key
        return self._members

    def states(self) -> list[WorkerState]:
        """States of this realm's workers."""
        names = self.member_names()
        return [s for s in self.workers.states() if s.worker.name in names]

    def pool_for(self, query: Query) -> str | None:
        """The pool alias ``query.model_name`` names in this realm, if any."""
        pool = self.realms.pools.get(query.model_name)
        if pool is None or pool.blacklisted or pool.query_type != dispatch_type(query):
            return None
        if pool.realm not in (None, self.realm):
            return None
        return query.model_name

    def _pool_free(self, pool_name: str, query: Query, exclude: Iterable[str]) -> list[WorkerState]:
        pool = self.realms.pools[pool_name]
        wtype, family = dispatch_type(query), worker_family(query.model_type)
        members = set(pool.members) & self.member_names()
        return self.workers.free(
            self.workers.candidates(wtype, "", family, within=members), exclude
        )

    def _own_free(self, query: Query, exclude: Iterable[str], model: str) -> list[WorkerState]:
        wtype, family = dispatch_type(query), worker_family(query.model_type)
        return self.workers.free(
            self.workers.candidates(wtype, model, family, within=self.member_names()), exclude
        )

    def _plan(self, query: Query, exclude: Iterable[str]) -> _Plan:
        """Free candidates of the first step that has any, its strategy, and cross-realm-ness."""
        exclude = tuple(exclude)
        pool = self.pool_for(query)
        if pool is not None:
            free = self._pool_free(pool, query, exclude)
            if free:
                cfg = self.realms.pools[pool]
                return free, self.strategy(f"pool:{pool}", cfg.strategy), False
            elsewhere = self.router.free_in_other_pools(pool, query, self.realm, exclude)
            if elsewhere:
                return elsewhere, self.strategy(f"pool:{pool}", "health"), True
        model = "" if pool is not None else query.model_name
        own = self._own_free(query, exclude, model)
        realm_cfg = (
            self.realms.realms[self.realm].config if self.realm in self.realms.realms else None
        )
        strategy = self.strategy("realm", realm_cfg.strategy if realm_cfg else "health")
        if own:
            return own, strategy, False
        best = self.router.find_best_worker(query, self.realm, exclude, model)
        return ([best] if best else []), self.strategy("cross", "health"), True

    def _epochs(self) -> tuple[int, int]:
        return (self.workers.epoch, self.realms.version)

    def can_serve_now(self, query: Query) -> bool:
        """True when some step of the selection order has a free worker."""
        plan = self._plan(query, ())
        self._last = (query, self._epochs(), plan)
        return bool(plan[0])

    def peek(self, query: Query) -> AIWorker | None:
        """The worker :meth:`reserve` would choose, without taking a slot."""
        free, _strategy, _cross = self._plan(query, ())
        if not free:
            return None
        return max(free, key=lambda s: s.worker.health_score).worker

    def reserve(self, query: Query, exclude: Iterable[str] = ()) -> AIWorker | None:
        """Take a slot following the selection order.

        Right after :meth:`can_serve_now` for the same query, with nothing freed
        or taken in between, its plan is used rather than made again.
        """
        exclude = tuple(exclude)
        last, self._last = self._last, None
        if not exclude and last is not None and last[0] is query and last[1] == self._epochs():
            free, strategy, cross = last[2]
        else:
            free, strategy, cross = self._plan(query, exclude)
        if not free:
            return None
        if cross:
            self.router.stats.cross_realm_queries += 1
        return self.workers.take(strategy.pick(free))
