"""Admission of HTTP queries: each user's share, waited for instead of refused.

A WebSocket client that has ``max_queued_per_user`` queries in flight is told
"You already have N queries waiting", as the original broker did. An HTTP
caller cannot be told to resend later without losing its request, so its
queries beyond the share wait here, first come first served per user, for at
most ``queue_timeout``; then the fair queue (:mod:`rentahal.bus.fair`) orders
them against other users' queries. Streamed chats (``stream: true``), which do
not wait in a realm queue, take their share here too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rentahal.config import QueueSettings
from rentahal.errors import QueueFull


@dataclass(slots=True)
class _Share:
    active: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class Admission:
    """Per-user slots for HTTP queries (queued, running or streamed).

    At most ``max_queued_per_user`` slots per user are in use; more requests
    wait in line, at most ``max_waiting_requests_per_user`` of them. Memory
    holds only users with a slot in use or a request waiting.
    """

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self._shares: dict[str, _Share] = {}
        self._streams: Counter[str] = Counter()

    def in_flight(self, guid: str) -> int:
        """Slots of ``guid`` in use."""
        share = self._shares.get(guid)
        return share.active if share is not None else 0

    def waiting(self, guid: str) -> int:
        """Requests of ``guid`` waiting for a slot."""
        share = self._shares.get(guid)
        return len(share.waiters) if share is not None else 0

    def streams(self, guid: str) -> int:
        """Streamed queries of ``guid`` running now (they count in the user's share)."""
        return self._streams[guid]

    @contextlib.asynccontextmanager
    async def share(
        self, guid: str, timeout_s: float | None = None, *, streamed: bool = False
    ) -> AsyncIterator[None]:
        """Hold one of ``guid``'s slots for the body of the ``async with``.

        Waits for a slot for ``timeout_s`` (default ``queue_timeout``);
        ``QueueFull`` when the wait is too long or too many requests wait.
        """
        await self._acquire(guid, self.settings.queue_timeout if timeout_s is None else timeout_s)
        if streamed:
            self._streams[guid] += 1
        try:
            yield
        finally:
            if streamed:
                self._streams[guid] -= 1
                if self._streams[guid] <= 0:
                    del self._streams[guid]
            self._release(guid)

    async def _acquire(self, guid: str, timeout_s: float) -> None:
        share = self._shares.get(guid)
        if share is None:  # no new _Share (and deque) per call when one is held already
            share = self._shares[guid] = _Share()
        if share.active < self.settings.max_queued_per_user and not share.waiters:
            share.active += 1
            return
        if len(share.waiters) >= self.settings.max_waiting_requests_per_user:
            self._drop_if_idle(guid, share)
            raise QueueFull(
                f"You already have {len(share.waiters)} requests waiting; "
                "please wait for them to finish"
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        share.waiters.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self._release(guid)  # handed a slot just as we gave up: pass it on
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    share.waiters.remove(fut)
                self._drop_if_idle(guid, share)
            if isinstance(exc, TimeoutError):
                raise QueueFull(
                    f"Your other queries kept your share busy for {timeout_s:g}s; "
                    "please try again later"
                ) from None
            raise

    def _release(self, guid: str) -> None:
        share = self._shares.get(guid)
        if share is None:
            return
        while share.waiters:
            fut = share.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes to the next in line
                return
        share.active -= 1
        self._drop_if_idle(guid, share)

    def _drop_if_idle(self, guid: str, share: _Share) -> None:
        if share.active <= 0 and not share.waiters:
            self._shares.pop(guid, None)
