"""The ledger: finished queries, user totals and system totals, written atomically.

Records are group-committed: whatever finished while the previous transaction
ran is written in the next one (one multi-row insert, the users' totals, the
system totals, one commit), so a busy broker does not pay a commit per query.
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
from rentahal.models import Job, Result, User
from rentahal.storage import tables as t
from rentahal.storage.database import Storage, user_from_row

logger = logging.getLogger(__name__)

MAX_BATCH = 256

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
    job: Job
    result: Result
    done: asyncio.Future[tuple[bool, User | None]] = field(repr=False)


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
    """Records finished queries; only completed ones are charged, each job once."""

    def __init__(self, storage: Storage, costs: CostSettings) -> None:
        self._storage = storage
        self._costs = costs
        self._pending: list[_Entry] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def price(self, result: Result) -> Result:
        """``result`` with its cost set (zero unless it completed)."""
        cost = compute_cost(result.processing_time, self._costs) if result.status == "done" else 0.0
        return result.model_copy(update={"cost": cost})

    async def record(self, job: Job, result: Result) -> bool:
        """Write the query row and, for completed queries, the totals, atomically.

        Idempotent per ``job_id``: a second record of the same job (a job
        re-delivered after a node died) changes nothing and answers ``False``.
        """
        first, _user = await self.record_with_totals(job, result)
        return first

    async def record_with_totals(self, job: Job, result: Result) -> tuple[bool, User | None]:
        """:meth:`record`, also answering the user's updated row when the query was charged."""
        done: asyncio.Future[tuple[bool, User | None]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(job, result, done))
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ledger-writer")
        self._wakeup.set()
        return await done

    async def close(self) -> None:
        """Write what is pending, then stop the writer."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                by_storage: defaultdict[int, list[_Entry]] = defaultdict(list)
                storages: dict[int, Storage] = {}
                for entry in batch:
                    storage = self._storage.for_user(entry.job.user_guid)
                    storages[id(storage)] = storage
                    by_storage[id(storage)].append(entry)
                for key, entries in by_storage.items():
                    await self._write(storages[key], entries)
            self._idle.set()

    async def _write(self, storage: Storage, entries: list[_Entry]) -> None:
        try:
            try:
                outcomes = await self._write_batch(storage, entries)
            except IntegrityError:
                # Another node recorded one of these jobs meanwhile: one by one.
                outcomes = [await self._write_one(storage, e) for e in entries]
        except Exception as exc:
            for entry in entries:
                if not entry.done.done():
                    entry.done.set_exception(exc)
            return
        for entry, outcome in zip(entries, outcomes, strict=True):
            if not entry.done.done():
                entry.done.set_result(outcome)

    async def _write_one(self, storage: Storage, entry: _Entry) -> tuple[bool, User | None]:
        try:
            return (await self._write_batch(storage, [entry]))[0]
        except IntegrityError:
            return False, None

    async def _write_batch(
        self, storage: Storage, entries: list[_Entry]
    ) -> list[tuple[bool, User | None]]:
        now = datetime.now(UTC).replace(tzinfo=None)
        # A job already recorded makes the INSERT fail: the caller then retries one by one.
        async with storage.begin() as conn:
            await conn.execute(insert(t.queries), [_row(e.job, e.result, now) for e in entries])
            users = await self._charge(conn, [e for e in entries if e.result.status == "done"], now)
        return [
            (True, users.get(e.job.user_guid) if e.result.status == "done" else None)
            for e in entries
        ]

    async def _charge(
        self, conn: AsyncConnection, charged: list[_Entry], now: datetime
    ) -> dict[str, User]:
        if not charged:
            return {}
        per_user: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        for entry in charged:
            sums = per_user[entry.job.user_guid]
            sums[0] += entry.result.processing_time
            sums[1] += entry.result.cost
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
                + sum(e.result.processing_time for e in charged),
                total_cost=stats.total_cost + sum(e.result.cost for e in charged),
                last_updated=now,
            )
        )
        return users
