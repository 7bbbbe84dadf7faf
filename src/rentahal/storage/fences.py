"""Prefix fences: a shard takes a prefix's writes only while it owns it and it is not frozen.

Every transaction that writes user data checks the fence rows of its
prefixes last, after its writes (so on SQLite it holds the write lock, and on
PostgreSQL it takes ``FOR SHARE`` locks in prefix order). A move freezes the
source's rows with a lease (``frozen_until``, the database's own clock): the
freeze waits for writers in flight, later writers fail with
:class:`PrefixMoving` and try again after the switch. A lease that runs out
(the mover died) opens the prefix again by itself. A prefix handed on keeps
its row with ``moved_to``, so a node with an old directory cannot write to the
old shard. A shard's counter (``shard_totals``) covers the prefixes it owns:
taking or handing on a prefix adds or subtracts its rows in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    bindparam,
    delete,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.errors import PrefixMoving, StorageError
from rentahal.storage import tables as t
from rentahal.storage import totals
from rentahal.storage.lean import Prepared

__all__ = ["Fence", "PrefixMoving", "check", "check_sync", "claim", "freeze", "hand_on", "thaw"]


@dataclass(frozen=True, slots=True)
class Fence:
    """One prefix's fence row in one shard."""

    prefix: str
    frozen_until: float | None
    moved_to: str | None

    def open_at(self, now: float) -> bool:
        """Whether a write may commit at database time ``now``."""
        return self.moved_to is None and (self.frozen_until is None or self.frozen_until <= now)


async def db_now(conn: AsyncConnection) -> float:
    """The database server's clock, in seconds since the epoch (one clock for every node)."""
    expression: ColumnElement[float] = literal_column(_now_sql(conn.dialect.name))
    return float((await conn.execute(select(expression))).scalar_one())


async def read(conn: AsyncConnection, prefixes: Iterable[str], *, lock: str = "") -> list[Fence]:
    """The fence rows of ``prefixes`` (``lock``: ``share`` or ``update`` on PostgreSQL)."""
    query = (
        select(t.prefix_fences)
        .where(t.prefix_fences.c.prefix.in_(sorted(set(prefixes))))
        .order_by(t.prefix_fences.c.prefix)
    )
    if lock:
        query = query.with_for_update(read=lock == "share")
    rows = (await conn.execute(query)).all()
    return [Fence(r.prefix, r.frozen_until, r.moved_to) for r in rows]


def _now_sql(dialect: str) -> str:
    if dialect == "postgresql":
        return "extract(epoch from clock_timestamp())"
    return "(julianday('now') - 2440587.5) * 86400.0"


def _check_statement(dialect: str) -> Select[Any]:
    """The fence rows of some prefixes with the database's clock, share-locked, in order."""
    c = t.prefix_fences.c
    return (
        select(c.prefix, c.frozen_until, c.moved_to, literal_column(_now_sql(dialect)).label("now"))
        .where(c.prefix.in_(bindparam("prefixes", expanding=True)))
        .order_by(c.prefix)
        .with_for_update(read=True)
    )


_CHECK = {dialect: Prepared(_check_statement(dialect)) for dialect in ("postgresql", "sqlite")}


def check_sync(conn: Connection, prefixes: Iterable[str]) -> None:
    """Raise :class:`PrefixMoving` unless this shard takes writes of every prefix now.

    Call it last in the writing transaction (one statement: the rows and the clock).
    """
    wanted = sorted(set(prefixes))
    if not wanted:
        return
    rows = _CHECK[conn.dialect.name].rows(conn, {"prefixes": wanted})
    open_ = {r.prefix for r in rows if Fence(r.prefix, r.frozen_until, r.moved_to).open_at(r.now)}
    refused = [p for p in wanted if p not in open_]
    if refused:
        raise PrefixMoving(refused)


async def check(conn: AsyncConnection, prefixes: Iterable[str]) -> None:
    """:func:`check_sync` on an async connection."""
    await conn.run_sync(check_sync, list(prefixes))


async def claim(conn: AsyncConnection, prefixes: list[str]) -> None:
    """Make this shard the owner of ``prefixes`` (open); their rows join its counter."""
    fences = {f.prefix: f for f in await read(conn, prefixes, lock="update")}
    joining = [p for p in prefixes if p not in fences or fences[p].moved_to is not None]
    if not joining:
        await _open(conn, prefixes)
        return
    await conn.execute(delete(t.prefix_fences).where(t.prefix_fences.c.prefix.in_(joining)))
    await conn.execute(insert(t.prefix_fences), [{"prefix": p} for p in joining])
    await _open(conn, prefixes)
    await totals.add(conn, t.shard_totals, await totals.charged(conn, joining))


async def _open(conn: AsyncConnection, prefixes: list[str]) -> None:
    await conn.execute(
        update(t.prefix_fences)
        .where(t.prefix_fences.c.prefix.in_(prefixes))
        .values(frozen_until=None, moved_to=None)
    )


async def hand_on(conn: AsyncConnection, prefixes: list[str], to: str) -> None:
    """Mark ``prefixes`` as held by shard ``to``; their rows leave this shard's counter."""
    fences = {f.prefix: f for f in await read(conn, prefixes, lock="update")}
    leaving = [p for p in prefixes if p in fences and fences[p].moved_to is None]
    if leaving:
        await totals.add(conn, t.shard_totals, -(await totals.charged(conn, leaving)))
    missing = [p for p in prefixes if p not in fences]
    if missing:
        await conn.execute(insert(t.prefix_fences), [{"prefix": p} for p in missing])
    await conn.execute(
        update(t.prefix_fences)
        .where(t.prefix_fences.c.prefix.in_(prefixes))
        .values(moved_to=to, frozen_until=None)
    )


async def freeze(conn: AsyncConnection, prefixes: list[str], hold_s: float) -> float:
    """Freeze owned ``prefixes`` for ``hold_s`` (waits for writers in flight); the lease end."""
    await read(conn, prefixes, lock="update")
    until = await db_now(conn) + hold_s
    result = await conn.execute(
        update(t.prefix_fences)
        .where(t.prefix_fences.c.prefix.in_(prefixes), t.prefix_fences.c.moved_to.is_(None))
        .values(frozen_until=until)
    )
    if result.rowcount != len(set(prefixes)):
        raise StorageError("cannot freeze prefixes this shard does not own")
    return until


async def extend(conn: AsyncConnection, prefixes: list[str], until: float, hold_s: float) -> bool:
    """Renew a freeze that is still ours (lease ``until`` not run out); whether it was."""
    fences = await read(conn, prefixes, lock="update")
    now = await db_now(conn)
    if len(fences) != len(set(prefixes)) or any(
        f.moved_to is not None or f.frozen_until != until or until <= now for f in fences
    ):
        return False
    await conn.execute(
        update(t.prefix_fences)
        .where(t.prefix_fences.c.prefix.in_(prefixes))
        .values(frozen_until=now + hold_s)
    )
    return True


async def thaw(conn: AsyncConnection, prefixes: list[str]) -> None:
    """End a freeze (a move that gave up): the prefixes take writes again."""
    await conn.execute(
        update(t.prefix_fences)
        .where(t.prefix_fences.c.prefix.in_(prefixes), t.prefix_fences.c.moved_to.is_(None))
        .values(frozen_until=None)
    )
