"""The user directory: users by GUID or API key, behind a short-lived cache that bans clear."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rentahal.api.key_cache import KeyCache
from rentahal.broker.control import Ban, ControlChannel, KeyRevoked, Sysop, Unban
from rentahal.errors import QueryRejected
from rentahal.models import User
from rentahal.nicknames import normalize_nickname
from rentahal.realms.connections import RealmConnectionManager
from rentahal.storage.database import Storage
from rentahal.storage.keys import KeyStore

USER_CACHE_S = 10.0
USER_CACHE_SIZE = 100_000
BANNED_MESSAGE = "You are banned from using this service."


class UserDirectory:
    """Reads and changes users in their shard; caches them briefly for the hot paths.

    Bans and renames (on any node) forget the cached user, so a ban holds on
    the very next query. Sysop rights are read afresh for every sysop
    operation, and the sockets of a user follow them.
    """

    def __init__(
        self,
        storage: Storage,
        connections: RealmConnectionManager,
        control: ControlChannel,
        terminate: Callable[[str], Awaitable[int]],
        tell_about: Callable[[str, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self._storage = storage
        self._connections = connections
        self._control = control
        self._terminate = terminate
        self._tell_about = tell_about
        self._cache: dict[str, tuple[float, User]] = {}
        self._creating = asyncio.Lock()
        self.keys = KeyStore(storage)
        self.key_cache = KeyCache()
        self._key_lookups: dict[str, asyncio.Future[str | None]] = {}
        control.on(Ban, self._on_ban)
        control.on(KeyRevoked, self._on_key_revoked)
        control.on(Unban, self._on_unban)
        control.on(Sysop, self._on_sysop)

    async def connect(self, guid: str, *, fresh: bool = False) -> User:
        """The user behind a connecting socket (created on first sight).

        ``fresh``: the GUID was made for this socket, so it is not looked up.
        Creations on this node take turns: concurrent SQLite writers wait for the
        write lock in sleeps (its busy handler), which capped a connect storm of new
        users at ~65/s; one at a time they go ~1.7x faster (PostgreSQL takes an
        advisory lock per creation anyway).
        """
        storage = self._storage.for_user(guid)
        if not fresh:
            user = await storage.get_user(guid)
            if user is not None:
                return user
        async with self._creating:
            return await storage.get_or_create_user(guid, new=fresh)

    async def get(self, guid: str) -> User | None:
        """A user by GUID (read from the database)."""
        user = await self._storage.for_user(guid).get_user(guid)
        if user is not None:
            self.remember(user)
        return user

    async def cached(self, guid: str) -> User | None:
        """A user by GUID, from the cache when it is fresh."""
        hit = self._cache.get(guid)
        if hit is not None and time.monotonic() - hit[0] < USER_CACHE_S:
            return hit[1]
        return await self.get(guid)

    async def sysop_rights(self, guid: str) -> bool:
        """Whether ``guid`` is a sysop now (read afresh: rights may change in another process).

        Open sockets of the user follow the answer.
        """
        user = await self.get(guid)
        rights = user is not None and user.is_sysop and not user.is_banned
        self._connections.set_sysop(guid, rights)
        return rights

    async def recheck_sysops(self) -> None:
        """Re-read the rights of users with a sysop socket here (a revoke without Redis)."""
        for guid in self._connections.sysop_users():
            await self.sysop_rights(guid)

    async def of_key(self, key: str) -> User | None:
        """The owner of a live API key, from the key cache when it holds the key.

        A revoke on any node clears the cache entry at once (``revoke_key``).
        """
        guid = self.key_cache.get(key)
        if guid is None:
            guid = await self._look_up_key(key)
            if guid is None:
                return None
            self.key_cache.put(key, guid)
        return await self.cached(guid)

    async def _look_up_key(self, key: str) -> str | None:
        """One database lookup for every caller of ``key`` while it runs: when a busy
        key's cache entry expires, its concurrent requests do not each read the key."""
        lookup = self._key_lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self.keys.lookup(key))
            self._key_lookups[key] = lookup
            lookup.add_done_callback(lambda _done: self._key_lookups.pop(key, None))
        return await asyncio.shield(lookup)

    async def revoke_key(self, prefix: str, user_guid: str | None = None) -> bool:
        """Revoke the live key with ``prefix`` (only ``user_guid``'s when given), on every node."""
        if not await self.keys.revoke(prefix, user_guid=user_guid):
            return False
        self.key_cache.forget_prefix(prefix)
        await self._control.publish(KeyRevoked(prefix=prefix))
        return True

    def remember(self, user: User) -> None:
        """Cache ``user`` as just read or charged."""
        self._cache[user.guid] = (time.monotonic(), user)

    def forget(self, guid: str) -> None:
        """Drop a cached user (banned, unbanned or renamed)."""
        self._cache.pop(guid, None)
        if len(self._cache) > USER_CACHE_SIZE:
            self._cache.clear()

    async def set_nickname(self, guid: str, nickname: str) -> User:
        """Rename a user; ``QueryRejected`` when the name is invalid or taken."""
        nickname = normalize_nickname(nickname)
        if not await self._storage.for_user(guid).set_nickname(guid, nickname):
            raise QueryRejected("Nickname already taken")
        self.forget(guid)
        user = await self.get(guid)
        assert user is not None
        return user

    async def set_banned(self, guid: str, banned: bool) -> bool:
        """Ban (dropping the user's jobs, closing their sessions on every node) or unban."""
        if not await self._storage.for_user(guid).set_banned(guid, banned):
            return False
        if banned:
            await self._terminate(guid)
            await self._on_ban(Ban(guid=guid))
            await self._control.publish(Ban(guid=guid))
        else:
            await self._on_unban(Unban(guid=guid))
            await self._control.publish(Unban(guid=guid))
        await self._tell_about(
            guid, {"type": "user_banned" if banned else "user_unbanned", "guid": guid}
        )
        return True

    async def _on_ban(self, message: Ban) -> None:
        self.forget(message.guid)
        self.key_cache.forget_user(message.guid)
        self._connections.close_user(message.guid, {"type": "error", "message": BANNED_MESSAGE})

    async def _on_unban(self, message: Unban) -> None:
        self.forget(message.guid)

    async def _on_key_revoked(self, message: KeyRevoked) -> None:
        self.key_cache.forget_prefix(message.prefix)

    async def _on_sysop(self, message: Sysop) -> None:
        self.forget(message.guid)
        self._connections.set_sysop(message.guid, message.is_sysop)
