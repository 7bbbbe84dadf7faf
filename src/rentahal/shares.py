"""Queue shares: how many queries one user, and one client address, may have waiting or running.

Every accepted query holds a lease on its user's counter and on its client
address's counter (:mod:`rentahal.bus.counters`, cluster-wide in Redis mode),
so neither a user with sockets on several nodes nor a client that makes a new
user per connection can take more than its share of ``max_queue_size``. The
node that accepted a query renews its leases while the query lives and
releases them when its result is out; a node that dies stops renewing, and its
leases expire after ``LEASE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from contextvars import ContextVar

from rentahal.bus import keys
from rentahal.bus.counters import ShareCounters
from rentahal.config import QueueSettings
from rentahal.errors import BrokerError, QueueFull, ShareFull

logger = logging.getLogger(__name__)

LEASE_S = 60.0
RENEW_EVERY_S = LEASE_S / 3

client_address: ContextVar[str | None] = ContextVar("client_address", default=None)
"""The client address of the request or socket being served (set by the API layer)."""


def address_cap(queue: QueueSettings) -> int:
    """Queries one client address may hold: ``max_queued_per_address``, or when that is 0,
    three users' worth but at most half of ``max_queue_size``."""
    if queue.max_queued_per_address:
        return queue.max_queued_per_address
    return max(1, min(3 * queue.max_queued_per_user, queue.max_queue_size // 2))


def user_key(guid: str) -> str:
    """The counter of a user's queued queries."""
    return keys.share_key("user", guid)


def address_key(address: str) -> str:
    """The counter of a client address's queued queries."""
    return keys.share_key("address", address)


class Shares:
    """Admits queries against the per-user and per-address caps; owns this node's leases.

    ``max_hold_s`` bounds how long a query's leases are renewed (its longest
    possible life), so a query lost without a result cannot lock a share.
    """

    def __init__(self, queue: QueueSettings, counters: ShareCounters, max_hold_s: float) -> None:
        self.queue = queue
        self.counters = counters
        self.max_hold_s = max_hold_s
        self._held: dict[str, tuple[float, list[str]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def admit(self, job_id: str, user_guid: str, address: str | None = None) -> None:
        """Take ``job_id``'s leases; ``QueueFull`` (nothing taken) when a share is used up."""
        caps = self.caps(user_guid, address)
        full = await self.counters.acquire(job_id, caps, LEASE_S)
        if full is None:
            self.adopt(job_id, caps)
            return
        raise self.refusal(full, caps, user_guid)

    def caps(self, user_guid: str, address: str | None = None) -> dict[str, int]:
        """The counters a query of ``user_guid`` takes a lease on, with their caps
        (the client address is the request's unless given)."""
        address = address if address is not None else client_address.get()
        caps = {user_key(user_guid): self.queue.max_queued_per_user}
        if address:
            caps[address_key(address)] = address_cap(self.queue)
        return caps

    def adopt(self, job_id: str, counters: Iterable[str]) -> None:
        """``job_id`` holds leases on ``counters`` (taken in one step elsewhere)."""
        self._held[job_id] = (time.monotonic(), list(counters))

    def take_over(self, job_id: str) -> list[str]:
        """Stop holding ``job_id``'s leases here: the caller drops them (the counters it had)."""
        held = self._held.pop(job_id, None)
        return held[1] if held is not None else []

    def refusal(self, full: str, caps: dict[str, int], user_guid: str) -> BrokerError:
        """The error for a query refused because counter ``full`` is at its cap."""
        if full == user_key(user_guid):
            # HTTP callers wait for their own share to free up (rentahal.admission).
            return ShareFull(
                f"You already have {self.queue.max_queued_per_user} queries waiting; "
                "please wait for them to finish"
            )
        return QueueFull(
            f"Too many queries waiting from your network address (limit {caps[full]}); "
            "please wait for them to finish"
        )

    def holds(self, job_id: str) -> bool:
        """Whether this node holds leases for ``job_id``."""
        return job_id in self._held

    async def release(self, job_id: str) -> None:
        """Give ``job_id``'s leases back (its result is out, or it was never queued).

        Never raises: a lease that cannot be dropped now expires after ``LEASE_S``.
        """
        held = self._held.pop(job_id, None)
        if held is None:
            return
        try:
            await self.counters.release(job_id, held[1])
        except BrokerError as exc:
            logger.warning("could not free the share of %s (it expires): %s", job_id, exc)

    async def renew(self) -> None:
        """Extend the leases of this node's live queries; forget those past ``max_hold_s``."""
        now = time.monotonic()
        for job_id in [j for j, (since, _k) in self._held.items() if now - since > self.max_hold_s]:
            logger.warning("query %s outlived its longest possible life; freeing its share", job_id)
            await self.release(job_id)
        leases = [(key, job_id) for job_id, (_s, ks) in self._held.items() for key in ks]
        await self.counters.renew(leases, LEASE_S)

    def start(self) -> None:
        """Start renewing leases in the background."""
        self._task = asyncio.create_task(self._renew_loop(), name="share-leases")

    async def stop(self) -> None:
        """Stop renewing (leases expire on their own; a stopping node's jobs move elsewhere)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                await self.renew()
            except BrokerError as exc:
                logger.warning("could not renew share leases: %s", exc)
