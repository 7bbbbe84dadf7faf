"""PrefixStorage: the ``Storage`` of one GUID prefix, on whichever shard holds it now."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.errors import ShardUnavailable, StorageError
from rentahal.models import User
from rentahal.nicknames import RESERVED_PREFIX
from rentahal.storage import fences
from rentahal.storage import tables as t
from rentahal.storage.database import Storage


class PrefixOwner(Protocol):
    """What a :class:`PrefixStorage` asks of its sharded storage (``shards.ShardedStorage``)."""

    url: str
    engine: Any

    def for_user(self, guid: str) -> Storage: ...

    def owner_of(self, prefix: str) -> tuple[str, Storage]: ...

    def raise_if_down(self, name: str) -> None: ...

    def hold(self, prefix: str) -> None: ...

    def suspect(self, name: str, exc: BaseException) -> None: ...

    async def wait_writable(self, prefix: str) -> None: ...

    async def claim_nickname(self, guid: str, nickname: str) -> bool: ...

    async def release_nickname(self, guid: str, nickname: str) -> None: ...

    async def claim_first_user(self, guid: str) -> bool: ...


class PrefixStorage(Storage):
    """The ``Storage`` of one GUID prefix: each transaction goes to its current shard.

    Writes commit only while that shard's fence lets them; while the prefix is
    frozen for a move, a transaction first waits (at most ``shards.HOLD_LIMIT_S``).
    """

    def __init__(self, owner: PrefixOwner, prefix: str) -> None:
        self.url = owner.url
        self.engine = owner.engine  # unused: every transaction resolves the shard
        self._owns_engine = False
        self._owner = owner
        self.prefix = prefix

    def for_user(self, guid: str) -> Storage:
        """The storage holding ``guid``'s rows."""
        return self._owner.for_user(guid)

    async def migrate(self) -> None:
        """Shards are migrated by their :class:`ShardedStorage`."""

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction on the prefix's shard, fenced; ``ShardUnavailable`` when it is down."""
        await self._owner.wait_writable(self.prefix)
        name, shard = self._owner.owner_of(self.prefix)
        self._owner.raise_if_down(name)
        try:
            async with shard.begin() as conn:
                yield conn
                await fences.check(conn, [self.prefix])
        except fences.PrefixMoving:
            self._owner.hold(self.prefix)
            raise
        except (StorageError, OSError, TimeoutError) as exc:
            self._owner.suspect(name, exc)
            raise ShardUnavailable(name) from exc

    async def get_or_create_user(self, guid: str, *, new: bool = False) -> User:
        """The user with ``guid``; created (with a nickname free in every shard) when unknown."""
        user = None if new else await self.get_user(guid)
        if user is not None:
            return user
        plain = guid.replace("-", "")
        for nickname in (f"user_{guid[:8]}", f"user_{plain[:16]}", f"user_{plain}"):
            if not await self._owner.claim_nickname(guid, nickname):
                continue
            try:
                return await self._create_user(guid, nickname)
            except IntegrityError:  # a concurrent connect created it
                user = await self.get_user(guid)
                if user is not None:
                    if user.nickname != nickname:
                        await self._owner.release_nickname(guid, nickname)
                    return user
                await self._owner.release_nickname(guid, nickname)
        raise StorageError(f"no free nickname for user {guid[:8]}")

    async def set_nickname(self, guid: str, nickname: str) -> bool:
        """Rename a user; ``False`` when the nickname is taken in any shard."""
        before = await self.get_user(guid)
        if not await self._owner.claim_nickname(guid, nickname):
            return False
        try:
            renamed = await super().set_nickname(guid, nickname)
        except BaseException:
            await self._owner.release_nickname(guid, nickname)
            raise
        if not renamed:
            await self._owner.release_nickname(guid, nickname)
            return False
        if before is not None and before.nickname != nickname:
            await self._owner.release_nickname(guid, before.nickname)
        return True

    async def _create_user(self, guid: str, nickname: str) -> User:
        """Insert a user; the installation's very first one (main database) becomes sysop."""
        new = User(guid=guid, nickname=nickname, is_sysop=False)
        async with self.begin() as conn:
            await conn.execute(insert(t.users).values(**new.model_dump()))
        if nickname.startswith(RESERVED_PREFIX):
            return new
        if await self._owner.claim_first_user(guid):
            async with self.begin() as conn:
                await conn.execute(
                    update(t.users).where(t.users.c.guid == guid).values(is_sysop=True)
                )
            new = new.model_copy(update={"is_sysop": True})
        return new
