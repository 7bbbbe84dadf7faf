"""Cluster state of a single node (the embedded deployment)."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

from rentahal.bus.state.base import MAILBOX_LENGTH, MAILBOX_TTL_S


class MemoryState:
    """State of a single node (the embedded deployment)."""

    def __init__(self) -> None:
        self._mail: defaultdict[str, deque[tuple[float, dict[str, Any]]]] = defaultdict(
            lambda: deque(maxlen=MAILBOX_LENGTH)
        )
        self._delivered: dict[str, float] = {}
        self._running: dict[str, tuple[str, str]] = {}

    async def close(self) -> None:
        return None

    async def acquire_slot(self, worker: str, cap: int, holder: str, lease_s: float) -> bool:
        return True  # the local registry already counts every call of the only node

    async def release_slot(self, worker: str, holder: str) -> None:
        return None

    async def try_lead(self, role: str, node_id: str, ttl_s: float) -> bool:
        return True

    def _prune(self, now: float) -> None:
        for job_id in [j for j, t in self._delivered.items() if now - t > MAILBOX_TTL_S]:
            del self._delivered[job_id]

    async def post_result(
        self, user_guid: str, result: dict[str, Any], *, finished: str | None = None
    ) -> None:
        self._mail[user_guid].append((time.monotonic(), result))
        if finished is not None:
            self._running.pop(finished, None)

    async def undelivered(self, user_guid: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._prune(now)
        box = self._mail.get(user_guid)
        if not box:
            return []
        return [
            r for t, r in box if now - t <= MAILBOX_TTL_S and r.get("job_id") not in self._delivered
        ]

    async def mark_delivered(self, job_id: str) -> bool:
        first = job_id not in self._delivered
        self._delivered[job_id] = time.monotonic()
        return first

    async def set_running(self, job_id: str, node_id: str, user_guid: str) -> None:
        self._running[job_id] = (node_id, user_guid)

    async def clear_running(self, job_id: str) -> None:
        self._running.pop(job_id, None)

    async def running(self, job_id: str) -> tuple[str, str] | None:
        return self._running.get(job_id)

    async def running_count(self) -> int:
        return len(self._running)
