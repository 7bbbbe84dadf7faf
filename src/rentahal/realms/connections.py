"""WebSocket connections per user (and per realm), with non-blocking fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict, deque
from typing import Any

import orjson
from starlette.websockets import WebSocket

logger = logging.getLogger(__name__)

_CLOSE = object()
_ids = itertools.count(1)
# Results remembered per socket so a result is never sent to it twice.
DELIVERED_MEMORY = 256


def encode(message: dict[str, Any]) -> str:
    """One JSON text frame."""
    return orjson.dumps(message).decode()


class Connection:
    """One socket: a bounded outbox drained by its own writer task.

    A slow or dead socket never blocks anyone else; when its outbox overflows
    it is closed instead.
    """

    def __init__(
        self, websocket: WebSocket, user_guid: str, is_sysop: bool, outbox_size: int = 512
    ) -> None:
        self.websocket = websocket
        self.user_guid = user_guid
        self.is_sysop = is_sysop
        self.realm: str | None = None
        self.address = ""
        self.id = next(_ids)
        self.closed = False
        self._outbox: asyncio.Queue[object] = asyncio.Queue(maxsize=outbox_size)
        self.close_code = 1000
        self._delivered_order: deque[str] = deque()
        self._delivered: set[str] = set()

    def note_delivered(self, job_id: str) -> bool:
        """Remember that this socket got ``job_id``'s result; False if it already had."""
        if job_id in self._delivered:
            return False
        self._delivered.add(job_id)
        self._delivered_order.append(job_id)
        if len(self._delivered_order) > DELIVERED_MEMORY:
            self._delivered.discard(self._delivered_order.popleft())
        return True

    def send_text(self, text: str) -> bool:
        """Queue a frame; False (and the socket is closed) when it cannot keep up."""
        if self.closed:
            return False
        try:
            self._outbox.put_nowait(text)
        except asyncio.QueueFull:
            logger.warning("closing slow connection of %s", self.user_guid)
            self.close(1008)
            return False
        return True

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a message."""
        return self.send_text(encode(message))

    def close(self, code: int = 1000) -> None:
        """Close after the frames already queued."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(_CLOSE)
        if self._outbox.full():  # make room for the close marker
            with contextlib.suppress(asyncio.QueueEmpty):
                self._outbox.get_nowait()
            self._outbox.put_nowait(_CLOSE)

    async def run_writer(self) -> None:
        """Send queued frames until closed."""
        try:
            while True:
                item = await self._outbox.get()
                if item is _CLOSE:
                    await self.websocket.close(self.close_code)
                    return
                await self.websocket.send_text(item)  # type: ignore[arg-type]
        except Exception as exc:  # the peer went away; the reader notices too
            logger.debug("writer of %s stopped: %s", self.user_guid, exc)
        finally:
            self.closed = True


class RealmConnectionManager:
    """All sockets of this node, by user and by realm, with fan-out helpers."""

    def __init__(self) -> None:
        self._by_user: defaultdict[str, set[Connection]] = defaultdict(set)
        self._by_realm: defaultdict[str, set[Connection]] = defaultdict(set)
        self._per_address: dict[str, int] = {}
        self._count = 0  # open sockets, kept by add/remove (a sum per connect was O(n))
        self.peak = 0
        self.peak_users = 0

    def reserve_address(self, address: str, cap: int) -> bool:
        """Count one more socket from ``address``; False (nothing counted) at ``cap``."""
        held = self._per_address.get(address, 0)
        if held >= cap:
            return False
        self._per_address[address] = held + 1
        return True

    def release_address(self, address: str) -> None:
        """A socket counted by :meth:`reserve_address` closed."""
        held = self._per_address.get(address, 0) - 1
        if held > 0:
            self._per_address[address] = held
        else:
            self._per_address.pop(address, None)

    @property
    def count(self) -> int:
        """Open sockets."""
        return self._count

    def of_user(self, guid: str) -> list[Connection]:
        """The open sockets of one user."""
        return list(self._by_user.get(guid, ()))

    def users(self) -> list[str]:
        """GUIDs with at least one open socket."""
        return list(self._by_user)

    @property
    def user_count(self) -> int:
        """Users with at least one open socket."""
        return len(self._by_user)

    def first_users(self, limit: int) -> list[str]:
        """The first ``limit`` GUIDs of :meth:`users` (without copying them all)."""
        return list(itertools.islice(self._by_user, limit))

    def add(self, conn: Connection) -> None:
        """Register a socket."""
        conns = self._by_user[conn.user_guid]
        if conn in conns:
            return
        conns.add(conn)
        self._count += 1
        if conn.realm:
            self._by_realm[conn.realm].add(conn)
        self.peak = max(self.peak, self._count)
        self.peak_users = max(self.peak_users, len(self._by_user))

    def remove(self, conn: Connection) -> None:
        """Unregister a socket."""
        conns = self._by_user.get(conn.user_guid)
        if conns is not None and conn in conns:
            conns.discard(conn)
            self._count -= 1
            if not conns:
                del self._by_user[conn.user_guid]
        if conn.realm and conn.realm in self._by_realm:
            self._by_realm[conn.realm].discard(conn)

    def realm_counts(self) -> dict[str, int]:
        """Sockets per realm."""
        return {name: len(conns) for name, conns in self._by_realm.items()}

    def send_user(self, guid: str, message: dict[str, Any]) -> int:
        """Send to every socket of one user; returns how many got it."""
        conns = list(self._by_user.get(guid, ()))
        if not conns:
            return 0
        text = encode(message)
        return sum(1 for c in conns if c.send_text(text))

    def broadcast(
        self, message: dict[str, Any], *, sysops_only: bool = False, also_user: str | None = None
    ) -> int:
        """Send to every socket (or every sysop socket, plus ``also_user``'s); encodes once."""
        text = encode(message)
        sent = 0
        for conns in list(self._by_user.values()):
            for conn in list(conns):
                if sysops_only and not conn.is_sysop and conn.user_guid != also_user:
                    continue
                sent += conn.send_text(text)
        return sent

    def set_sysop(self, guid: str, is_sysop: bool) -> None:
        """Grant or take sysop rights on every open socket of ``guid``."""
        for conn in self._by_user.get(guid, ()):
            conn.is_sysop = is_sysop

    def sysop_users(self) -> list[str]:
        """GUIDs with an open sysop socket."""
        return [g for g, conns in self._by_user.items() if any(c.is_sysop for c in conns)]

    def close_user(self, guid: str, message: dict[str, Any] | None = None) -> int:
        """Send ``message`` then close every socket of ``guid``."""
        conns = list(self._by_user.get(guid, ()))
        for conn in conns:
            if message is not None:
                conn.send(message)
            conn.close(1008)
        return len(conns)
