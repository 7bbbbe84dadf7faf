"""RealmScaler: realms grow and shrink their workers through their provisioners.

Every ``scaling.interval_s`` the node holding the ``scaler`` lease measures each
realm that has a ``provisioner``: utilisation (busy slots over capacity,
averaged over ``window_s``), the wait of its oldest queued job, and its error
rate over the window. Above ``high_load``, past ``queue_wait_s`` or above
``error_rate`` it adds a worker (never past ``max_workers``; at the bound it
opens a backup realm ``{realm}_backup_N``); below ``low_load`` with an empty
queue it drains and removes the least used worker it started (never below
``min_workers``). ``cooldown_s`` separates two changes of one realm, and the
gap between the two thresholds is the hysteresis. A realm below
``min_workers`` gets workers at once. Failed starts back off exponentially.
The lease lasts three intervals, at least ``LEASE_FLOOR_S``: a leader whose loop
stalls for a moment (a busy machine) keeps it, so two nodes never both act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rentahal.backends import get_backend
from rentahal.errors import BrokerError, WorkerError
from rentahal.models import AIWorker, infer_protocol
from rentahal.realms.config import ProvisionerConfig, RealmConfig, ScalingConfig
from rentahal.realms.provisioners import (
    Provisioned,
    Provisioner,
    ProvisionError,
    make_provisioner,
)
from rentahal.realms.scaler_book import ScalerBook

if TYPE_CHECKING:
    from rentahal.broker import Broker
    from rentahal.realms.registration import Registrations

logger = logging.getLogger(__name__)

LEASE_FLOOR_S = 5.0  # shortest scaler lease, whatever the interval

MAX_EVENTS = 200
MAX_BACKOFF_S = 600.0
HEALTH_POLL_S = 0.25
BACKUP_MARK = "_backup_"


@dataclass(slots=True)
class ScalerEvent:
    """One decision or outcome of the scaler, with the figures behind it."""

    at: float
    realm: str
    action: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """As the console shows it."""
        return {
            "at": self.at,
            "realm": self.realm,
            "action": self.action,
            "reason": self.reason,
            "figures": self.figures,
        }


@dataclass
class _Book:
    """What the scaler remembers of one realm."""

    samples: deque[tuple[float, int, int, float, float]] = field(default_factory=deque)
    last_change: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    busy: bool = False  # a start or a drain is under way
    provisioner: Provisioner | None = None
    provisioner_key: str = ""


@dataclass(slots=True)
class Figures:
    """A realm's measured load."""

    workers: int
    utilisation: float
    queue_wait_s: float
    waiting: int
    error_rate: float
    finished: int

    def view(self) -> dict[str, Any]:
        """Rounded, for events and the console."""
        return {
            "workers": self.workers,
            "utilisation": round(self.utilisation, 3),
            "queue_wait_s": round(self.queue_wait_s, 2),
            "waiting": self.waiting,
            "error_rate": round(self.error_rate, 3),
            "finished": self.finished,
        }


class RealmScaler:
    """One per installation; acts only on the node that holds the ``scaler`` lease."""

    def __init__(
        self,
        broker: Broker,
        registrations: Registrations | None = None,
        broker_url: str = "",
        book: ScalerBook | None = None,
    ) -> None:
        self.broker = broker
        self.book = book
        self._leading = False
        self.registrations = registrations
        self.broker_url = broker_url
        self._tokens: dict[str, str] = {}
        self.events: deque[ScalerEvent] = deque(maxlen=MAX_EVENTS)
        self.provisioned: dict[str, tuple[Provisioned, Provisioner]] = {}
        self.books: dict[str, _Book] = {}
        self.actions: dict[tuple[str, str], int] = {}
        self.figures: dict[str, Figures] = {}
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def config(self) -> ScalingConfig:
        """The scaling settings of the shared realm configuration."""
        realms = self.broker.realms
        return realms.registry.file.scaling if realms is not None else ScalingConfig(enabled=False)

    def start(self) -> None:
        """Start the scaling loop."""
        self._task = asyncio.create_task(self._loop(), name="realm-scaler")

    async def stop(self) -> None:
        """Stop scaling and stop every worker this node started."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._work):
            task.cancel()
        if self._work:
            await asyncio.wait(self._work, timeout=5.0)
        for name, (worker, provisioner) in list(self.provisioned.items()):
            with contextlib.suppress(Exception):
                await provisioner.stop(worker)
                if self.book is not None:
                    await self.book.remove(name)
            self.provisioned.pop(name, None)
        if self.registrations is not None:
            for token in self._tokens.values():
                with contextlib.suppress(BrokerError):
                    await self.registrations.tokens.revoke(token[:12])

    async def _loop(self) -> None:
        while True:
            interval = self.config.interval_s
            try:
                leading = self.config.enabled and await self.broker.parts().state.try_lead(
                    "scaler", self.broker.node_id, max(interval * 3, LEASE_FLOOR_S)
                )
                if leading and not self._leading:
                    await self._take_over()
                self._leading = leading
                if leading:
                    await self.tick()
            except Exception:
                logger.exception("scaler round failed")
            await asyncio.sleep(interval)

    async def _take_over(self) -> None:
        """Adopt the workers an earlier leader started (so they can be scaled down)."""
        if self.book is None or self.broker.realms is None:
            return
        for worker, node_id in await self.book.load():
            if worker.name in self.provisioned:
                continue
            realm = self.broker.realms.registry.realms.get(worker.realm)
            config = realm.config.provisioner if realm is not None else None
            if config is None or self.broker.parts().registry.get(worker.name) is None:
                await self.book.remove(worker.name)  # gone with its realm or its node
                continue
            self.provisioned[worker.name] = (worker, self._provisioner(worker.realm, config))
            self._event(worker.realm, "adopted", f"{worker.name} (started by {node_id})", None)

    # -- measuring ---------------------------------------------------------------

    def _states(self, realm: str) -> list[Any]:
        realms = self.broker.realms
        if realms is None:
            return []
        manager = realms.managers.get(realm)
        return manager.states() if manager is not None else []

    async def measure(self, realm: str) -> Figures:
        """Sample the realm now and return its figures over the window."""
        now = time.monotonic()
        book = self.books.setdefault(realm, _Book())
        states = [s for s in self._states(realm) if not s.draining]
        usable = [s for s in states if s.available(now, ignore_saturation=True)]
        capacity = sum(s.worker.max_concurrency for s in usable)
        busy = sum(min(s.in_flight, s.worker.max_concurrency) for s in usable)
        totals = self.broker.parts().metrics.totals(realm)
        book.samples.append((now, busy, capacity, totals["processed"], totals["errors"]))
        window = self.config.window_s
        while book.samples and now - book.samples[0][0] > window:
            book.samples.popleft()
        slots = sum(c for _t, _b, c, _p, _e in book.samples)
        used = sum(b for _t, b, _c, _p, _e in book.samples)
        first = book.samples[0]
        processed = totals["processed"] - first[3]
        errors = totals["errors"] - first[4]
        finished = int(processed + errors)
        waiting = await self.broker.parts().bus.waiting(realm)
        oldest = min((job.submitted_at for job in waiting), default=None)
        figures = Figures(
            workers=len(states),
            utilisation=(used / slots) if slots else (1.0 if waiting else 0.0),
            queue_wait_s=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
            waiting=len(waiting),
            error_rate=(errors / finished) if finished else 0.0,
            finished=finished,
        )
        self.figures[realm] = figures
        return figures

    # -- deciding ----------------------------------------------------------------

    def _event(self, realm: str, action: str, reason: str, figures: Figures | None) -> None:
        event = ScalerEvent(time.time(), realm, action, reason, figures.view() if figures else {})
        self.events.append(event)
        self.actions[(realm, action)] = self.actions.get((realm, action), 0) + 1
        logger.info("scaler %s %s: %s %s", realm, action, reason, event.figures)

    def _provisioner(self, realm: str, config: ProvisionerConfig) -> Provisioner:
        book = self.books.setdefault(realm, _Book())
        key = config.model_dump_json()
        if book.provisioner is None or book.provisioner_key != key:
            book.provisioner, book.provisioner_key = make_provisioner(config), key
        return book.provisioner

    async def tick(self) -> None:
        """One round over every realm with a provisioner."""
        realms = self.broker.realms
        if realms is None:
            return
        for name, realm in list(realms.registry.realms.items()):
            config = realm.config
            if config.provisioner is None or realm.stopped:
                continue
            figures = await self.measure(name)
            await self._decide(name, config, figures)

    async def _decide(self, name: str, config: RealmConfig, figures: Figures) -> None:
        scaling = self.config
        book = self.books.setdefault(name, _Book())
        now = time.monotonic()
        if book.busy or now < book.retry_at:
            return
        assert config.provisioner is not None
        cooled = now - book.last_change >= scaling.cooldown_s
        overloaded = (
            figures.utilisation > scaling.high_load
            or figures.queue_wait_s > scaling.queue_wait_s
            or (figures.finished >= 5 and figures.error_rate > scaling.error_rate)
        )
        idle = figures.utilisation < scaling.low_load and figures.waiting == 0
        if figures.workers < config.min_workers:
            self._spawn(self._scale_up(name, config, figures, "below min_workers"))
        elif overloaded and cooled:
            reason = self._why(figures, scaling)
            if figures.workers < config.max_workers:
                self._spawn(self._scale_up(name, config, figures, reason))
            elif BACKUP_MARK not in name:
                await self._open_backup(name, config, figures, reason)
        elif idle and cooled:
            if figures.workers > config.min_workers:
                victim = self._least_used(name, config.provisioner)
                if victim is not None:
                    self._spawn(self._scale_down(name, victim, config.provisioner, figures))
            elif BACKUP_MARK in name and figures.workers <= config.min_workers:
                await self._close_backup(name, figures)

    @staticmethod
    def _why(figures: Figures, scaling: ScalingConfig) -> str:
        if figures.utilisation > scaling.high_load:
            return f"utilisation {figures.utilisation:.2f} > high_load {scaling.high_load}"
        if figures.queue_wait_s > scaling.queue_wait_s:
            return f"queue wait {figures.queue_wait_s:.1f}s > {scaling.queue_wait_s:g}s"
        return f"error rate {figures.error_rate:.2f} > {scaling.error_rate}"

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work, name="scaler-work")
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def _least_used(self, realm: str, config: ProvisionerConfig) -> str | None:
        mine = [
            s
            for s in self._states(realm)
            if not s.draining and (s.worker.name in self.provisioned or config.manage_existing)
        ]
        if not mine:
            return None
        least = min(mine, key=lambda s: (s.in_flight, s.calls_total))
        return str(least.worker.name)

    # -- acting ------------------------------------------------------------------

    async def _scale_up(
        self, realm: str, config: RealmConfig, figures: Figures, reason: str
    ) -> None:
        book = self.books.setdefault(realm, _Book())
        book.busy = True
        assert config.provisioner is not None
        prov_config = config.provisioner
        name = f"auto-{realm.strip('$').lower()}-{uuid.uuid4().hex[:6]}"
        self._event(realm, "scale_up", reason, figures)
        started: Provisioned | None = None
        provisioner: Provisioner | None = None
        try:
            provisioner = self._provisioner(realm, prov_config)
            registers = self._registers_itself(prov_config)
            values = {"broker": self.broker_url}
            if registers:
                values["token"] = await self._token_for(realm)
            async with asyncio.timeout(prov_config.start_timeout_s):
                started = await provisioner.start(name, realm, config.primary_query_type, values)
                if registers:
                    # It joins like any worker: through /api/workers/register.
                    await self._wait_registered(name)
                else:
                    worker = AIWorker(
                        name=name,
                        address=started.address,
                        type=config.primary_query_type,  # type: ignore[arg-type]
                        protocol=prov_config.protocol or infer_protocol(config.primary_query_type),
                        max_concurrency=prov_config.max_concurrency,
                        realm=realm,
                    )
                    await self._wait_healthy(worker)
                    await self.broker.fleet.add_worker(worker)
            self.provisioned[name] = (started, provisioner)
            if self.book is not None:
                await self.book.add(started, self.broker.node_id)
            book.failures, book.retry_at = 0, 0.0
            logger.info("scaler started %s at %s", name, started.address)
            self._event(realm, "added", f"{name} joined", figures)
        except asyncio.CancelledError:
            # Stopping: what was started must not outlive the broker.
            if started is not None and provisioner is not None:
                await asyncio.shield(provisioner.stop(started))
            raise
        except (ProvisionError, TimeoutError, BrokerError, OSError) as exc:
            book.failures += 1
            delay = min(MAX_BACKOFF_S, self.config.interval_s * 2**book.failures)
            book.retry_at = time.monotonic() + delay
            why = str(exc) or "did not become healthy in time"
            self._event(realm, "failed", f"{why}; next try in {delay:.1f}s", figures)
            if started is not None and provisioner is not None:
                with contextlib.suppress(Exception):
                    await provisioner.stop(started)
        finally:
            book.last_change = time.monotonic()
            book.busy = False

    @staticmethod
    def _registers_itself(config: ProvisionerConfig) -> bool:
        template = " ".join(filter(None, (config.command, config.start)))
        return "{token}" in template

    async def _token_for(self, realm: str) -> str:
        """A token scoped to ``realm`` for the workers this scaler starts (kept in memory)."""
        token = self._tokens.get(realm)
        if token is None:
            if self.registrations is None:
                raise ProvisionError("worker registration is not available")
            token, _record = await self.registrations.tokens.create(name="scaler", realm=realm)
            self._tokens[realm] = token
        return token

    async def _wait_registered(self, name: str) -> None:
        while self.broker.parts().registry.get(name) is None:
            await self.broker.parts().registry.wait_for_change(1.0)

    async def _wait_healthy(self, worker: AIWorker) -> None:
        backend = get_backend(worker.protocol)
        while True:
            with contextlib.suppress(WorkerError):
                if await backend.probe(self.broker.parts().client, worker, 2.0) == 200:
                    return
            await asyncio.sleep(HEALTH_POLL_S)

    async def _scale_down(
        self, realm: str, name: str, config: ProvisionerConfig, figures: Figures
    ) -> None:
        book = self.books.setdefault(realm, _Book())
        book.busy = True
        try:
            await self._drain_and_remove(realm, name, config, figures)
        finally:
            book.last_change = time.monotonic()
            book.busy = False

    async def _drain_and_remove(
        self, realm: str, name: str, config: ProvisionerConfig, figures: Figures | None
    ) -> None:
        registry = self.broker.parts().registry
        state = registry.get(name)
        self._event(realm, "drain", f"{name}: no new jobs, finishing its calls", figures)
        if state is not None:
            state.draining = True
            registry.changed()
            deadline = time.monotonic() + config.drain_timeout_s
            while state.in_flight > 0 and time.monotonic() < deadline:
                await registry.wait_for_change(min(1.0, deadline - time.monotonic()))
        await self.broker.fleet.remove_worker(name)
        entry = self.provisioned.pop(name, None)
        if self.book is not None:
            await self.book.remove(name)
        if entry is not None:
            worker, provisioner = entry
            try:
                await provisioner.stop(worker)
            except ProvisionError as exc:
                self._event(realm, "failed", f"stopping {name}: {exc}", figures)
        self._event(realm, "removed", name, figures)

    async def _open_backup(
        self, realm: str, config: RealmConfig, figures: Figures, reason: str
    ) -> None:
        realms = self.broker.realms
        assert realms is not None
        ours = [b for b in config.backup_realms if b.startswith(f"{realm}{BACKUP_MARK}")]
        if len(ours) >= self.config.max_backup_realms:
            return
        for backup_name in ours:
            # The last backup must be at work before another one opens.
            if self.books.get(backup_name, _Book()).busy or not self._states(backup_name):
                return
        n = 1
        while f"{realm}{BACKUP_MARK}{n}" in realms.registry.realms:
            n += 1
        backup = f"{realm}{BACKUP_MARK}{n}"
        book = self.books.setdefault(realm, _Book())
        book.last_change = time.monotonic()
        fields = {
            "primary_query_type": config.primary_query_type,
            "min_workers": 1,
            "max_workers": config.max_workers,
            "strategy": config.strategy,
            "queue_threshold": config.queue_threshold,
            "description": f"opened by the scaler for {realm}",
            "provisioner": config.provisioner.model_dump() if config.provisioner else None,
        }
        try:
            await realms.create_realm(backup, fields)
            await realms.update_realm(realm, {"backup_realms": [*config.backup_realms, backup]})
        except (BrokerError, ValueError) as exc:
            self._event(realm, "failed", f"backup realm {backup}: {exc}", figures)
            return
        self._event(realm, "backup_opened", f"{backup} at max_workers ({reason})", figures)

    async def _close_backup(self, backup: str, figures: Figures) -> None:
        realms = self.broker.realms
        assert realms is not None
        primary = backup.split(BACKUP_MARK, 1)[0]
        main = realms.registry.realms.get(primary)
        if main is not None:
            main_figures = self.figures.get(primary)
            if main_figures is not None and main_figures.utilisation >= self.config.low_load:
                return
        config = realms.registry.realms[backup].config
        book = self.books.setdefault(backup, _Book())
        book.busy = True
        try:
            for state in list(self._states(backup)):
                if state.worker.name in self.provisioned and config.provisioner is not None:
                    await self._drain_and_remove(
                        backup, state.worker.name, config.provisioner, figures
                    )
            if main is not None:
                backups = [b for b in main.config.backup_realms if b != backup]
                await realms.update_realm(primary, {"backup_realms": backups})
            await realms.delete_realm(backup)
            self._event(primary, "backup_closed", f"{backup} idle", figures)
        except (BrokerError, ValueError) as exc:
            self._event(backup, "failed", f"closing: {exc}", figures)
        finally:
            book.busy = False

    # -- views -------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """Events, figures and provisioned workers for the console and the dashboard."""
        return {
            "events": [e.view() for e in reversed(self.events)],
            "realms": {name: f.view() for name, f in self.figures.items()},
            "provisioned": sorted(self.provisioned),
            "config": self.config.model_dump(),
        }


class ScalerCollector:
    """``rentahal_scaler_*`` metrics, read on each scrape."""

    def __init__(self, scaler: RealmScaler) -> None:
        self.scaler = scaler

    def collect(self) -> Any:
        """Actions, provisioned workers and measured utilisation per realm."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        actions = CounterMetricFamily(
            "rentahal_scaler_actions", "Scaler decisions and outcomes", labels=["realm", "action"]
        )
        for (realm, action), count in sorted(self.scaler.actions.items()):
            actions.add_metric([realm, action], count)
        yield actions
        provisioned = GaugeMetricFamily(
            "rentahal_scaler_provisioned_workers", "Workers the scaler started", labels=["realm"]
        )
        per_realm: dict[str, int] = {}
        for worker, _provisioner in self.scaler.provisioned.values():
            per_realm[worker.realm] = per_realm.get(worker.realm, 0) + 1
        for realm, count in sorted(per_realm.items()):
            provisioned.add_metric([realm], count)
        yield provisioned
        utilisation = GaugeMetricFamily(
            "rentahal_scaler_utilisation", "Busy slots over capacity (window)", labels=["realm"]
        )
        wait = GaugeMetricFamily(
            "rentahal_scaler_queue_wait_seconds", "Wait of the oldest queued job", labels=["realm"]
        )
        for realm, figures in sorted(self.scaler.figures.items()):
            utilisation.add_metric([realm], figures.utilisation)
            wait.add_metric([realm], figures.queue_wait_s)
        yield utilisation
        yield wait
