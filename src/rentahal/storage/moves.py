"""Moving GUID prefixes between shards while the broker serves.

The steps (as Vitess copies, catches up, checks with VDiff and switches):

1. The move is recorded in the main database (``shard_moves``, phase ``copying``).
   The target is marked as not holding the prefixes and any rows of them it
   has (an earlier attempt) are deleted; rows without a job id get one, so
   every row can be recognised on both sides.
2. Copy: the query rows are copied in chunks (optionally throttled) while the
   source keeps taking writes.
3. Catch-up: the source's fences are frozen (a lease; writers of these
   prefixes wait), rows not yet in the target are copied, users and API keys
   are copied afresh, then counts and sums are compared (users and their
   totals, queries, charged queries with their time and cost, keys). A
   difference gives up and thaws the source.
4. Switch: the target takes the prefixes (its counter adds their rows), the
   directory points at it (one main transaction; phase ``switched``), the
   source hands them on (its fence refuses writes from now on, its counter
   drops them). The waiting writes go to the target.
5. Every node learns the new directory (control channel, else its 2 s check);
   the mover waits until each live node reports it (at most ``ack_timeout_s``).
6. Clean-up: rows that reached the source after the switch (a node that did
   not know yet, after the lease ran out) are carried over, then the source's
   rows of the prefixes are deleted and the move is forgotten.

A crash before step 4 leaves the source whole and in charge (a lease that is
not renewed runs out in ``hold_s``); after it, the target is whole and in
charge. Running the same move again finishes it from where it stands.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, cast, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.errors import StorageError
from rentahal.storage import fences, totals
from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.directory import Directory, Move
from rentahal.storage.prefixes import ALL_PREFIXES, prefix_clause
from rentahal.storage.shards import SYNC_INTERVAL_S, ShardedStorage
from rentahal.storage.totals import Delta

logger = logging.getLogger(__name__)

CHUNK_ROWS = 500
HOLD_S = 15.0
ACK_TIMEOUT_S = 10.0
_FREEZE_ATTEMPTS = 3
_MUTABLE = ("status", "error", "cost", "processing_time", "result_type")

Progress = Callable[[str, int, int], None]  # step, done, total
Notify = Callable[[int], Awaitable[None]]  # tell every node the directory version


class MoveFailed(StorageError):
    """A move stopped; the old placement is whole and in charge (run it again)."""


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


@dataclass(slots=True)
class MoveReport:
    """What a move did: rows copied, how long writes of the prefixes waited."""

    target: str
    prefixes: list[str] = field(default_factory=list)
    rows_copied: int = 0
    caught_up: int = 0
    users: int = 0
    keys: int = 0
    held_s: float = 0.0  # freeze to switch: the longest any write of the prefixes waited
    version: int = 0
    lagging_nodes: list[str] = field(default_factory=list)
    stragglers: int = 0
    removed: int = 0


def plan_reshard(directory: Directory, new_shard: str) -> list[str]:
    """A fair share of prefixes for ``new_shard``, taken from the fullest shards.

    Prefixes already moving there count; nothing is taken once it holds its share.
    """
    owners = dict(directory.owners)
    for move in directory.moves.values():
        owners[move.prefix] = move.target if move.target == new_shard else owners[move.prefix]
    shards = set(owners.values()) | {new_shard}
    share = len(ALL_PREFIXES) // len(shards)
    counts: defaultdict[str, list[str]] = defaultdict(list)
    for prefix in sorted(owners):
        counts[owners[prefix]].append(prefix)
    taken: list[str] = [p for p in counts[new_shard] if directory.owners[p] != new_shard]
    have = len(counts[new_shard])
    while have < share:
        fullest = max((s for s in counts if s != new_shard), key=lambda s: len(counts[s]))
        prefix = counts[fullest].pop()
        taken.append(prefix)
        have += 1
    return sorted(taken)


class Mover:
    """Moves prefixes to a shard (see the module doc); one move at a time per prefix."""

    def __init__(
        self,
        storage: ShardedStorage,
        *,
        chunk_rows: int = CHUNK_ROWS,
        max_rows_per_s: float | None = None,
        hold_s: float = HOLD_S,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        notify: Notify | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.storage = storage
        self.chunk_rows = chunk_rows
        self.max_rows_per_s = max_rows_per_s
        self.hold_s = hold_s
        self.ack_timeout_s = ack_timeout_s
        self._notify = notify
        self._progress = progress or (lambda step, done, total: None)

    async def move(self, prefixes: list[str], target: str) -> MoveReport:
        """Move ``prefixes`` to shard ``target`` (finishing earlier attempts of them)."""
        storage = self.storage
        await storage.sync(report=False)
        directory = storage.directory
        if directory is None:
            raise MoveFailed("the installation is not sharded")
        if target not in storage.shards:
            raise MoveFailed(f"no shard named {target!r}")
        unknown = [p for p in prefixes if p not in ALL_PREFIXES]
        if unknown:
            raise MoveFailed(f"not a prefix: {', '.join(unknown)} (two hex digits, or '*')")
        report = MoveReport(target, sorted(prefixes))
        for prefix in prefixes:
            move = directory.moves.get(prefix)
            if move is not None and move.target != target:
                raise MoveFailed(
                    f"prefix {prefix} is being moved to {move.target}; "
                    f"finish that first (rentahal db move {prefix} {move.target})"
                )
        copying = [p for p in sorted(prefixes) if directory.owner(p) != target]
        await storage.store.begin_moves([Move(p, directory.owner(p), target, "") for p in copying])
        directory = await storage.store.load()
        assert directory is not None
        by_source: defaultdict[str, list[str]] = defaultdict(list)
        for prefix in copying:
            by_source[directory.owner(prefix)].append(prefix)
        for source, group in by_source.items():
            await self._copy_and_switch(source, group, target, report)
        switched: defaultdict[str, list[str]] = defaultdict(list)
        for prefix in sorted(prefixes):
            move = directory.moves.get(prefix)
            if move is not None:
                switched[move.source].append(prefix)
        if switched:
            await self._tell_nodes(report)
        for source, group in switched.items():
            await self._clean(source, group, target, report)
        await storage.store.end_moves(sorted(prefixes))
        await storage.sync(report=False)
        return report

    # steps 1-4 ---------------------------------------------------------------

    async def _copy_and_switch(
        self, source: str, prefixes: list[str], target: str, report: MoveReport
    ) -> None:
        src, dst = self.storage.shards[source], self.storage.shards[target]
        async with dst.begin() as conn:
            await fences.hand_on(conn, prefixes, source)
        await self._delete_rows(dst, prefixes, f"clear {target}")
        async with src.begin() as conn:
            held = {f.prefix for f in await fences.read(conn, prefixes) if f.moved_to is None}
            if set(prefixes) - held:
                await fences.claim(conn, sorted(set(prefixes) - held))
            await fences.thaw(conn, prefixes)
        await self._name_rows(src, prefixes)
        guard = await self._copy_queries(src, dst, prefixes, report)
        for _attempt in range(_FREEZE_ATTEMPTS):
            if await self._final(source, dst, prefixes, guard, report):
                return
        raise MoveFailed(f"could not keep {source} frozen long enough; try a longer --hold-s")

    async def _final(
        self, source: str, dst: Storage, prefixes: list[str], guard: int, report: MoveReport
    ) -> bool:
        """Freeze, catch up, compare, switch; ``False`` when the freeze ran out (try again)."""
        src = self.storage.shards[source]
        async with src.begin() as conn:
            until = await fences.freeze(conn, prefixes, self.hold_s)
        started = time.monotonic()
        switched = False
        try:
            self._progress("catch up", 0, 1)
            report.caught_up += await self._copy_missing(src, dst, prefixes, guard)
            users = await self._replace(src, dst, prefixes, t.users, t.users.c.guid)
            keys = await self._replace(src, dst, prefixes, t.api_keys, t.api_keys.c.user_guid)
            ours, theirs = await self._figures(src, prefixes), await self._figures(dst, prefixes)
            if not ours.same_as(theirs):
                await self._sync_fields(src, dst, prefixes)
                theirs = await self._figures(dst, prefixes)
            if not ours.same_as(theirs):
                raise MoveFailed(f"the copy differs from the source: {ours} != {theirs}")
            async with src.begin() as conn:
                if not await fences.extend(conn, prefixes, until, self.hold_s):
                    return False
            async with dst.begin() as conn:
                await fences.claim(conn, prefixes)
            report.version = await self.storage.store.switch(prefixes, report.target)
            switched = True
            report.users += users
            report.keys += keys
            report.held_s = max(report.held_s, time.monotonic() - started)
            self._progress("catch up", 1, 1)
        finally:
            if not switched:
                async with src.begin() as conn:
                    await fences.thaw(conn, prefixes)
        async with src.begin() as conn:
            await fences.hand_on(conn, prefixes, report.target)
        logger.info("prefixes %s switched from %s to %s", ",".join(prefixes), source, report.target)
        return True

    async def _figures(self, storage: Storage, prefixes: list[str]) -> Figures:
        async with storage.begin() as conn:
            return await figures(conn, prefixes)

    async def _name_rows(self, storage: Storage, prefixes: list[str]) -> None:
        """Give rows without a job id one (unique everywhere), so both copies can be matched."""
        q = t.queries.c
        token = uuid.uuid4().hex[:12]
        async with storage.begin() as conn:
            await conn.execute(
                update(t.queries)
                .where(q.job_id.is_(None), prefix_clause(q.user_guid, prefixes))
                .values(job_id=literal(f"legacy-{token}-") + cast(q.id, String))
            )

    async def _copy_queries(
        self, src: Storage, dst: Storage, prefixes: list[str], report: MoveReport
    ) -> int:
        """Copy the prefixes' query rows in chunks; the highest source id copied."""
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
                return last
            await self._insert(dst, t.queries, rows)
            last = int(rows[-1].id)
            done += len(rows)
            report.rows_copied += len(rows)
            self._progress("copy", done, max(total, done))
            if self.max_rows_per_s:
                ahead = done / self.max_rows_per_s - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    @staticmethod
    async def _insert(storage: Storage, table: Any, rows: Sequence[Any]) -> None:
        """Insert rows into ``storage`` (without their id: the target numbers them)."""
        if not rows:
            return
        values = [{k: v for k, v in row._mapping.items() if k != "id"} for row in rows]
        if table is t.users:
            values = [dict(row._mapping) for row in rows]
        async with storage.begin() as conn:
            await conn.execute(insert(table), values)

    async def _copy_missing(
        self, src: Storage, dst: Storage, prefixes: list[str], guard: int
    ) -> int:
        """Copy the source's rows the target lacks (by job id); how many."""
        q = t.queries.c
        where = prefix_clause(q.user_guid, prefixes)
        copied = await self._copy_absent(src, dst, where & (q.id > guard))
        async with src.begin() as conn:
            ours = (await conn.execute(select(func.count()).where(where))).scalar_one()
        async with dst.begin() as conn:
            theirs = (await conn.execute(select(func.count()).where(where))).scalar_one()
        if ours != theirs:  # a row committed late below the guard: look at all of them
            copied += await self._copy_absent(src, dst, where)
        return copied

    async def _copy_absent(self, src: Storage, dst: Storage, where: Any) -> int:
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
            await self._insert(dst, t.queries, rows)
        return len(absent)

    async def _replace(
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
            await self._insert(dst, table, rows[start : start + self.chunk_rows])
        return len(rows)

    async def _sync_fields(self, src: Storage, dst: Storage, prefixes: list[str]) -> None:
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

    async def _delete_rows(self, storage: Storage, prefixes: list[str], step: str) -> int:
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

    # steps 5 and 6 -----------------------------------------------------------

    async def _tell_nodes(self, report: MoveReport) -> None:
        version = await self.storage.store.version() or report.version
        report.version = version
        if self._notify is not None:
            try:
                await self._notify(version)
            except Exception as exc:  # the nodes' own check finds it within SYNC_INTERVAL_S
                logger.warning("could not announce directory version %d: %s", version, exc)
        deadline = time.monotonic() + self.ack_timeout_s
        live_s = 3 * SYNC_INTERVAL_S + 1
        while True:
            behind = await self.storage.store.nodes_behind(version, live_s)
            if not behind or time.monotonic() > deadline:
                report.lagging_nodes = behind
                return
            await asyncio.sleep(0.2)

    async def _clean(
        self, source: str, prefixes: list[str], target: str, report: MoveReport
    ) -> None:
        src, dst = self.storage.shards[source], self.storage.shards[target]
        async with src.begin() as conn:
            await fences.hand_on(conn, prefixes, target)
        report.stragglers += await self._carry_stragglers(src, dst, prefixes)
        report.removed += await self._delete_rows(src, prefixes, f"clean {source}")

    async def _carry_stragglers(self, src: Storage, dst: Storage, prefixes: list[str]) -> int:
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
        await self._insert(dst, t.queries, late)
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
