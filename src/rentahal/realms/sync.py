"""RealmSync: keeps this node's realms at the newest version of the shared configuration.

A node that changes the configuration announces the new version on the
control channel (:func:`realms_changed`); every node then reads the database
and applies the difference. The same check runs every ``interval_s`` in case
a pub/sub message was missed (Redis restart, a node busy at that moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rentahal.errors import StorageError
from rentahal.realms.store import RealmStore, StoredRealms

logger = logging.getLogger(__name__)

REALMS_CHANGED = "realms_changed"
CHECK_INTERVAL_S = 2.0


def realms_changed(version: int, node_id: str) -> dict[str, Any]:
    """The control message announcing realm configuration ``version``."""
    return {"op": REALMS_CHANGED, "version": version, "origin": node_id}


class RealmSync:
    """One task that applies newer stored versions, when told or every ``interval_s``.

    ``applied()`` answers the version this node runs; ``apply`` brings the
    node to a stored version (only ever called with a newer one, one at a time
    from this task).
    """

    def __init__(
        self,
        store: RealmStore,
        apply: Callable[[StoredRealms], Awaitable[None]],
        applied: Callable[[], int],
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.store = store
        self._apply = apply
        self._applied = applied
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the check loop (no-op when running)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="realm-sync")

    def notify(self) -> None:
        """Another node announced a change: check now rather than at the next tick."""
        self._wake.set()

    async def refresh(self) -> bool:
        """Apply the stored configuration if it is newer than this node's; whether it was."""
        version = await self.store.version()
        if version is None or version <= self._applied():
            return False
        stored = await self.store.load()
        if stored is None or stored.version <= self._applied():
            return False
        await self._apply(stored)
        return True

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
            except StorageError as exc:  # the database is away: the next tick tries again
                logger.warning("could not read the shared realm configuration: %s", exc)
            except Exception:
                logger.exception("could not apply the shared realm configuration")

    async def close(self) -> None:
        """Stop the check loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
