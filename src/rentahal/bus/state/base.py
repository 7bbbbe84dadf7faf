"""``ClusterState``: facts beside the bus that every node must agree on.

Worker slots (leases that expire on their own if a node dies, so counts never
go negative), leadership locks, result mailboxes and the running-jobs map. The
memory implementation serves one node (``memory.py``); the Redis one is shared
by every node using the same Redis (``redis.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

MAILBOX_TTL_S = 600
MAILBOX_LENGTH = 50


class ClusterState(Protocol):
    """Facts every node must agree on."""

    async def close(self) -> None:
        """Disconnect."""
        ...

    async def acquire_slot(self, worker: str, cap: int, holder: str, lease_s: float) -> bool:
        """Take one of ``worker``'s ``cap`` slots for ``holder``; False when all are taken."""
        ...

    async def release_slot(self, worker: str, holder: str) -> None:
        """Give a slot back."""
        ...

    async def try_lead(self, role: str, node_id: str, ttl_s: float) -> bool:
        """Take or renew the lock of ``role``; True while this node holds it."""
        ...

    async def post_result(
        self, user_guid: str, result: dict[str, Any], *, finished: str | None = None
    ) -> None:
        """Keep a result for delivery to the user's sockets, also after a reconnect.

        ``finished``: also clear that job from the running set, in the same step
        (one round trip; the result is kept no later than the job stops running).
        """
        ...

    async def undelivered(self, user_guid: str) -> list[dict[str, Any]]:
        """The user's kept results that no socket has received yet."""
        ...

    async def mark_delivered(self, job_id: str) -> bool:
        """Note that a socket received ``job_id``'s result; True the first time."""
        ...

    async def set_running(self, job_id: str, node_id: str, user_guid: str) -> None:
        """Note that ``node_id`` runs ``job_id``."""
        ...

    async def clear_running(self, job_id: str) -> None:
        """The job finished."""
        ...

    async def running(self, job_id: str) -> tuple[str, str] | None:
        """``(node_id, user_guid)`` of a running job, or None."""
        ...

    async def running_count(self) -> int:
        """Jobs running on all nodes."""
        ...
