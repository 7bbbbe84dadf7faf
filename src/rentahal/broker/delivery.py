"""Getting results and broadcasts to people: waiters, fan-out, mailboxes, reconnect delivery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rentahal.bus import keys
from rentahal.bus.base import Bus
from rentahal.bus.redis import RedisBus
from rentahal.bus.state import ClusterState
from rentahal.bus.state.base import MAILBOX_LENGTH, MAILBOX_TTL_S
from rentahal.bus.state.redis import RedisState
from rentahal.errors import BusError
from rentahal.models import Result, User
from rentahal.realms.connections import Connection, RealmConnectionManager

logger = logging.getLogger(__name__)

BROADCAST_CHANNEL = "broadcast"
RESULTS_CHANNEL = "results"
# Most finished results remembered as delivered here until their echo comes back.
ECHOES_KEPT = 10_000
NOT_RECORDED = "The query ran but could not be recorded: database unavailable"
NOT_RECORDED_LATER = (
    "The query ran but could not be recorded yet: database unavailable; "
    "it will be recorded when the database is back"
)


def user_totals(user: User) -> dict[str, Any]:
    """The running totals a result frame carries (``user_totals``; no identity)."""
    return {
        "query_count": user.query_count,
        "total_query_time": user.total_query_time,
        "total_cost": user.total_cost,
    }


class Delivery:
    """Publishes finished results cluster-wide and hands each to its user once.

    A result goes to the waiter of the call that submitted it (an HTTP caller)
    if there is one, else to the user's sockets on every node; it is kept in
    the user's mailbox, so a user who was offline gets it on reconnect. Each
    socket receives a result at most once. ``on_delivered(job_id)`` runs on
    every node a result reaches, before it is handed out.
    """

    def __init__(
        self,
        bus: Bus,
        state: ClusterState,
        connections: RealmConnectionManager,
        on_delivered: Callable[[str], Awaitable[None]],
    ) -> None:
        self._bus = bus
        self._state = state
        self._connections = connections
        self._on_delivered = on_delivered
        self._waiters: dict[str, asyncio.Future[Result]] = {}
        # Results of jobs this node finished and delivered at once, whose echo from the
        # results channel needs no second delivery here (oldest dropped past the bound).
        self._echoes: dict[str, None] = {}

    def subscribe(self) -> None:
        """Listen for results and broadcasts (before the bus starts)."""
        self._bus.subscribe(BROADCAST_CHANNEL, self._on_broadcast)
        self._bus.subscribe(RESULTS_CHANNEL, self._on_result)

    def expect(self, job_id: str) -> None:
        """Keep ``job_id``'s result for :meth:`wait` instead of sending it to sockets."""
        self._waiters[job_id] = asyncio.get_running_loop().create_future()

    async def wait(self, job_id: str, timeout_s: float | None = None) -> Result:
        """Wait for an expected result (the waiter is gone afterwards, whatever happens)."""
        fut = self._waiters[job_id]
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self._waiters.pop(job_id, None)

    def drop(self, job_id: str) -> None:
        """Stop expecting ``job_id``'s result."""
        self._waiters.pop(job_id, None)

    def close(self) -> None:
        """Cancel every waiter (shutting down)."""
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()

    async def keep(
        self, user_guid: str, payload: dict[str, Any], *, finished: str | None = None
    ) -> bool:
        """Put a result in its user's mailbox; ``False`` when Redis cannot take it now.

        ``finished``: the job also leaves the running set in the same step.
        """
        try:
            await self._state.post_result(user_guid, payload, finished=finished)
            return True
        except BusError as exc:
            logger.warning(
                "could not keep the result of %s in a mailbox: %s", payload["job_id"], exc
            )
            return False

    async def keep_and_publish(
        self, queue: str, job_id: str, payload: dict[str, Any], shares: list[str]
    ) -> bool:
        """Keep, clear from queue and running set, and publish a result in one Redis step
        (dropping the job's leases on the ``shares`` counters in it).

        ``False`` (nothing done) on a single node or when Redis cannot take it
        now: then :meth:`keep`, the ack and :meth:`publish` go one by one.
        """
        if not isinstance(self._bus, RedisBus) or not isinstance(self._state, RedisState):
            return False
        try:
            await self._bus.finish(
                queue,
                job_id,
                payload,
                mailbox=(keys.mailbox_key(payload["user_guid"]), MAILBOX_LENGTH, MAILBOX_TTL_S),
                running_key=keys.running_key(),
                channel=RESULTS_CHANNEL,
                shares=shares,
            )
            return True
        except BusError as exc:
            logger.warning("could not finish %s in one step: %s", job_id, exc)
            return False

    async def deliver_finished(self, result: Result) -> None:
        """Deliver a result this node just kept and published to its waiter or sockets here
        now, not when the results channel brings it back (other nodes still get it there)."""
        echoes = self._echoes
        echoes[result.job_id] = None
        if len(echoes) > ECHOES_KEPT:
            del echoes[next(iter(echoes))]
        await self._deliver_result(result)

    async def publish(self, payload: dict[str, Any]) -> bool:
        """Send a result to every node; delivered on this one when the bus cannot carry it.

        ``False`` when it was neither published nor received by a socket here.
        """
        try:
            await self._bus.publish(RESULTS_CHANNEL, payload)
            return True
        except BusError as exc:
            logger.warning("could not publish the result of %s: %s", payload["job_id"], exc)
            return await self._deliver_here(payload)

    async def _on_result(self, message: dict[str, Any]) -> None:
        if self._echoes.pop(str(message.get("job_id")), 0) is None:
            return  # delivered here when it finished
        await self._deliver_here(message)

    async def _deliver_here(self, message: dict[str, Any]) -> bool:
        """Hand a result to its waiter or the user's sockets on this node; whether any got it."""
        return await self._deliver_result(Result.model_validate(message))

    async def _deliver_result(self, result: Result) -> bool:
        await self._on_delivered(result.job_id)
        fut = self._waiters.get(result.job_id)
        if fut is not None:
            if not fut.done():
                fut.set_result(result)
            await self._mark_delivered(result.job_id)
            return True
        if self.deliver(result, self._connections.of_user(result.user_guid)):
            await self._mark_delivered(result.job_id)
            return True
        return False

    async def _mark_delivered(self, job_id: str) -> None:
        try:
            await self._state.mark_delivered(job_id)
        except BusError as exc:
            logger.warning("could not note the delivery of %s: %s", job_id, exc)

    def deliver(self, result: Result, conns: list[Connection]) -> bool:
        """Send a result, with the user's updated totals in it, to sockets that lack it.

        No ``user_info`` follows, unlike before: the original client rebuilds its
        page (``init()``) on every ``user_info``, and the original sent none here.
        """
        frame = result.to_message()
        if result.user is not None:
            frame["user_totals"] = user_totals(result.user)
        frames = [frame]
        if not result.recorded:
            frames.append(
                {
                    "type": "error",
                    "job_id": result.job_id,
                    "message": NOT_RECORDED_LATER if result.recorded_later else NOT_RECORDED,
                }
            )
        sent = False
        for conn in conns:
            if conn.note_delivered(result.job_id):
                for frame in frames:
                    conn.send(frame)
                sent = True
        return sent

    async def deliver_pending(self, conn: Connection) -> None:
        """Results of the user that no socket received (they were offline): send them now."""
        for message in await self._state.undelivered(conn.user_guid):
            result = Result.model_validate(message)
            if self.deliver(result, [conn]):
                await self._mark_delivered(result.job_id)

    async def broadcast(self, message: dict[str, Any], *, sysops_only: bool = False) -> None:
        """Send to every connected client on every node."""
        await self._bus.publish(BROADCAST_CHANNEL, {"message": message, "sysops_only": sysops_only})

    async def tell_about(self, guid: str, message: dict[str, Any]) -> None:
        """Send a message about user ``guid`` to sysops and to that user only (every node).

        Such messages carry the GUID, which is the user's credential: no other
        user may see it.
        """
        await self._bus.publish(
            BROADCAST_CHANNEL, {"message": message, "sysops_only": True, "also_user": guid}
        )

    async def _on_broadcast(self, envelope: dict[str, Any]) -> None:
        self._connections.broadcast(
            envelope["message"],
            sysops_only=envelope["sysops_only"],
            also_user=envelope.get("also_user"),
        )
