"""API keys for the HTTP API: only a hash of each key is stored.

A key is ``rah_`` followed by 43 URL-safe characters (256 random bits). Its
first 12 characters (``rah_`` + 8) are its *prefix*: shown in listings and used
to revoke it. The database keeps the SHA-256 of the whole key, so a leaked
database reveals no usable key; a high-entropy token needs no slow hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.errors import QueryRejected
from rentahal.storage import tables as t
from rentahal.storage.database import Storage

KEY_PREFIX = "rah_"
PREFIX_CHARS = len(KEY_PREFIX) + 8
MAX_KEY_CHARS = 200
MAX_NAME_CHARS = 100
_CREATE_ATTEMPTS = 5


class KeyLimitReached(QueryRejected):
    """The user has as many live API keys as allowed."""


def hash_key(key: str) -> str:
    """The stored form of ``key``: SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What may be shown about a stored key (never the key itself)."""

    prefix: str
    name: str
    created_at: str
    revoked: bool

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict: ``prefix``, ``name``, ``created_at`` (ISO), ``revoked``."""
        return {
            "prefix": self.prefix,
            "name": self.name,
            "created_at": self.created_at,
            "revoked": self.revoked,
        }


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A freshly made key: ``key`` is the plaintext, available only now."""

    key: str
    info: ApiKeyInfo


class KeyStore:
    """Creates, lists, revokes and looks up API keys.

    A key's row (name, prefix, hash, revoked) lives with its user's data (the
    user's shard when sharded); the main database keeps an index from the
    key's hash and prefix to the user (``api_key_index``), because a lookup
    starts from the key alone, before the user is known. Unsharded, both are
    written in one transaction; sharded, the index entry comes first, so a key
    is never usable without it, and an index entry whose row never came
    points at no live key.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def create(
        self, user_guid: str, name: str = "", *, max_keys: int | None = None
    ) -> CreatedKey:
        """Make a key for ``user_guid``; the plaintext is returned once and never stored.

        ``KeyLimitReached`` when the user already has ``max_keys`` live keys.
        """
        name = name.strip()[:MAX_NAME_CHARS]
        home = self._storage.for_user(user_guid)
        for _ in range(_CREATE_ATTEMPTS):
            key = KEY_PREFIX + secrets.token_urlsafe(32)
            prefix = key[:PREFIX_CHARS]
            now = _utcnow()
            row: dict[str, object] = {
                "user_guid": user_guid,
                "name": name,
                "prefix": prefix,
                "key_hash": hash_key(key),
                "created_at": now,
                "revoked": False,
            }
            index = {"key_hash": hash_key(key), "prefix": prefix, "user_guid": user_guid}
            try:
                if home is self._storage:
                    async with self._storage.begin() as conn:
                        if max_keys is not None:
                            await self._check_limit(conn, user_guid, max_keys)
                        if not await self._index(conn, index):
                            continue
                        await conn.execute(insert(t.api_keys).values(**row))
                else:
                    if max_keys is not None:
                        async with home.begin() as conn:
                            await self._check_limit(conn, user_guid, max_keys)
                    async with self._storage.begin() as conn:
                        if not await self._index(conn, index):
                            continue
                    async with home.begin() as conn:
                        await conn.execute(insert(t.api_keys).values(**row))
            except IntegrityError:
                continue
            return CreatedKey(key, ApiKeyInfo(prefix, name, now.isoformat(), False))
        raise RuntimeError("could not make a unique API key prefix")  # 48 random bits: never

    @staticmethod
    async def _index(conn: AsyncConnection, index: dict[str, str]) -> bool:
        """Enter a key in the main index; ``False`` when its prefix is taken."""
        taken = (
            await conn.execute(
                select(t.api_key_index.c.key_hash).where(
                    t.api_key_index.c.prefix == index["prefix"]
                )
            )
        ).first()
        if taken is not None:
            return False
        await conn.execute(insert(t.api_key_index).values(**index))
        return True

    @staticmethod
    async def _check_limit(conn: AsyncConnection, user_guid: str, max_keys: int) -> None:
        if conn.dialect.name == "postgresql":  # one creator per user at a time
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:guid))"), {"guid": user_guid}
            )
        live = (
            await conn.execute(
                select(func.count())
                .select_from(t.api_keys)
                .where((t.api_keys.c.user_guid == user_guid) & t.api_keys.c.revoked.is_(False))
            )
        ).scalar_one()
        if live >= max_keys:
            raise KeyLimitReached(
                f"You have {live} API keys, the most allowed; revoke one to make a new one"
            )

    async def list_keys(self, user_guid: str) -> list[ApiKeyInfo]:
        """The user's keys (revoked ones too), oldest first."""
        async with self._storage.for_user(user_guid).begin() as conn:
            rows = (
                await conn.execute(
                    select(t.api_keys)
                    .where(t.api_keys.c.user_guid == user_guid)
                    .order_by(t.api_keys.c.id)
                )
            ).all()
        return [
            ApiKeyInfo(r.prefix, r.name or "", r.created_at.isoformat(), bool(r.revoked))
            for r in rows
        ]

    async def revoke(self, prefix: str, user_guid: str | None = None) -> bool:
        """Revoke the key with ``prefix`` (only ``user_guid``'s when given).

        ``False`` when no such live key exists.
        """
        index = t.api_key_index.c
        condition = index.prefix == prefix
        if user_guid is not None:
            condition = condition & (index.user_guid == user_guid)
        async with self._storage.begin() as conn:
            owners: list[str] = sorted(
                set((await conn.execute(select(index.user_guid).where(condition))).scalars())
            )
        revoked = False
        for owner in owners:
            keys = t.api_keys.c
            async with self._storage.for_user(owner).begin() as conn:
                result = await conn.execute(
                    update(t.api_keys)
                    .where(keys.prefix == prefix, keys.user_guid == owner, keys.revoked.is_(False))
                    .values(revoked=True)
                )
            revoked = revoked or result.rowcount > 0
        return revoked

    async def lookup(self, key: str) -> str | None:
        """The user GUID of a live (unrevoked) key, or ``None``."""
        if not key.startswith(KEY_PREFIX) or len(key) > MAX_KEY_CHARS:
            return None
        digest = hash_key(key)
        async with self._storage.begin() as conn:
            guid = (
                await conn.execute(
                    select(t.api_key_index.c.user_guid).where(t.api_key_index.c.key_hash == digest)
                )
            ).scalar()
        if guid is None:
            return None
        async with self._storage.for_user(guid).begin() as conn:
            revoked = (
                await conn.execute(
                    select(t.api_keys.c.revoked).where(
                        t.api_keys.c.key_hash == digest, t.api_keys.c.user_guid == guid
                    )
                )
            ).first()
        if revoked is None or revoked[0]:
            return None
        return str(guid)
