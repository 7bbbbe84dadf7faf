"""The fleet: workers and Hugging Face models, persisted and kept in step across nodes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rentahal.backends import ClaudeBackend, HttpClient, HuggingFaceBackend, register_backend
from rentahal.backends.health import HealthMonitor
from rentahal.broker.control import (
    ControlChannel,
    Health,
    ModelsChanged,
    SlotFree,
    WorkerHealth,
    WorkersChanged,
)
from rentahal.config import Settings
from rentahal.errors import StorageError
from rentahal.models import AIWorker, HuggingFaceModel
from rentahal.realms.workers import WorkerRegistry
from rentahal.storage.database import Storage
from rentahal.worker_addresses import check_worker_address

logger = logging.getLogger(__name__)

Broadcast = Callable[[dict[str, Any]], Awaitable[None]]
_VOLATILE = {"health_score", "is_blacklisted", "last_active"}


def configure_backends(settings: Settings) -> None:
    """Give the Claude and Hugging Face backends their defaults from config.ini."""
    register_backend(ClaudeBackend(default_model=settings.claude.model_name))
    models = [m.strip() for m in settings.huggingface.default_models.split(",") if m.strip()]
    register_backend(HuggingFaceBackend(default_model=models[0] if models else None))


def configured_workers(settings: Settings) -> list[AIWorker]:
    """Workers implied by ``[Claude]`` / ``[HuggingFace]`` API keys, as the original used them.

    They live in memory only (each node derives them from its own config), so
    keys stay in the config file and never reach the database.
    """
    workers = []
    if settings.claude.api_key:
        workers.append(
            AIWorker(
                name="claude",
                address=settings.claude.endpoint,
                type="chat",
                protocol="claude",
                api_key=settings.claude.api_key,
                max_concurrency=8,
            )
        )
    if settings.huggingface.api_key:
        models = [m.strip() for m in settings.huggingface.default_models.split(",") if m.strip()]
        workers.append(
            AIWorker(
                name="huggingface",
                address="api-inference.huggingface.co",
                type="chat",
                protocol="huggingface",
                api_key=settings.huggingface.api_key,
                models=models,
                max_concurrency=8,
            )
        )
    return workers


class Fleet:
    """Adds, removes and heals workers; every node's registry follows the database.

    Changes are saved first, then announced on the control channel so other
    nodes reload; health found by the probing node (the fleet runs the probes)
    travels the same way.
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        registry: WorkerRegistry,
        control: ControlChannel,
        broadcast: Broadcast,
        queue_changed: Callable[[], None],
        *,
        client: HttpClient,
        is_leader: Callable[[], Awaitable[bool]],
        distributed: bool,
        alone: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._registry = registry
        self._control = control
        self._broadcast = broadcast
        self._queue_changed = queue_changed
        self._distributed = distributed
        self._alone = alone
        self.hf_models: list[HuggingFaceModel] = []
        # Probes run on the node that holds the "health" lease; others learn by message.
        self._health = HealthMonitor(
            registry.workers,
            client,
            registry.rules,
            settings.workers,
            self.health_changed,
            is_leader=is_leader,
            open_circuits=registry.open_circuits,
            on_probe_ok=registry.probe_succeeded,
        )
        control.on(SlotFree, self._on_slot_free)
        control.on(WorkersChanged, self._on_workers_changed)
        control.on(ModelsChanged, self._on_models_changed)
        control.on(Health, self._on_health)

    async def load(self) -> None:
        """Fill the registry and model list from the database and the config's API keys."""
        configure_backends(self._settings)
        stored = await self._storage.list_workers()
        for worker in stored:
            self._registry.add(worker)
        names = {w.name for w in stored}
        for worker in configured_workers(self._settings):
            if worker.name not in names:
                self._registry.add(worker)
        self.hf_models = await self._storage.list_hf_models()

    def start_probes(self) -> None:
        """Start the health probes (and the probes of open circuits)."""
        self._health.start()

    async def stop_probes(self) -> None:
        """Stop the health probes."""
        await self._health.stop()

    async def _on_slot_free(self, message: SlotFree) -> None:
        self._registry.slot_freed(message.worker)

    async def _on_workers_changed(self, message: WorkersChanged) -> None:
        await self.reload_workers()

    async def _on_models_changed(self, message: ModelsChanged) -> None:
        self.hf_models = await self._storage.list_hf_models()

    async def _on_health(self, message: Health) -> None:
        for data in message.workers:
            state = self._registry.get(data.name)
            if state is not None:
                state.worker.health_score = data.health_score
                state.worker.is_blacklisted = data.is_blacklisted
        self._registry.changed()

    async def announce_slot_free(self, worker: str) -> None:
        """Tell every node (this one first) that a cluster slot of ``worker`` was released.

        Not sent while no other node listens (``alone``: the last control message,
        within a second, reached this node only); one a second still goes out to look.
        """
        self._registry.slot_freed(worker)
        if not self._alone():
            await self._control.publish(SlotFree(worker=worker))

    async def reload_workers(self) -> None:
        """Make the registry match the database (keeping live state of unchanged workers)."""
        registry = self._registry
        stored = {w.name: w for w in await self._storage.list_workers()}
        configured = {w.name for w in configured_workers(self._settings)}
        # Workers standing for other installations live in memory only.
        remote = {w.name for w in registry.workers() if w.protocol == "federation"}
        for name in [w.name for w in registry.workers() if w.name not in stored]:
            if name not in configured and name not in remote:
                registry.remove(name)
        for worker in stored.values():
            current = registry.get(worker.name)
            if current is None or current.worker.model_dump(exclude=_VOLATILE) != worker.model_dump(
                exclude=_VOLATILE
            ):
                registry.add(worker)

    async def add_worker(self, worker: AIWorker) -> None:
        """Register (or replace) a worker, persist it, tell everyone.

        ``QueryRejected`` when its address is not allowed (see ``worker_addresses``).
        """
        await check_worker_address(worker, self._settings.security)
        await self._storage.save_worker(worker)
        self._registry.add(worker)
        await self._control.publish(WorkersChanged())
        await self.broadcast_workers()
        self._queue_changed()

    async def remove_worker(self, name: str) -> bool:
        """Forget a worker; running calls on it finish."""
        found = self._registry.remove(name)
        found = await self._storage.delete_worker(name) or found
        await self._control.publish(WorkersChanged())
        await self.broadcast_workers()
        self._queue_changed()
        return found

    async def reset_health(self, name: str | None = None) -> int:
        """Clear blacklist and circuits and restore health (one or all workers)."""
        changed = self._registry.reset_health(name)
        await self._storage.save_health(changed)
        await self._publish_health(changed)
        await self.broadcast_workers()
        return len(changed)

    async def broadcast_workers(self) -> None:
        """Send ``worker_update`` to everyone."""
        await self._broadcast({"type": "worker_update", "workers": self._registry.public()})

    async def health_changed(self, workers: list[AIWorker]) -> None:
        """The probes changed these workers' health: save, share, broadcast."""
        try:
            await self._storage.save_health(workers)
        except StorageError as exc:
            logger.error("could not save worker health: %s", exc)
        if workers:
            await self._publish_health(workers)
            await self.broadcast_workers()
            self._queue_changed()

    async def _publish_health(self, workers: list[AIWorker]) -> None:
        if not self._distributed or not workers:
            return
        data = [
            WorkerHealth(name=w.name, health_score=w.health_score, is_blacklisted=w.is_blacklisted)
            for w in workers
        ]
        await self._control.publish(Health(workers=data))

    async def add_hf_model(self, model: HuggingFaceModel) -> None:
        """Make a Hugging Face model available."""
        await self._storage.add_hf_model(model)
        self.hf_models = await self._storage.list_hf_models()
        await self._control.publish(ModelsChanged())
        await self.broadcast_hf_models()

    async def remove_hf_model(self, name: str) -> bool:
        """Remove a Hugging Face model."""
        found = await self._storage.remove_hf_model(name)
        self.hf_models = await self._storage.list_hf_models()
        await self._control.publish(ModelsChanged())
        await self.broadcast_hf_models()
        return found

    async def broadcast_hf_models(self) -> None:
        """Send ``huggingface_update`` to everyone."""
        await self._broadcast(
            {"type": "huggingface_update", "models": [m.model_dump() for m in self.hf_models]}
        )
