"""Row copying between two shards for a move: chunks, job ids, comparisons, deletes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, cast, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.storage import tables as t
from rentahal.storage import totals
from rentahal.storage.database import Storage
from rentahal.storage.prefixes import prefix_clause
from rentahal.storage.totals import Delta

logger = logging.getLogger(__name__)

CHUNK_ROWS = 500
_MUTABLE = ("status", "error", "cost", "processing_time", "result_type")

Progress = Callable[[str, int, int], None]  # step, done, total


@dataclass(frozen=True, slots=True)
class Figures:
    """Counts and sums of some prefixes' data in one shard, to compare two copies."""

    users: int
    user_totals: Delta
    banned: int
    sysops: int
    queries: int
    charged: Delta
    keys: int
    revoked: int

    def same_as(self, other: Figures) -> bool:
        """Equal counts; sums equal up to summation order."""
        return (
            (self.users, self.banned, self.sysops, self.queries, self.keys, self.revoked)
            == (other.users, other.banned, other.sysops, other.queries, other.keys, other.revoked)
            and self.user_totals.close_to(other.user_totals)
            and self.charged.close_to(other.charged)
        )


async def figures(conn: AsyncConnection, prefixes: list[str]) -> Figures:
    """The :class:`Figures` of ``prefixes`` in the database of ``conn``."""
    u, k = t.users.c, t.api_keys.c
    users = (
        await conn.execute(
            select(
                func.count(),
                func.sum(u.query_count),
                func.sum(u.total_query_time),
                func.sum(u.total_cost),
                func.sum(cast(u.is_banned, Integer)),
                func.sum(cast(u.is_sysop, Integer)),
            ).where(prefix_clause(u.guid, prefixes))
        )
    ).one()
    queries = (
        await conn.execute(
            select(func.count()).where(prefix_clause(t.queries.c.user_guid, prefixes))
        )
    ).scalar_one()
    keys = (
        await conn.execute(
            select(func.count(), func.sum(cast(k.revoked, Integer))).where(
                prefix_clause(k.user_guid, prefixes)
            )
        )
    ).one()
    return Figures(
        users=int(users[0]),
        user_totals=Delta(int(users[1] or 0), float(users[2] or 0.0), float(users[3] or 0.0)),
        banned=int(users[4] or 0),
        sysops=int(users[5] or 0),
        queries=int(queries),
        charged=await totals.charged(conn, prefixes),
        keys=int(keys[0]),
        revoked=int(keys[1] or 0),
    )


class RowCopier:
    """Copies, compares and deletes the rows of some prefixes, ``chunk_rows`` at a time.

    ``max_rows_per_s`` throttles the bulk copy; ``progress`` hears each step.
    """

    def __init__(
        self,
        *,
        chunk_rows: int = CHUNK_ROWS,
        max_rows_per_s: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.chunk_rows = chunk_rows
        self.max_rows_per_s = max_rows_per_s
        self._progress = progress or (lambda step, done, total: None)

    async def figures(self, storage: Storage, prefixes: list[str]) -> Figures:
        """The :class:`Figures` of ``prefixes`` in ``storage``."""
        async with storage.begin() as conn:
            return await figures(conn, prefixes)

    async def name_rows(self, storage: Storage, prefixes: list[str]) -> None:
        """Give rows without a job id one (unique everywhere), so both copies can be matched."""
        q = t.queries.c
        token = uuid.uuid4().hex[:12]
        async with storage.begin() as conn:
            await conn.execute(
                update(t.queries)
                .where(q.job_id.is_(None), prefix_clause(q.user_guid, prefixes))
                .values(job_id=literal(f"legacy-{token}-") + cast(q.id, String))
            )

    async def copy_queries(
        self, src: Storage, dst: Storage, prefixes: list[str]
    ) -> tuple[int, int]:
        """Copy the prefixes' query rows in chunks; the highest source id copied, and how many."""
        q = t.queries.c
        where = prefix_clause(q.user_guid, prefixes)
        async with src.begin() as conn:
            total = int((await conn.execute(select(func.count()).where(where))).scalar_one())
        last, done, started = 0, 0, time.monotonic()
        self._progress("copy", 0, total)
        while True:
            async with src.begin() as conn:
                rows = (
                    await conn.execute(
                        select(t.queries)
                        .where(where, q.id > last)
                        .order_by(q.id)
                        .limit(self.chunk_rows)
                    )
                ).all()
            if not rows:
                return last, done
            await self.insert(dst, t.queries, rows)
            last = int(rows[-1].id)
            done += len(rows)
            self._progress("copy", done, max(total, done))
            if self.max_rows_per_s:
                ahead = done / self.max_rows_per_s - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    @staticmethod
    async def insert(storage: Storage, table: Any, rows: Sequence[Any]) -> None:
        """Insert rows into ``storage`` (without their id: the target numbers them)."""
        if not rows:
            return
        values = [{k: v for k, v in row._mapping.items() if k != "id"} for row in rows]
        if table is t.users:
            values = [dict(row._mapping) for row in rows]
        async with storage.begin() as conn:
            await conn.execute(insert(table), values)

    async def copy_missing(
        self, src: Storage, dst: Storage, prefixes: list[str], guard: int
    ) -> int:
        """Copy the source's rows the target lacks (by job id); how many."""
        q = t.queries.c
        where = prefix_clause(q.user_guid, prefixes)
        copied = await self.copy_absent(src, dst, where & (q.id > guard))
        async with src.begin() as conn:
            ours = (await conn.execute(select(func.count()).where(where))).scalar_one()
        async with dst.begin() as conn:
            theirs = (await conn.execute(select(func.count()).where(where))).scalar_one()
        if ours != theirs:  # a row committed late below the guard: look at all of them
            copied += await self.copy_absent(src, dst, where)
        return copied

    async def copy_absent(self, src: Storage, dst: Storage, where: Any) -> int:
        q = t.queries.c
        async with src.begin() as conn:
            candidates = (
                await conn.execute(select(q.id, q.job_id).where(where).order_by(q.id))
            ).all()
        absent: list[int] = []
        for start in range(0, len(candidates), self.chunk_rows):
            chunk = candidates[start : start + self.chunk_rows]
            async with dst.begin() as conn:
                present: set[str] = set(
                    (
                        await conn.execute(
                            select(q.job_id).where(q.job_id.in_([c.job_id for c in chunk]))
                        )
                    ).scalars()
                )
            absent += [int(c.id) for c in chunk if c.job_id not in present]
        for start in range(0, len(absent), self.chunk_rows):
            ids = absent[start : start + self.chunk_rows]
            async with src.begin() as conn:
                rows = (
                    await conn.execute(select(t.queries).where(q.id.in_(ids)).order_by(q.id))
                ).all()
            await self.insert(dst, t.queries, rows)
        return len(absent)

    async def replace(
        self, src: Storage, dst: Storage, prefixes: list[str], table: Any, column: Any
    ) -> int:
        """Make the target's rows of ``table`` for the prefixes a fresh copy of the source's."""
        where = prefix_clause(column, prefixes)
        async with src.begin() as conn:
            query = select(table).where(where)
            if "id" in table.c:
                query = query.order_by(table.c.id)
            rows = (await conn.execute(query)).all()
        async with dst.begin() as conn:
            await conn.execute(delete(table).where(where))
        for start in range(0, len(rows), self.chunk_rows):
            await self.insert(dst, table, rows[start : start + self.chunk_rows])
        return len(rows)

    async def sync_fields(self, src: Storage, dst: Storage, prefixes: list[str]) -> None:
        """Carry over later changes of copied rows (a refund) by job id."""
        q = t.queries.c
        columns = [q.job_id, *(q[name] for name in _MUTABLE)]
        where = prefix_clause(q.user_guid, prefixes)
        async with src.begin() as conn:
            ours = {r.job_id: r for r in (await conn.execute(select(*columns).where(where))).all()}
        async with dst.begin() as conn:
            theirs = {
                r.job_id: r for r in (await conn.execute(select(*columns).where(where))).all()
            }
        changed = [row for job_id, row in ours.items() if theirs.get(job_id) not in (None, row)]
        if not changed:
            return
        async with dst.begin() as conn:
            for row in changed:
                await conn.execute(
                    update(t.queries)
                    .where(q.job_id == row.job_id)
                    .values(**{name: getattr(row, name) for name in _MUTABLE})
                )

    async def delete_rows(self, storage: Storage, prefixes: list[str], step: str) -> int:
        """Delete the prefixes' users, queries and keys from ``storage`` in chunks."""
        q = t.queries.c
        where = prefix_clause(q.user_guid, prefixes)
        async with storage.begin() as conn:
            total = int((await conn.execute(select(func.count()).where(where))).scalar_one())
        done = 0
        self._progress(step, 0, total)
        while True:
            async with storage.begin() as conn:
                ids: list[int] = list(
                    (await conn.execute(select(q.id).where(where).limit(self.chunk_rows))).scalars()
                )
                if not ids:
                    break
                await conn.execute(delete(t.queries).where(q.id.in_(ids)))
            done += len(ids)
            self._progress(step, done, max(total, done))
        async with storage.begin() as conn:
            await conn.execute(delete(t.users).where(prefix_clause(t.users.c.guid, prefixes)))
            await conn.execute(
                delete(t.api_keys).where(prefix_clause(t.api_keys.c.user_guid, prefixes))
            )
        return done

    async def carry_stragglers(self, src: Storage, dst: Storage, prefixes: list[str]) -> int:
        """Rows written to the source after the switch: into the target, charged there."""
        q = t.queries.c
        where = prefix_clause(q.user_guid, prefixes)
        async with src.begin() as conn:
            ours = (await conn.execute(select(q.id, q.job_id).where(where))).all()
        async with dst.begin() as conn:
            present: set[str] = set((await conn.execute(select(q.job_id).where(where))).scalars())
        late_ids = [int(r.id) for r in ours if r.job_id not in present]
        if not late_ids:
            return 0
        async with src.begin() as conn:
            late = (await conn.execute(select(t.queries).where(q.id.in_(late_ids)))).all()
            users = (
                await conn.execute(
                    select(t.users).where(t.users.c.guid.in_({r.user_guid for r in late}))
                )
            ).all()
        await self.insert(dst, t.queries, late)
        charged = [r for r in late if r.status in (None, "done")]
        async with dst.begin() as conn:
            known: set[str] = set(
                (
                    await conn.execute(
                        select(t.users.c.guid).where(t.users.c.guid.in_([u.guid for u in users]))
                    )
                ).scalars()
            )
            fresh = [dict(u._mapping) for u in users if u.guid not in known]
            if fresh:
                await conn.execute(insert(t.users), fresh)
            for row in charged:
                if row.user_guid in known:
                    await conn.execute(
                        update(t.users)
                        .where(t.users.c.guid == row.user_guid)
                        .values(
                            query_count=t.users.c.query_count + 1,
                            total_query_time=t.users.c.total_query_time
                            + (row.processing_time or 0),
                            total_cost=t.users.c.total_cost + (row.cost or 0),
                        )
                    )
            delta = sum(
                (Delta(1, float(r.processing_time or 0), float(r.cost or 0)) for r in charged),
                Delta(),
            )
            await totals.add(conn, t.shard_totals, delta)
        logger.warning("carried %d row(s) written to the old shard after the switch", len(late))
        return len(late)
