"""The ledger: finished queries, user totals and system totals, written atomically.

Records are group-committed: whatever finished while the previous transaction
ran is written in the next one (one multi-row insert, the users' totals, the
system totals, one commit), so a busy broker does not pay a commit per query.
A batch the database refuses goes to the :class:`~rentahal.storage.spool.LedgerSpool`
(when there is one) and is replayed in the background once the database takes
writes again; ``job_id`` is unique, so a row replayed twice is counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.config import CostSettings
from rentahal.errors import LedgerDeferred, StorageError
from rentahal.models import Job, Result, User
from rentahal.storage import tables as t
from rentahal.storage.database import Storage, user_from_row
from rentahal.storage.spool import LedgerSpool

logger = logging.getLogger(__name__)

MAX_BATCH = 256
REPLAY_INTERVAL_S = 5.0
Outcome = tuple[bool, User | None]

_CHARGE_USER = (
    update(t.users)
    .where(t.users.c.guid == bindparam("b_guid"))
    .values(
        total_query_time=t.users.c.total_query_time + bindparam("b_time"),
        total_cost=t.users.c.total_cost + bindparam("b_cost"),
        query_count=t.users.c.query_count + bindparam("b_count"),
    )
)


def compute_cost(processing_time_s: float, costs: CostSettings) -> float:
    """Cost of one completed query: ``base_cost_per_query + processing_time * cost_per_second``."""
    return costs.base_cost_per_query + processing_time_s * costs.cost_per_second


@dataclass(slots=True)
class _Entry:
    row: dict[str, Any]
    done: asyncio.Future[Outcome] = field(repr=False)


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
        """Write what is pending, then stop the writer and the replay."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._idle.wait()
        for task in (self._task, self._replayer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                for storage, entries in self._by_storage(batch):
                    await self._write(storage, entries)
            self._idle.set()

    def _by_storage(self, entries: list[_Entry]) -> list[tuple[Storage, list[_Entry]]]:
        groups: dict[int, tuple[Storage, list[_Entry]]] = {}
        for entry in entries:
            storage = self._storage.for_user(entry.row["user_guid"])
            groups.setdefault(id(storage), (storage, []))[1].append(entry)
        return list(groups.values())

    async def _write(self, storage: Storage, entries: list[_Entry]) -> None:
        try:
            outcomes = await self._write_rows(storage, [e.row for e in entries])
        except Exception as exc:
            error = await self._defer(entries, exc)
            for entry in entries:
                if not entry.done.done():
                    entry.done.set_exception(error)
            return
        for entry, outcome in zip(entries, outcomes, strict=True):
            if not entry.done.done():
                entry.done.set_result(outcome)

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

    async def _write_rows(self, storage: Storage, rows: list[dict[str, Any]]) -> list[Outcome]:
        try:
            return await self._write_batch(storage, rows)
        except IntegrityError:
            # Another node recorded one of these jobs meanwhile: one by one.
            return [await self._write_one(storage, row) for row in rows]

    async def _write_one(self, storage: Storage, row: dict[str, Any]) -> Outcome:
        try:
            return (await self._write_batch(storage, [row]))[0]
        except IntegrityError:
            return False, None

    async def _write_batch(self, storage: Storage, rows: list[dict[str, Any]]) -> list[Outcome]:
        now = datetime.now(UTC).replace(tzinfo=None)
        # A job already recorded makes the INSERT fail: the caller then retries one by one.
        async with storage.begin() as conn:
            await conn.execute(insert(t.queries), rows)
            users = await self._charge(conn, [r for r in rows if r["status"] == "done"], now)
        return [(True, users.get(r["user_guid"]) if r["status"] == "done" else None) for r in rows]

    async def _charge(
        self, conn: AsyncConnection, charged: list[dict[str, Any]], now: datetime
    ) -> dict[str, User]:
        if not charged:
            return {}
        per_user: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        for row in charged:
            sums = per_user[row["user_guid"]]
            sums[0] += row["processing_time"]
            sums[1] += row["cost"]
            sums[2] += 1
        # Statements with bound parameters only, so SQLAlchemy compiles each once.
        params = [
            {"b_guid": guid, "b_time": v[0], "b_cost": v[1], "b_count": int(v[2])}
            for guid, v in per_user.items()
        ]
        if len(params) == 1:
            rows = (await conn.execute(_CHARGE_USER.returning(*t.users.c), params[0])).all()
        else:
            await conn.execute(_CHARGE_USER, params)
            rows = (
                await conn.execute(select(t.users).where(t.users.c.guid.in_(list(per_user))))
            ).all()
        users = {row.guid: user_from_row(row) for row in rows}
        stats = t.system_stats.c
        await conn.execute(
            update(t.system_stats)
            .where(stats.id == 1)
            .values(
                total_queries=stats.total_queries + len(charged),
                total_processing_time=stats.total_processing_time
                + sum(r["processing_time"] for r in charged),
                total_cost=stats.total_cost + sum(r["cost"] for r in charged),
                last_updated=now,
            )
        )
        return users

    async def refund(self, job_id: str, user_guid: str, reason: str) -> bool:
        """Mark a charged job as failed with ``reason`` and take its charge back, once.

        For a result that was charged but could never be handed out. ``False``
        when the job has no charged row (never recorded, or refunded already).
        """
        storage = self._storage.for_user(user_guid)
        q, stats = t.queries.c, t.system_stats.c
        now = datetime.now(UTC).replace(tzinfo=None)
        async with storage.begin() as conn:
            row = (
                await conn.execute(
                    select(q.processing_time, q.cost).where(q.job_id == job_id, q.status == "done")
                )
            ).one_or_none()
            if row is None:
                return False
            await conn.execute(
                update(t.queries)
                .where(q.job_id == job_id, q.status == "done")
                .values(status="failed", error=reason, cost=0.0)
            )
            await conn.execute(
                _CHARGE_USER,
                {
                    "b_guid": user_guid,
                    "b_time": -row.processing_time,
                    "b_cost": -row.cost,
                    "b_count": -1,
                },
            )
            await conn.execute(
                update(t.system_stats)
                .where(stats.id == 1)
                .values(
                    total_queries=stats.total_queries - 1,
                    total_processing_time=stats.total_processing_time - row.processing_time,
                    total_cost=stats.total_cost - row.cost,
                    last_updated=now,
                )
            )
        return True

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
                groups: dict[int, tuple[Storage, list[dict[str, Any]]]] = {}
                for row in chunk:
                    storage = self._storage.for_user(row["user_guid"])
                    groups.setdefault(id(storage), (storage, []))[1].append(row)
                for storage, group in groups.values():
                    new += sum(first for first, _user in await self._write_rows(storage, group))
        except Exception as exc:  # the database is still down (StorageError, or a raw OSError)
            logger.warning(
                "database still refuses writes (%s); %d row(s) stay spooled", exc, len(rows)
            )
            return new
        await self.spool.done()
        logger.info("replayed the ledger spool: %d row(s), %d new", len(rows), new)
        return new
