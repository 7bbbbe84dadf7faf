"""Worker registry: capacity, passive health, circuit breakers and worker selection."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from rentahal.backends.health import HealthRules
from rentahal.bus.state import ClusterState
from rentahal.config import WorkerSettingsSection
from rentahal.errors import (
    NoWorkerAvailable,
    WorkerCircuitOpen,
    WorkerRateLimited,
    WorkerRejected,
)
from rentahal.models import AIWorker, Query, dispatch_type, worker_family
from rentahal.realms.strategies import HealthStrategy

logger = logging.getLogger(__name__)
_HEALTH = HealthStrategy()
# How long a worker counts as full after other nodes held all its slots
# (cleared earlier by a slot-freed notice).
SATURATION_S = 1.0
#: 4xx answers that blame the request's content rather than the worker or its configuration.
_INPUT_FAULT_STATUSES = frozenset({400, 413, 415, 422})


class WorkerSelector(Protocol):
    """Chooses and reserves a worker for a query (the registry itself, or a realm's manager)."""

    def can_serve_now(self, query: Query) -> bool:
        """True when a worker could take ``query`` right now."""
        ...

    def reserve(self, query: Query, exclude: Iterable[str] = ()) -> AIWorker | None:
        """Take a slot for ``query``; ``None`` when no worker is free."""
        ...


def _family_of(worker: AIWorker) -> str:
    return worker.protocol if worker.protocol in ("claude", "huggingface") else "worker_node"


@dataclass(slots=True)
class WorkerState:
    """Live, per-process facts about one worker beside its persisted record."""

    worker: AIWorker
    in_flight: int = 0
    consecutive_failures: int = 0
    circuit_open_until: float = 0.0
    half_open_trial: bool = False
    cooldown_until: float = 0.0
    saturated_until: float = 0.0
    calls_total: int = 0
    failures_total: int = 0
    tags: set[str] = field(default_factory=set)
    # Being drained by the scaler: finishes its calls, takes no new ones.
    draining: bool = False

    def circuit(self, now: float) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self.circuit_open_until == 0.0:
            return "closed"
        return "open" if now < self.circuit_open_until else "half_open"

    def available(self, now: float, *, ignore_saturation: bool = False) -> bool:
        """Not blacklisted, not cooling down, circuit closed (or a free half-open trial).

        A worker whose slots are all held by other nodes is unavailable unless
        ``ignore_saturation`` (that passes within a query's wait).
        """
        saturated = 0.0 if ignore_saturation else self.saturated_until
        if self.draining:
            return False
        if self.worker.is_blacklisted or now < max(self.cooldown_until, saturated):
            return False
        state = self.circuit(now)
        if state == "open":
            return False
        if state == "half_open":
            return not self.half_open_trial
        return True

    def healthy(self, now: float) -> bool:
        """Not blacklisted and its circuit not open (busy or cooling down still counts)."""
        return not self.worker.is_blacklisted and self.circuit(now) != "open"

    def has_capacity(self) -> bool:
        """Fewer calls in flight than ``max_concurrency``."""
        return self.in_flight < self.worker.max_concurrency


class WorkerRegistry:
    """All workers this broker knows, with in-flight counts and failure handling.

    ``listeners`` are called whenever capacity or usability may have grown, so
    queue consumers wake up instead of polling.
    """

    def __init__(self, settings: WorkerSettingsSection) -> None:
        self.settings = settings
        self.rules = HealthRules.from_settings(settings)
        self._states: dict[str, WorkerState] = {}
        self._listeners: list[Callable[[], None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.version = 0  # bumped when workers are added or removed
        # Bumped by every change of what is free (slots, health, membership): a plan
        # made at one epoch is still the plan while it lasts (the clock only frees).
        self.epoch = 0
        # Cluster mode: slots are confirmed in shared state; None on a single node.
        self.cluster: ClusterState | None = None
        self.on_cluster_release: Callable[[str], Awaitable[None]] | None = None
        self.lease_s = 600.0
        # Filters federated (remote) candidates; set by the federation service.
        self.remote_gate: Callable[[list[WorkerState]], list[WorkerState]] | None = None

    def add(self, worker: AIWorker) -> None:
        """Add or replace a worker (keeps in-flight counts of a replaced one)."""
        old = self._states.get(worker.name)
        state = WorkerState(worker=worker)
        if old is not None:
            state.in_flight = old.in_flight
        self._states[worker.name] = state
        self.version += 1
        self._notify()

    def remove(self, name: str) -> bool:
        """Forget a worker; calls in flight finish normally."""
        removed = self._states.pop(name, None) is not None
        self.version += 1
        self._notify()
        return removed

    def get(self, name: str) -> WorkerState | None:
        """The state of worker ``name``."""
        return self._states.get(name)

    def workers(self) -> list[AIWorker]:
        """All worker records."""
        return [s.worker for s in self._states.values()]

    def states(self) -> list[WorkerState]:
        """All worker states."""
        return list(self._states.values())

    def public(self) -> list[dict[str, object]]:
        """Worker records for clients (keys masked) with live load and circuit state."""
        now = time.monotonic()
        out = []
        for s in self._states.values():
            data = s.worker.public()
            data["in_flight"] = s.in_flight
            data["circuit"] = s.circuit(now)
            out.append(data)
        return out

    def total_capacity(self, types: Iterable[str] | None = None) -> int:
        """Sum of ``max_concurrency`` of usable workers (of ``types`` if given)."""
        now = time.monotonic()
        wanted = set(types) if types is not None else None
        return sum(
            s.worker.max_concurrency
            for s in self._states.values()
            if s.available(now) and (wanted is None or s.worker.type in wanted)
        )

    def candidates(
        self,
        worker_type: str,
        model_name: str = "",
        family: str = "worker_node",
        within: Collection[str] | None = None,
    ) -> list[WorkerState]:
        """Workers of a type and family for ``model_name`` (optionally among ``within``).

        ``model_name`` only prefers: workers that list the model, else the worker
        of that name (the original client sends worker names), else workers that
        list no models, else any worker of the type. The first of these groups
        with a healthy worker wins (when none has one: the first non-empty group).
        """
        of_type = [
            s
            for s in self._states.values()
            if s.worker.type == worker_type
            and _family_of(s.worker) == family
            and (within is None or s.worker.name in within)
        ]
        # Other installations are candidates only when the federation allows it.
        if self.remote_gate is not None:
            of_type = self.remote_gate(of_type)
        if not model_name:
            return of_type
        groups = (
            [s for s in of_type if model_name in s.worker.models],
            [s for s in of_type if s.worker.name == model_name],
            [s for s in of_type if not s.worker.models],
            of_type,
        )
        now = time.monotonic()
        for group in groups:
            if any(s.healthy(now) for s in group):
                return group
        return next((group for group in groups if group), [])

    @staticmethod
    def free(states: Iterable[WorkerState], exclude: Iterable[str] = ()) -> list[WorkerState]:
        """The usable states with a free slot, avoiding ``exclude`` when others exist."""
        now = time.monotonic()
        free = [s for s in states if s.available(now) and s.has_capacity()]
        excluded = set(exclude)
        return [s for s in free if s.worker.name not in excluded] or free

    def take(self, state: WorkerState) -> AIWorker:
        """Occupy one slot of ``state``'s worker."""
        self.epoch += 1
        state.in_flight += 1
        state.calls_total += 1
        if state.circuit(time.monotonic()) == "half_open":
            state.half_open_trial = True
        return state.worker

    def check_servable(self, query: Query) -> None:
        """Raise ``NoWorkerAvailable`` (naming type or model) when no worker can serve."""
        self.check_type_servable(
            dispatch_type(query), query.model_name, worker_family(query.model_type)
        )

    def check_type_servable(
        self, worker_type: str, model_name: str = "", family: str = "worker_node"
    ) -> None:
        """``check_servable`` for a worker type rather than a query.

        Refuses when no worker is left that is not blacklisted, and when every
        such worker has an open circuit: the error names them and says when the
        first is tried again, rather than letting the query wait for it.
        """
        candidates = [
            s
            for s in self.candidates(worker_type, model_name, family)
            if not s.worker.is_blacklisted
        ]
        kind = worker_type if family == "worker_node" else f"{family} {worker_type}"
        if not candidates:
            raise NoWorkerAvailable(f"No {kind} worker is available")
        now = time.monotonic()
        if all(s.circuit(now) == "open" for s in candidates):
            retry_s = min(s.circuit_open_until for s in candidates) - now
            raise WorkerCircuitOpen(
                [s.worker.name for s in candidates], worker_type, math.ceil(retry_s)
            )

    def can_serve_now(self, query: Query) -> bool:
        """True when any usable worker for ``query`` has a free slot (any realm)."""
        return bool(
            self.free(
                self.candidates(
                    dispatch_type(query), query.model_name, worker_family(query.model_type)
                )
            )
        )

    def reserve(self, query: Query, exclude: Iterable[str] = ()) -> AIWorker | None:
        """Take a slot on the healthiest free worker of any realm (the legacy choice)."""
        return self.reserve_type(
            dispatch_type(query), query.model_name, exclude, worker_family(query.model_type)
        )

    def peek(self, query: Query) -> AIWorker | None:
        """The worker :meth:`reserve` would choose, without taking a slot."""
        free = self.free(
            self.candidates(dispatch_type(query), query.model_name, worker_family(query.model_type))
        )
        return _HEALTH.pick(free).worker if free else None

    def reserve_type(
        self,
        worker_type: str,
        model_name: str = "",
        exclude: Iterable[str] = (),
        family: str = "worker_node",
    ) -> AIWorker | None:
        """``reserve`` for a worker type rather than a query."""
        free = self.free(self.candidates(worker_type, model_name, family), exclude)
        if not free:
            return None
        return self.take(_HEALTH.pick(free))

    async def acquire(
        self,
        selector: WorkerSelector,
        query: Query,
        exclude: Iterable[str] = (),
        timeout_s: float = 30.0,
        check: Callable[[], None] | None = None,
    ) -> AIWorker:
        """Wait (up to ``timeout_s``) for ``selector`` to reserve a worker for ``query``.

        ``check`` raises when waiting is pointless (default: no worker could ever serve).
        """
        exclude = tuple(exclude)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            worker = selector.reserve(query, exclude)
            if worker is not None:
                return worker
            if check is not None:
                check()
            else:
                self.check_servable(query)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoWorkerAvailable(
                    f"No {dispatch_type(query)} worker became free within {timeout_s:g}s"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                # Circuits and cool-downs end by the clock, so re-check at least every second.
                async with asyncio.timeout(min(remaining, 1.0)):
                    await waiter
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def type_selector(self, worker_type: str) -> WorkerSelector:
        """A selector by worker type alone, ignoring the query (speech steps use this)."""
        return _TypeSelector(self, worker_type)

    async def confirm(self, worker: AIWorker, holder: str) -> bool:
        """Confirm a locally reserved slot cluster-wide (always true on one node).

        When every slot is taken on other nodes, the local reservation is
        released and the worker counts as saturated until a slot frees up.
        """
        if self.cluster is None:
            return True
        if await self.cluster.acquire_slot(
            worker.name, worker.max_concurrency, holder, self.lease_s
        ):
            return True
        state = self._states.get(worker.name)
        if state is not None:
            state.saturated_until = time.monotonic() + SATURATION_S
        self.release(worker.name)
        return False

    async def release_call(self, name: str, holder: str | None) -> None:
        """Release a slot taken by :meth:`reserve` and confirmed for ``holder``."""
        self.release(name)
        if self.cluster is not None and holder is not None:
            await self.cluster.release_slot(name, holder)
            if self.on_cluster_release is not None:
                await self.on_cluster_release(name)

    def slot_freed(self, name: str) -> None:
        """Another node released a slot of ``name``: it may be free again."""
        state = self._states.get(name)
        if state is not None and state.saturated_until:
            state.saturated_until = 0.0
            self._notify()

    def release(self, name: str) -> None:
        """Give back a slot taken by :meth:`reserve`."""
        state = self._states.get(name)
        if state is not None:
            state.in_flight = max(0, state.in_flight - 1)
            state.half_open_trial = False
        self._notify()

    def report_success(self, name: str) -> None:
        """A call succeeded: close the circuit, reset the failure streak."""
        state = self._states.get(name)
        if state is None:
            return
        self.epoch += 1
        state.consecutive_failures = 0
        state.circuit_open_until = 0.0

    def report_failure(self, name: str, error: Exception) -> None:
        """A call failed: lower health at once; open the circuit after a streak; cool 429s.

        A rejection of the request's content (400, 413, 415, 422: a bad prompt or
        audio) is the query's fault, not the worker's: it is counted but neither
        lowers health nor opens the circuit, so one user's bad input cannot shut
        a worker off for everyone.
        """
        state = self._states.get(name)
        if state is None:
            return
        self.epoch += 1
        now = time.monotonic()
        state.failures_total += 1
        if isinstance(error, WorkerRateLimited):
            state.cooldown_until = now + self.settings.rate_limit_cooldown_s
            return
        if isinstance(error, WorkerRejected) and error.status in _INPUT_FAULT_STATUSES:
            return
        self.rules.lower(state.worker, self.settings.health_error_delta)
        state.consecutive_failures += 1
        if state.circuit(now) == "half_open" or (
            state.consecutive_failures >= self.settings.circuit_failures
        ):
            state.circuit_open_until = now + self.settings.circuit_open_s
            logger.warning(
                "circuit of worker %s open for %.0fs after %d failures",
                name,
                self.settings.circuit_open_s,
                state.consecutive_failures,
            )
            # Waiting queries for this worker must now fail at once, not wait.
            self._notify()

    def probe_succeeded(self, name: str) -> None:
        """A health probe of ``name`` answered 200: close its circuit at once.

        The failure streak stays one short of ``circuit_failures``, so a worker
        whose probe passes but whose calls fail opens again on its next failure.
        """
        state = self._states.get(name)
        if state is None or state.circuit_open_until == 0.0:
            return
        state.circuit_open_until = 0.0
        state.consecutive_failures = max(0, self.settings.circuit_failures - 1)
        logger.info("circuit of worker %s closed by a health probe", name)
        self._notify()

    def open_circuits(self) -> list[AIWorker]:
        """Workers whose circuit is open or half open (probed more often)."""
        now = time.monotonic()
        return [s.worker for s in self._states.values() if s.circuit(now) != "closed"]

    def reset_health(self, name: str | None = None) -> list[AIWorker]:
        """Clear blacklist, circuit and cool-down; health back to 100 (one or all)."""
        changed = []
        for state in self._states.values():
            if name is not None and state.worker.name != name:
                continue
            state.worker.health_score = 100.0
            state.worker.is_blacklisted = False
            state.consecutive_failures = 0
            state.circuit_open_until = 0.0
            state.cooldown_until = 0.0
            changed.append(state.worker)
        self._notify()
        return changed

    def changed(self) -> None:
        """Health or membership changed outside the registry: wake waiting consumers."""
        self._notify()

    async def wait_for_change(self, timeout_s: float) -> None:
        """Return when a slot is released or workers change, or after ``timeout_s``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever capacity may have grown (once, however often added)."""
        if callback not in self._listeners:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        self.epoch += 1
        for callback in self._listeners:
            callback()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class _TypeSelector:
    """Selects by worker type alone, ignoring the query (for speech steps)."""

    def __init__(self, registry: WorkerRegistry, worker_type: str) -> None:
        self._registry = registry
        self._type = worker_type

    def can_serve_now(self, query: Query) -> bool:
        return bool(self._registry.free(self._registry.candidates(self._type)))

    def reserve(self, query: Query, exclude: Iterable[str] = ()) -> AIWorker | None:
        return self._registry.reserve_type(self._type, exclude=exclude)
