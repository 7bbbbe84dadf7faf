"""Sysop views over every shard: scatter-gather with a time limit.

A shard known to be down, or one that does not answer within the storage's
``gather_timeout_s``, is left out; ``ShardedStorage.missing`` names them.
Only the rows of the prefixes each shard owns are read, so a move under way
(rows of a prefix in two shards) counts nobody twice.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy import func, select

from rentahal.models import User
from rentahal.storage import tables as t
from rentahal.storage import totals
from rentahal.storage.database import Storage, user_from_row
from rentahal.storage.directory import Directory
from rentahal.storage.prefixes import prefix_clause, prefix_of
from rentahal.storage.scatter import Gathered, gather


class ShardSet(Protocol):
    """What the views read of a sharded storage (``shards.ShardedStorage``)."""

    directory: Directory | None
    shards: dict[str, Storage]
    gather_timeout_s: float
    missing: list[str]

    def down_shards(self) -> set[str]: ...


async def _each_shard(
    storage: ShardSet, work: Callable[[Storage, list[str]], Awaitable[Any]]
) -> Gathered[Any]:
    """``work(shard, owned_prefixes)`` on every shard in use, within the time limit."""
    directory = storage.directory
    assert directory is not None
    down = storage.down_shards()
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        name: functools.partial(work, storage.shards[name], directory.owned_by(name))
        for name in directory.in_use()
        if name not in down
    }
    result: Gathered[Any] = await gather(calls, storage.gather_timeout_s)
    result.missing += [n for n in directory.in_use() if n in down]
    storage.missing = sorted(result.missing)
    return result


async def list_users(storage: ShardSet) -> list[User]:
    """Every user of every shard that answers, by nickname."""

    async def users(shard: Storage, owned: list[str]) -> list[User]:
        async with shard.begin() as conn:
            rows = (
                await conn.execute(select(t.users).where(prefix_clause(t.users.c.guid, owned)))
            ).all()
        return [user_from_row(r) for r in rows]

    found = await _each_shard(storage, users)
    every = [u for part in found.answers.values() for u in part]
    return sorted(every, key=lambda u: u.nickname)


async def users_by_guid(storage: ShardSet, guids: list[str]) -> list[User]:
    """The users among ``guids`` that exist, each asked of its own shard."""
    directory = storage.directory
    assert directory is not None
    down = storage.down_shards()
    by_shard: defaultdict[str, list[str]] = defaultdict(list)
    for guid in guids:
        by_shard[directory.owner(prefix_of(guid))].append(guid)
    calls: dict[str, Callable[[], Awaitable[list[User]]]] = {
        name: functools.partial(storage.shards[name].users_by_guid, wanted)
        for name, wanted in by_shard.items()
        if name not in down
    }
    found: Gathered[list[User]] = await gather(calls, storage.gather_timeout_s)
    storage.missing = sorted(found.missing + [n for n in by_shard if n in down])
    return [u for part in found.answers.values() for u in part]


async def average_times(storage: ShardSet) -> dict[str, float]:
    """Average processing time of completed queries per query type, over every shard."""
    q = t.queries.c

    async def sums(shard: Storage, owned: list[str]) -> list[tuple[str, float, int]]:
        async with shard.begin() as conn:
            rows = (
                await conn.execute(
                    select(q.query_type, func.sum(q.processing_time), func.count())
                    .where(totals.charged_rows(), prefix_clause(q.user_guid, owned))
                    .group_by(q.query_type)
                )
            ).all()
        return [(str(r[0]), float(r[1] or 0.0), int(r[2])) for r in rows]

    found = await _each_shard(storage, sums)
    time_by_type: defaultdict[str, float] = defaultdict(float)
    count_by_type: defaultdict[str, int] = defaultdict(int)
    for part in found.answers.values():
        for query_type, total, count in part:
            time_by_type[query_type] += total
            count_by_type[query_type] += count
    return {k: time_by_type[k] / count_by_type[k] for k in time_by_type if count_by_type[k]}
