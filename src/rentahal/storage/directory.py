"""The shard directory in the main database: which shard holds each GUID prefix.

A user's prefix is the first two characters of the GUID, lower-cased (the
seed's rule); GUIDs are UUIDs, so there are 256 hex prefixes, plus ``*`` for
any GUID that does not start with two hex digits (imported originals). The
directory is written once, for every prefix, when sharding begins (hex prefix
modulo the shard count, as the seed assigns, unless ``shard_map`` names one)
and is never recomputed: adding a shard moves nobody until a move is asked
for. Each switch raises the directory's version, which nodes compare to know
when to reload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.errors import ConfigError
from rentahal.nicknames import RESERVED_PREFIX
from rentahal.storage import tables as t
from rentahal.storage import totals
from rentahal.storage.prefixes import ALL_PREFIXES, MAIN, OTHER, seed_shard


def shard_url(connection_string: str, base_dir: Path) -> str:
    """A shard's async SQLAlchemy URL: a URL as given, or a plain SQLite file path.

    Relative paths are relative to ``base_dir`` (the installation's directory).
    """
    if "://" not in connection_string:
        path = Path(connection_string)
        if not path.is_absolute():
            path = base_dir / path
        return f"sqlite+aiosqlite:///{path}"
    url = connection_string
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///") :]
        if not rest.startswith("/") and not rest.startswith("file:"):
            rest = str(base_dir / rest)
        return "sqlite+aiosqlite:///" + rest
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    raise ConfigError(f"shard connection string {connection_string!r}: not SQLite nor PostgreSQL")


@dataclass(frozen=True, slots=True)
class Move:
    """One prefix on its way from ``source`` to ``target``."""

    prefix: str
    source: str
    target: str
    phase: str  # "copying": the source owns it; "switched": the target does


@dataclass(slots=True)
class Directory:
    """One version of the directory: prefix -> shard, and the moves under way."""

    version: int
    owners: dict[str, str]
    moves: dict[str, Move] = field(default_factory=dict)

    def owner(self, prefix: str) -> str:
        """The shard holding ``prefix``."""
        return self.owners.get(prefix) or self.owners[OTHER]

    def owned_by(self, shard: str) -> list[str]:
        """The prefixes ``shard`` holds."""
        return sorted(p for p, s in self.owners.items() if s == shard)

    def in_use(self) -> list[str]:
        """The shards that hold at least one prefix."""
        return sorted(set(self.owners.values()))


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class DirectoryStore:
    """Reads and changes the directory, the shard list and the moves (main database)."""

    def __init__(self, begin: Any) -> None:
        # ``begin`` is the main Storage's ``begin`` (a transaction context).
        self._begin = begin

    async def version(self) -> int | None:
        """The directory's version, ``None`` when the installation is not sharded."""
        async with self._begin() as conn:
            value = (
                await conn.execute(select(t.shard_meta.c.version).where(t.shard_meta.c.id == 1))
            ).scalar()
        return None if value is None else int(value)

    async def load(self) -> Directory | None:
        """The whole directory, ``None`` when the installation is not sharded."""
        async with self._begin() as conn:
            return await self._load(conn)

    @staticmethod
    async def _load(conn: AsyncConnection) -> Directory | None:
        version = (
            await conn.execute(select(t.shard_meta.c.version).where(t.shard_meta.c.id == 1))
        ).scalar()
        if version is None:
            return None
        rows = (await conn.execute(select(t.shard_directory))).all()
        moves = (await conn.execute(select(t.shard_moves))).all()
        return Directory(
            version=int(version),
            owners={r.prefix: r.shard for r in rows},
            moves={m.prefix: Move(m.prefix, m.source, m.target, m.phase) for m in moves},
        )

    async def shards(self) -> dict[str, str]:
        """Every registered shard: name -> connection string (as written)."""
        async with self._begin() as conn:
            rows = (await conn.execute(select(t.shards).order_by(t.shards.c.added_at))).all()
        return {r.name: r.connection_string for r in rows}

    async def add_shard(self, name: str, connection_string: str) -> bool:
        """Register a shard; ``False`` when it is registered already (with that string)."""
        if name == MAIN:
            raise ConfigError(f"{MAIN!r} is the main database's name; choose another shard name")
        async with self._begin() as conn:
            known = (
                await conn.execute(
                    select(t.shards.c.connection_string).where(t.shards.c.name == name)
                )
            ).scalar()
            if known is not None:
                if known != connection_string:
                    raise ConfigError(
                        f"shard {name!r} is registered with another connection string ({known!r})"
                    )
                return False
            await conn.execute(
                insert(t.shards).values(
                    name=name, connection_string=connection_string, added_at=_utcnow()
                )
            )
        return True

    async def create(
        self, names: list[str], shard_map: dict[str, str], main_keeps_users: bool
    ) -> Directory:
        """Write the directory for every prefix unless it exists; the stored one.

        ``main_keeps_users``: the main database holds users already, so every
        prefix stays there (nobody moves until asked). The system totals the
        rows do not explain are kept as the base, and the first user remembered.
        """
        try:
            async with self._begin() as conn:
                await conn.execute(
                    insert(t.shard_meta).values(id=1, version=1, created_at=_utcnow())
                )
                owners = {
                    p: MAIN if main_keeps_users else shard_map.get(p) or seed_shard(p, names)
                    for p in ALL_PREFIXES
                }
                await conn.execute(
                    insert(t.shard_directory),
                    [{"prefix": p, "shard": s, "version": 1} for p, s in owners.items()],
                )
                await self._write_base(conn, main_keeps_users)
        except IntegrityError:
            pass  # another node created it first: its directory stands
        directory = await self.load()
        assert directory is not None
        return directory

    @staticmethod
    async def _write_base(conn: AsyncConnection, main_keeps_users: bool) -> None:
        stats = (await conn.execute(select(t.system_stats).where(t.system_stats.c.id == 1))).first()
        have = totals.Delta(
            int(stats.total_queries or 0) if stats else 0,
            float(stats.total_processing_time or 0.0) if stats else 0.0,
            float(stats.total_cost or 0.0) if stats else 0.0,
        )
        rows = await totals.charged(conn, None) if main_keeps_users else totals.Delta()
        base = have - rows
        await conn.execute(delete(t.totals_base))
        await conn.execute(insert(t.totals_base).values(id=1, **base.columns()))
        if main_keeps_users:  # the indexes of unsharded days may lag behind the users
            users = (await conn.execute(select(t.users.c.guid, t.users.c.nickname))).all()
            await conn.execute(delete(t.nickname_index))
            named = [{"nickname": u.nickname, "user_guid": u.guid} for u in users if u.nickname]
            if named:
                await conn.execute(insert(t.nickname_index), named)
            if (await conn.execute(select(t.first_user.c.id))).first() is None:
                people = [u for u in users if not (u.nickname or "").startswith(RESERVED_PREFIX)]
                if people:
                    await conn.execute(insert(t.first_user).values(id=1, guid=people[0].guid))

    async def begin_moves(self, moves: list[Move]) -> None:
        """Record moves (phase ``copying``); existing records of the same prefixes stay."""
        async with self._begin() as conn:
            known = set(
                (
                    await conn.execute(
                        select(t.shard_moves.c.prefix).where(
                            t.shard_moves.c.prefix.in_([m.prefix for m in moves])
                        )
                    )
                ).scalars()
            )
            fresh = [m for m in moves if m.prefix not in known]
            if fresh:
                await conn.execute(
                    insert(t.shard_moves),
                    [
                        {
                            "prefix": m.prefix,
                            "source": m.source,
                            "target": m.target,
                            "phase": "copying",
                            "updated_at": _utcnow(),
                        }
                        for m in fresh
                    ],
                )

    async def switch(self, prefixes: list[str], target: str) -> int:
        """Point ``prefixes`` at ``target`` and mark their moves switched; the new version."""
        async with self._begin() as conn:
            await conn.execute(
                update(t.shard_meta)
                .where(t.shard_meta.c.id == 1)
                .values(version=t.shard_meta.c.version + 1)
            )
            version = int(
                (
                    await conn.execute(select(t.shard_meta.c.version).where(t.shard_meta.c.id == 1))
                ).scalar_one()
            )
            await conn.execute(
                update(t.shard_directory)
                .where(t.shard_directory.c.prefix.in_(prefixes))
                .values(shard=target, version=version)
            )
            await conn.execute(
                update(t.shard_moves)
                .where(t.shard_moves.c.prefix.in_(prefixes))
                .values(phase="switched", updated_at=_utcnow())
            )
        return version

    async def end_moves(self, prefixes: list[str]) -> None:
        """Forget finished moves."""
        async with self._begin() as conn:
            await conn.execute(delete(t.shard_moves).where(t.shard_moves.c.prefix.in_(prefixes)))

    async def report_node(self, node_id: str, version: int) -> None:
        """Note that ``node_id`` runs directory ``version`` (now)."""
        async with self._begin() as conn:
            done = await conn.execute(
                update(t.shard_nodes)
                .where(t.shard_nodes.c.node_id == node_id)
                .values(version=version, seen_at=time.time())
            )
            if done.rowcount == 0:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            insert(t.shard_nodes).values(
                                node_id=node_id, version=version, seen_at=time.time()
                            )
                        )
                except IntegrityError:
                    pass

    async def nodes_behind(self, version: int, live_within_s: float) -> list[str]:
        """Nodes seen within ``live_within_s`` that still run an older directory."""
        async with self._begin() as conn:
            rows = (
                await conn.execute(
                    select(t.shard_nodes.c.node_id).where(
                        t.shard_nodes.c.seen_at > time.time() - live_within_s,
                        t.shard_nodes.c.version < version,
                    )
                )
            ).all()
        return sorted(r.node_id for r in rows)

    async def claim_first_user(self, guid: str) -> bool:
        """Whether ``guid`` is the installation's first user (remembered in the main database)."""
        try:
            async with self._begin() as conn:
                await conn.execute(insert(t.first_user).values(id=1, guid=guid))
        except IntegrityError:
            return False
        return True
