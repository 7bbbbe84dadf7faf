"""Health rules (the original's scoring, configurable) and the periodic probe loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rentahal.backends import get_backend
from rentahal.backends.base import HttpClient
from rentahal.config import WorkerSettingsSection
from rentahal.errors import WorkerError
from rentahal.models import AIWorker, utcnow_iso

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthRules:
    """How probe outcomes move a worker's ``health_score`` and blacklist flag."""

    success_delta: float = 10.0
    failure_delta: float = 10.0
    error_delta: float = 5.0
    readmit_health: float = 50.0
    no_blacklist_imagine: bool = True

    @classmethod
    def from_settings(cls, s: WorkerSettingsSection) -> HealthRules:
        """Rules from the ``[Workers]`` section."""
        return cls(
            success_delta=s.health_success_delta,
            failure_delta=s.health_failure_delta,
            error_delta=s.health_error_delta,
            readmit_health=s.readmit_health,
            no_blacklist_imagine=s.no_blacklist_imagine,
        )

    def apply(self, worker: AIWorker, status: int | None) -> bool:
        """Score one probe (``status`` None = no answer); True when anything changed."""
        before = (worker.health_score, worker.is_blacklisted)
        if status == 200:
            worker.last_active = utcnow_iso()
            if worker.is_blacklisted:
                worker.is_blacklisted = False
                worker.health_score = self.readmit_health
            else:
                worker.health_score = min(100.0, worker.health_score + self.success_delta)
        else:
            delta = self.error_delta if status is None else self.failure_delta
            self.lower(worker, delta)
        return before != (worker.health_score, worker.is_blacklisted)

    def lower(self, worker: AIWorker, delta: float) -> None:
        """Subtract ``delta``; at zero the worker is blacklisted (imagine may be exempt)."""
        worker.health_score = max(0.0, worker.health_score - delta)
        if worker.health_score <= 0 and not (
            worker.type == "imagine" and self.no_blacklist_imagine
        ):
            worker.is_blacklisted = True


async def probe_worker(client: HttpClient, worker: AIWorker, timeout_s: float) -> int | None:
    """HTTP status of the worker's protocol probe, or ``None`` when it did not answer."""
    try:
        return await get_backend(worker.protocol).probe(client, worker, timeout_s)
    except WorkerError as exc:
        logger.debug("probe of %s failed: %s", worker.name, exc)
        return exc.status
    except KeyError:
        return None


class HealthMonitor:
    """Probes every worker each ``health_check_interval`` and applies the rules.

    Workers that ``open_circuits`` lists are also probed each
    ``circuit_probe_interval_s`` (these probes only close circuits); every 200
    is passed to ``on_probe_ok``.
    """

    def __init__(
        self,
        list_workers: Callable[[], list[AIWorker]],
        client: HttpClient,
        rules: HealthRules,
        settings: WorkerSettingsSection,
        on_change: Callable[[list[AIWorker]], Awaitable[None]],
        is_leader: Callable[[], Awaitable[bool]] | None = None,
        open_circuits: Callable[[], list[AIWorker]] | None = None,
        on_probe_ok: Callable[[str], None] | None = None,
    ) -> None:
        self._list_workers = list_workers
        self._open_circuits = open_circuits
        self._on_probe_ok = on_probe_ok
        self._circuit_task: asyncio.Task[None] | None = None
        self._client = client
        self._rules = rules
        self._settings = settings
        self._on_change = on_change
        self._is_leader = is_leader
        self._task: asyncio.Task[None] | None = None

    def _timeout_for(self, worker: AIWorker) -> float:
        if worker.type == "imagine":
            return self._settings.imagine_health_timeout_s
        return self._settings.health_timeout_s

    async def check_all(self) -> list[AIWorker]:
        """Probe every worker once, concurrently; return the ones that changed."""
        workers = self._list_workers()
        statuses = await asyncio.gather(
            *(probe_worker(self._client, w, self._timeout_for(w)) for w in workers)
        )
        changed = [w for w, s in zip(workers, statuses, strict=True) if self._rules.apply(w, s)]
        self._report_ok(workers, statuses)
        if changed:
            await self._on_change(changed)
        return changed

    def _report_ok(self, workers: list[AIWorker], statuses: list[int | None]) -> None:
        if self._on_probe_ok is None:
            return
        for worker, status in zip(workers, statuses, strict=True):
            if status == 200:
                self._on_probe_ok(worker.name)

    async def check_open_circuits(self) -> None:
        """Probe the workers with open circuits once; a 200 closes the circuit."""
        workers = self._open_circuits() if self._open_circuits is not None else []
        if not workers:
            return
        statuses = await asyncio.gather(
            *(probe_worker(self._client, w, self._timeout_for(w)) for w in workers)
        )
        self._report_ok(workers, list(statuses))

    async def _run_circuits(self) -> None:
        # Circuits are per node, so every node probes its own open ones.
        while True:
            await asyncio.sleep(self._settings.circuit_probe_interval_s)
            try:
                await self.check_open_circuits()
            except Exception:
                logger.exception("probe of open circuits failed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.health_check_interval)
            try:
                # In a cluster only the node holding the lease probes.
                if self._is_leader is not None and not await self._is_leader():
                    continue
                await self.check_all()
            except Exception:
                logger.exception("health check round failed")

    def start(self) -> None:
        """Start the periodic loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="health-monitor")
        if self._open_circuits is not None and (
            self._circuit_task is None or self._circuit_task.done()
        ):
            self._circuit_task = asyncio.create_task(self._run_circuits(), name="circuit-probes")

    async def stop(self) -> None:
        """Stop the loops and wait for them."""
        for task in (self._task, self._circuit_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._circuit_task = None
