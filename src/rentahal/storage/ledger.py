"""The ledger: finished queries, user totals and system totals, written atomically.

Records are group-committed: whatever finished while the previous transaction
ran is written in the next one (one multi-row insert, the users' totals, the
system totals, one commit), so a busy broker does not pay a commit per query.
A batch the database refuses goes to the :class:`~rentahal.storage.spool.LedgerSpool`
(when there is one) and is replayed in the background once the database takes
writes again; ``job_id`` is unique, so a row replayed twice is counted once.
A batch is one sync function run by ``Storage.write``: a lone row after a
pause on the event loop itself (on SQLite, no thread hand-offs), rows that
come faster as one call on a thread (on SQLite; else the async engine), whose
transaction lets the next batch gather.
The answer always follows the commit.

Sharded (:class:`~rentahal.storage.shards.ShardedStorage`), a batch is
grouped per shard: the query rows, the users' totals and the shard's counter
commit in the user's shard, and the batch's charges reach the main
database's ``system_stats`` through the shard's outbox, once per batch
(:mod:`rentahal.storage.totals`). Rows of a prefix that is being moved wait
(at most ``HOLD_LIMIT_S``) and are written to its new shard after the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from rentahal.config import CostSettings
from rentahal.errors import LedgerDeferred, StorageError
from rentahal.models import Job, Result, User
from rentahal.storage import fences, totals
from rentahal.storage import tables as t
from rentahal.storage.database import Storage, user_from_row
from rentahal.storage.lean import Prepared
from rentahal.storage.prefixes import MAIN, prefix_of
from rentahal.storage.shards import HOLD_LIMIT_S, HOLD_POLL_S, ShardedStorage
from rentahal.storage.spool import LedgerSpool
from rentahal.storage.totals import Delta

logger = logging.getLogger(__name__)

MAX_BATCH = 256
# One row after a pause (and after a batch of one) is written on the event loop
# itself (SQLite: no thread hand-off, the lowest latency); rows that come faster
# go through the async engine, whose slower transactions let the next batch gather.
INLINE_AFTER_S = 0.001
# Under load (the last batch had several rows, or came less than INLINE_AFTER_S ago)
# the writer lets the loop run this many turns first: the rows of answers completing
# in those turns join the batch (fewer, larger transactions). After a pause it writes
# at once, so a lone query's answer waits for nothing.
GATHER_TURNS = 2
REPLAY_INTERVAL_S = 5.0
Outcome = tuple[bool, User | None]

_CHARGE = (
    update(t.users)
    .where(t.users.c.guid == bindparam("b_guid"))
    .values(
        total_query_time=t.users.c.total_query_time + bindparam("b_time"),
        total_cost=t.users.c.total_cost + bindparam("b_cost"),
        query_count=t.users.c.query_count + bindparam("b_count"),
    )
)

# Run raw on a SQLite file's loop connection (rentahal.storage.lean).
_CHARGE_USER = Prepared(_CHARGE)
_CHARGE_ONE = Prepared(_CHARGE.returning(*t.users.c))
_INSERT_QUERY = Prepared(insert(t.queries))
# Only multi-user batches: these go through SQLAlchemy.
_USERS_AMONG = select(t.users).where(t.users.c.guid.in_(bindparam("b_guids", expanding=True)))
_CHARGED_JOB = select(t.queries.c.processing_time, t.queries.c.cost).where(
    t.queries.c.job_id == bindparam("b_job"), t.queries.c.status == "done"
)
_REFUND_JOB = (
    update(t.queries)
    .where(t.queries.c.job_id == bindparam("b_job"), t.queries.c.status == "done")
    .values(status="failed", error=bindparam("b_error"), cost=0.0)
)


def _charge(conn: Connection, charged: list[dict[str, Any]]) -> tuple[dict[str, User], Delta]:
    """Charge the users of completed rows; their updated rows and the batch's delta."""
    if not charged:
        return {}, Delta()
    per_user: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for row in charged:
        sums = per_user[row["user_guid"]]
        sums[0] += row["processing_time"]
        sums[1] += row["cost"]
        sums[2] += 1
    params = [
        {"b_guid": guid, "b_time": v[0], "b_cost": v[1], "b_count": int(v[2])}
        for guid, v in per_user.items()
    ]
    if len(params) == 1:
        rows = _CHARGE_ONE.rows(conn, params[0])
    else:
        _CHARGE_USER.execute(conn, params)
        rows = conn.execute(_USERS_AMONG, {"b_guids": list(per_user)}).all()
    users = {row.guid: user_from_row(row) for row in rows}
    delta = Delta(
        len(charged),
        sum(r["processing_time"] for r in charged),
        sum(r["cost"] for r in charged),
    )
    return users, delta


def _count(
    conn: Connection, main: bool | None, delta: Delta, prefixes: set[str]
) -> tuple[str, Delta] | None:
    """The system totals' part of a ledger transaction, then the fence check.

    ``main`` is ``None`` unsharded, else whether this shard is the main
    database. Answers the outbox batch to apply to the main database once
    this commits.
    """
    if main is None:
        totals.add_sync(conn, t.system_stats, delta)
        return None
    batch = None
    if main:  # the main database is a shard: one transaction
        totals.add_sync(conn, t.system_stats, delta)
        totals.add_sync(conn, t.shard_totals, delta)
    elif delta:
        batch = (uuid.uuid4().hex, delta)
        totals.add_to_outbox_sync(conn, *batch)
    fences.check_sync(conn, prefixes)
    return batch


def compute_cost(processing_time_s: float, costs: CostSettings) -> float:
    """Cost of one completed query: ``base_cost_per_query + processing_time * cost_per_second``."""
    return costs.base_cost_per_query + processing_time_s * costs.cost_per_second


@dataclass(slots=True)
class _Entry:
    row: dict[str, Any]
    done: asyncio.Future[Outcome] = field(repr=False)
    held_since: float | None = None  # when its prefix was first found moving


@dataclass(slots=True)
class HoldStats:
    """Rows that waited for a moving prefix: how many, the longest and the total wait."""

    held: int = 0
    max_wait_s: float = 0.0
    total_wait_s: float = 0.0

    def note(self, wait_s: float) -> None:
        """One row was written after waiting ``wait_s``."""
        self.held += 1
        self.max_wait_s = max(self.max_wait_s, wait_s)
        self.total_wait_s += wait_s


def _row(job: Job, result: Result, now: datetime) -> dict[str, Any]:
    charged = result.status == "done"
    return {
        "user_guid": job.user_guid,
        "query_type": job.query.query_type,
        "model_type": job.query.model_type,
        "model_name": job.query.model_name,
        "prompt": job.query.prompt,
        "processing_time": result.processing_time,
        "cost": result.cost,
        "timestamp": now,
        "job_id": job.job_id,
        "status": result.status,
        "error": result.error,
        "queue_wait": result.queue_wait,
        "worker": result.worker,
        "realm": result.realm,
        "attempts": result.attempts,
        "result_type": result.result_type if charged else None,
    }


class Ledger:
    """Records finished queries; only completed ones are charged, each job once.

    ``spool`` keeps rows the database refused (see :mod:`rentahal.storage.spool`);
    :meth:`start` replays it every ``replay_interval_s`` while it holds rows.
    """

    def __init__(
        self,
        storage: Storage,
        costs: CostSettings,
        spool: LedgerSpool | None = None,
        replay_interval_s: float = REPLAY_INTERVAL_S,
    ) -> None:
        self._storage = storage
        self._costs = costs
        self.spool = spool
        self._replay_interval_s = replay_interval_s
        self._pending: list[_Entry] = []
        self._held: list[_Entry] = []
        self._batches: list[tuple[str, Delta]] = []  # outbox batches main has yet to take
        self._last_write = 0.0  # when the last batch was written (monotonic)
        self._last_rows = 1  # how many rows it had
        self.holds = HoldStats()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None

    def price(self, result: Result) -> Result:
        """``result`` with its cost set (zero unless it completed)."""
        cost = compute_cost(result.processing_time, self._costs) if result.status == "done" else 0.0
        return result.model_copy(update={"cost": cost})

    def start(self) -> None:
        """Start replaying the spool (at once, then every ``replay_interval_s``)."""
        if self.spool is not None and (self._replayer is None or self._replayer.done()):
            self._replayer = asyncio.create_task(self._replay_loop(), name="ledger-replay")

    async def record(self, job: Job, result: Result) -> bool:
        """Write the query row and, for completed queries, the totals, atomically.

        Idempotent per ``job_id``: a second record of the same job (a job
        re-delivered after a node died) changes nothing and answers ``False``.
        Raises :class:`~rentahal.errors.LedgerDeferred` when the database
        refused the row and it was spooled, ``StorageError`` when it is lost.
        """
        first, _user = await self.record_with_totals(job, result)
        return first

    async def record_with_totals(self, job: Job, result: Result) -> Outcome:
        """:meth:`record`, also answering the user's updated row when the query was charged."""
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        now = datetime.now(UTC).replace(tzinfo=None)
        self._pending.append(_Entry(_row(job, result, now), done))
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ledger-writer")
        self._wakeup.set()
        return await done

    async def close(self) -> None:
        """Write what is pending, then stop the writer and the replay.

        Rows still waiting for a moving prefix after the limit are spooled.
        """
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._idle.wait()
        for task in (self._task, self._replayer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left, self._pending, self._held = self._pending + self._held, [], []
        if left:
            error = await self._defer(left, StorageError("the broker stopped before writing"))
            for entry in left:
                if not entry.done.done():
                    entry.done.set_exception(error)

    def _sharded(self) -> ShardedStorage | None:
        storage = self._storage
        return storage if isinstance(storage, ShardedStorage) and storage.sharded else None

    def _placement(self, guid: str) -> tuple[str, Storage]:
        """Where ``guid``'s rows go: a grouping key and the shard's storage."""
        sharded = self._sharded()
        if sharded is None:
            storage = self._storage.for_user(guid)
            return str(id(storage)), storage
        return sharded.owner_of(prefix_of(guid))

    async def _run(self) -> None:
        while True:
            if self._held:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOLD_POLL_S):
                        await self._wakeup.wait()
            else:
                await self._wakeup.wait()
            self._wakeup.clear()
            if self._loaded():
                for _ in range(GATHER_TURNS):
                    await asyncio.sleep(0)
            self._release_held()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                for key, (storage, entries) in self._by_storage(batch).items():
                    await self._write(key, storage, entries)
                await self._apply_batches()
                self._release_held()  # a busy ledger never leaves this loop
            if not self._held:
                self._idle.set()

    def _loaded(self) -> bool:
        """Rows are coming faster than one per :data:`INLINE_AFTER_S`."""
        return self._last_rows > 1 or time.monotonic() - self._last_write < INLINE_AFTER_S

    def _by_storage(self, entries: list[_Entry]) -> dict[str, tuple[Storage, list[_Entry]]]:
        groups: dict[str, tuple[Storage, list[_Entry]]] = {}
        for entry in entries:
            key, storage = self._placement(entry.row["user_guid"])
            groups.setdefault(key, (storage, []))[1].append(entry)
        return groups

    def _release_held(self) -> None:
        """Rows whose prefix is writable again (or that waited too long) go back in line."""
        sharded = self._sharded()
        now, keep = time.monotonic(), []
        for entry in self._held:
            prefix = prefix_of(entry.row["user_guid"])
            waited = now - (entry.held_since or now)
            if sharded is None or not sharded.is_held(prefix) or waited > HOLD_LIMIT_S:
                self._pending.append(entry)
            else:
                keep.append(entry)
        self._held = keep

    async def _write(self, key: str, storage: Storage, entries: list[_Entry]) -> None:
        try:
            outcomes = await self._write_rows(storage, [e.row for e in entries])
        except fences.PrefixMoving as exc:
            await self._hold(entries, set(exc.prefixes))
            return
        except Exception as exc:
            sharded = self._sharded()
            if sharded is not None:
                sharded.suspect(key, exc)
            error = await self._defer(entries, exc)
            for entry in entries:
                if not entry.done.done():
                    entry.done.set_exception(error)
            return
        now, moving = time.monotonic(), []
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome is None:
                moving.append(entry)
                continue
            if entry.held_since is not None:
                self.holds.note(now - entry.held_since)
                logger.debug(
                    "job %s written after waiting %.3f s",
                    entry.row["job_id"],
                    now - entry.held_since,
                )
            if not entry.done.done():
                entry.done.set_result(outcome)
        if moving:
            await self._hold(moving, {prefix_of(e.row["user_guid"]) for e in moving})

    async def _hold(self, entries: list[_Entry], moving: set[str]) -> None:
        """Rows of moving prefixes wait; the others of their batch go again at once."""
        sharded = self._sharded()
        now, late = time.monotonic(), []
        if not any(prefix_of(e.row["user_guid"]) in moving for e in entries):
            moving = {prefix_of(e.row["user_guid"]) for e in entries}
        for entry in entries:
            prefix = prefix_of(entry.row["user_guid"])
            if prefix not in moving:
                self._pending.append(entry)
                continue
            if entry.held_since is None:
                entry.held_since = now
                logger.debug("job %s waits for prefix %s", entry.row["job_id"], prefix)
            if now - entry.held_since > HOLD_LIMIT_S:
                late.append(entry)
                continue
            self._held.append(entry)
            if sharded is not None:
                sharded.hold(prefix)
        if late:
            error = await self._defer(late, StorageError("the account's data is still moving"))
            for entry in late:
                if not entry.done.done():
                    entry.done.set_exception(error)

    async def _apply_batches(self) -> None:
        """Give the main database the charges the shards committed this round."""
        if not self._batches:
            return
        batches, self._batches = self._batches, []
        try:
            async with asyncio.timeout(totals.APPLY_TIMEOUT_S):
                await totals.apply_written(self._storage.write, batches)
        except Exception as exc:  # the shards' outboxes keep them; recovery applies them
            logger.warning(
                "system totals of %d batch(es) wait in the outbox: %s", len(batches), exc
            )

    async def _defer(self, entries: list[_Entry], exc: Exception) -> Exception:
        """Spool rows the database refused; the error their callers get."""
        if self.spool is None:
            return exc
        try:
            await self.spool.append([e.row for e in entries])
        except OSError as spool_exc:
            logger.error("ledger rows lost: database (%s) and spool (%s) failed", exc, spool_exc)
            return StorageError(f"{exc}; the spool failed too: {spool_exc}")
        logger.warning(
            "database refused %d ledger row(s) (%s); spooled to %s",
            len(entries),
            exc,
            self.spool.path,
        )
        return LedgerDeferred(str(exc))

    async def _write_rows(
        self, storage: Storage, rows: list[dict[str, Any]]
    ) -> list[Outcome | None]:
        """Outcomes per row; ``None`` for a row whose prefix turned out to be moving."""
        try:
            return list(await self._write_batch(storage, rows))
        except IntegrityError:
            # Another node recorded one of these jobs meanwhile: one by one.
            return [await self._write_one(storage, row) for row in rows]

    async def _write_one(self, storage: Storage, row: dict[str, Any]) -> Outcome | None:
        try:
            return (await self._write_batch(storage, [row]))[0]
        except IntegrityError:
            return False, None
        except fences.PrefixMoving:
            return None

    async def _write_batch(self, storage: Storage, rows: list[dict[str, Any]]) -> list[Outcome]:
        # A job already recorded makes the INSERT fail: the caller then retries one by one.
        charged = [r for r in rows if r["status"] == "done"]
        prefixes = {prefix_of(r["user_guid"]) for r in rows}
        main = self._main_of(storage)

        def write(conn: Connection) -> tuple[dict[str, User], tuple[str, Delta] | None]:
            _INSERT_QUERY.execute(conn, rows)
            users, delta = _charge(conn, charged)
            return users, _count(conn, main, delta, prefixes)

        inline = len(rows) == 1 and not self._loaded()
        try:
            users, batch = await storage.write(write, inline=inline)
        finally:
            self._last_write, self._last_rows = time.monotonic(), len(rows)
        if batch is not None:  # committed: the main database takes it after this round
            self._batches.append(batch)
        return [(True, users.get(r["user_guid"]) if r["status"] == "done" else None) for r in rows]

    def _main_of(self, storage: Storage) -> bool | None:
        """``None`` unsharded, else whether ``storage`` is the main database (a shard too)."""
        sharded = self._sharded()
        return None if sharded is None else storage is sharded.shards[MAIN]

    async def refund(self, job_id: str, user_guid: str, reason: str) -> bool:
        """Mark a charged job as failed with ``reason`` and take its charge back, once.

        For a result that was charged but could never be handed out. ``False``
        when the job has no charged row (never recorded, or refunded already).
        """
        deadline = time.monotonic() + HOLD_LIMIT_S
        while True:
            try:
                return await self._refund(job_id, user_guid, reason)
            except fences.PrefixMoving:
                sharded = self._sharded()
                if sharded is None or time.monotonic() > deadline:
                    raise
                await sharded.wait_writable(prefix_of(user_guid))
                await asyncio.sleep(HOLD_POLL_S)

    async def _refund(self, job_id: str, user_guid: str, reason: str) -> bool:
        _key, storage = self._placement(user_guid)
        main = self._main_of(storage)
        charge = {"b_guid": user_guid, "b_time": 0.0, "b_cost": 0.0, "b_count": -1}

        def write(conn: Connection) -> tuple[bool, tuple[str, Delta] | None]:
            row = conn.execute(_CHARGED_JOB, {"b_job": job_id}).one_or_none()
            if row is None:
                return False, None
            conn.execute(_REFUND_JOB, {"b_job": job_id, "b_error": reason})
            time_s, cost = float(row.processing_time or 0.0), float(row.cost or 0.0)
            _CHARGE_USER.execute(conn, charge | {"b_time": -time_s, "b_cost": -cost})
            return True, _count(conn, main, -Delta(1, time_s, cost), {prefix_of(user_guid)})

        refunded, batch = await storage.write(write)
        if batch is not None:
            self._batches.append(batch)
        await self._apply_batches()
        return refunded

    # the spool

    async def _replay_loop(self) -> None:
        while True:
            try:
                await self.replay()
            except Exception:
                logger.exception("ledger spool replay failed")
            await asyncio.sleep(self._replay_interval_s)

    async def replay(self) -> int:
        """Write the spooled rows to the database; how many were new (not yet recorded).

        When the database still refuses, the rows stay spooled for the next try.
        """
        if self.spool is None or not self.spool.pending():
            return 0
        rows = await self.spool.take()
        new = 0
        try:
            for start in range(0, len(rows), MAX_BATCH):
                chunk = rows[start : start + MAX_BATCH]
                groups: dict[str, tuple[Storage, list[dict[str, Any]]]] = {}
                for row in chunk:
                    key, storage = self._placement(row["user_guid"])
                    groups.setdefault(key, (storage, []))[1].append(row)
                for storage, group in groups.values():
                    outcomes = await self._write_rows(storage, group)
                    await self._apply_batches()
                    if any(outcome is None for outcome in outcomes):
                        raise fences.PrefixMoving([])
                    new += sum(1 for outcome in outcomes if outcome is not None and outcome[0])
        except Exception as exc:  # the database is still down (StorageError, or a raw OSError)
            logger.warning(
                "database still refuses writes (%s); %d row(s) stay spooled", exc, len(rows)
            )
            return new
        await self.spool.done()
        logger.info("replayed the ledger spool: %d row(s), %d new", len(rows), new)
        return new
