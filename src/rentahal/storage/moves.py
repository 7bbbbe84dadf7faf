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
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rentahal.errors import StorageError
from rentahal.storage import fences
from rentahal.storage import tables as t
from rentahal.storage.copying import CHUNK_ROWS, Progress, RowCopier
from rentahal.storage.database import Storage
from rentahal.storage.directory import Directory, Move
from rentahal.storage.prefixes import ALL_PREFIXES
from rentahal.storage.shards import SYNC_INTERVAL_S, ShardedStorage

logger = logging.getLogger(__name__)

HOLD_S = 15.0
ACK_TIMEOUT_S = 10.0
_FREEZE_ATTEMPTS = 3

Notify = Callable[[int], Awaitable[None]]  # tell every node the directory version


class MoveFailed(StorageError):
    """A move stopped; the old placement is whole and in charge (run it again)."""


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
        self.rows = RowCopier(
            chunk_rows=chunk_rows, max_rows_per_s=max_rows_per_s, progress=progress
        )
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
        await self.rows.delete_rows(dst, prefixes, f"clear {target}")
        async with src.begin() as conn:
            held = {f.prefix for f in await fences.read(conn, prefixes) if f.moved_to is None}
            if set(prefixes) - held:
                await fences.claim(conn, sorted(set(prefixes) - held))
            await fences.thaw(conn, prefixes)
        await self.rows.name_rows(src, prefixes)
        guard, copied = await self.rows.copy_queries(src, dst, prefixes)
        report.rows_copied += copied
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
            rows = self.rows
            report.caught_up += await rows.copy_missing(src, dst, prefixes, guard)
            users = await rows.replace(src, dst, prefixes, t.users, t.users.c.guid)
            keys = await rows.replace(src, dst, prefixes, t.api_keys, t.api_keys.c.user_guid)
            ours, theirs = await rows.figures(src, prefixes), await rows.figures(dst, prefixes)
            if not ours.same_as(theirs):
                await rows.sync_fields(src, dst, prefixes)
                theirs = await rows.figures(dst, prefixes)
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
        report.stragglers += await self.rows.carry_stragglers(src, dst, prefixes)
        report.removed += await self.rows.delete_rows(src, prefixes, f"clean {source}")
