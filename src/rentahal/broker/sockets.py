"""The WebSockets of this node: who may connect, who is connected, what they are uploading."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rentahal.config import ChunkingSettings, PerformanceSettings
from rentahal.realms.connections import Connection, RealmConnectionManager
from rentahal.vision import ChunkAssembler


class Sockets:
    """Admits, registers and forgets the sockets of this node, and collects their uploads.

    A socket counts against ``max_connections`` (this node) and
    ``max_connections_per_address`` (its client address); chunked images are
    collected per socket and dropped when it closes (or idle, on a timer).
    """

    def __init__(
        self,
        performance: PerformanceSettings,
        chunking: ChunkingSettings,
        connections: RealmConnectionManager,
        *,
        deliver_pending: Callable[[Connection], Awaitable[None]],
        users_changed: Callable[[], None],
        realm_for_user: Callable[[str], str | None],
    ) -> None:
        self._performance = performance
        self._connections = connections
        self._deliver_pending = deliver_pending
        self._users_changed = users_changed
        self._realm_for_user = realm_for_user
        self.uploads = ChunkAssembler(chunking)

    def reserve_address(self, address: str) -> bool:
        """Count a socket of client ``address``; False when it has its most sockets already."""
        cap = self._performance.max_connections_per_address
        return self._connections.reserve_address(address, cap)

    def release_address(self, address: str) -> None:
        """A socket of client ``address`` ended (counted by :meth:`reserve_address`)."""
        self._connections.release_address(address)

    def has_room(self) -> bool:
        """True while this node accepts another WebSocket."""
        return self._connections.count < self._performance.max_connections

    def realm_for_user(self, guid: str) -> str | None:
        """The realm a user's connections are grouped in."""
        return self._realm_for_user(guid)

    def attach(self, conn: Connection) -> None:
        """Register a socket (before its connect sequence, which counts it)."""
        self._connections.add(conn)

    async def welcome(self, conn: Connection, *, fresh: bool = False) -> None:
        """The user's results missed while offline; sysops hear of the new user.

        ``fresh``: the user's GUID was made for this socket, so no result waits.
        """
        if not fresh:
            await self._deliver_pending(conn)
        self._users_changed()

    def detach(self, conn: Connection) -> None:
        """Forget a closed socket and the uploads it had started."""
        self._connections.remove(conn)
        self.uploads.drop_owner(conn.id)
        self._users_changed()

    def add_upload_chunk(
        self,
        guid: str,
        image_id: str,
        chunk_id: int,
        total: int,
        data: str,
        *,
        owner: int = 0,
        address: str = "",
    ) -> str | None:
        """Collect a slice of a chunked image from socket ``owner``; the image once complete."""
        return self.uploads.add(guid, image_id, chunk_id, total, data, owner=owner, address=address)
