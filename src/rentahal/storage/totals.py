"""System totals under sharding: a counter per shard and an outbox to the main database.

Each shard keeps ``shard_totals`` (its charged rows: count, time, cost) in
the same transaction as the rows, and writes the same figures as one
``totals_outbox`` row per ledger batch. After the shard commits, the writer
adds the batch to the main database's ``system_stats`` and marks its id in
``totals_applied``, in one main transaction; a batch id already marked is
skipped, so each batch counts once. A batch whose writer died (or whose main
database was away) stays in the outbox: :func:`recover` applies it after
``RECOVER_AFTER_S`` and deletes outbox rows and marks of applied batches.
So ``system_stats`` = ``totals_base`` + the sum of the shard counters, minus
the batches still waiting in an outbox, exactly (``rentahal db verify``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from rentahal.storage import tables as t
from rentahal.storage.lean import Prepared
from rentahal.storage.prefixes import prefix_clause

logger = logging.getLogger(__name__)

# Outbox rows younger than this belong to a writer that may still apply them itself.
RECOVER_AFTER_S = 60.0
# A writer gives up applying its batch after this (recovery applies it later).
APPLY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Delta:
    """Charged queries: how many, their processing time and their cost."""

    queries: int = 0
    processing_time: float = 0.0
    cost: float = 0.0

    def __add__(self, other: Delta) -> Delta:
        return Delta(
            self.queries + other.queries,
            self.processing_time + other.processing_time,
            self.cost + other.cost,
        )

    def __sub__(self, other: Delta) -> Delta:
        return Delta(
            self.queries - other.queries,
            self.processing_time - other.processing_time,
            self.cost - other.cost,
        )

    def __neg__(self) -> Delta:
        return Delta(-self.queries, -self.processing_time, -self.cost)

    def __bool__(self) -> bool:
        return bool(self.queries or self.processing_time or self.cost)

    def columns(self) -> dict[str, Any]:
        """As the ``total_*`` columns of the totals tables."""
        return {
            "total_queries": self.queries,
            "total_processing_time": self.processing_time,
            "total_cost": self.cost,
        }

    def close_to(self, other: Delta) -> bool:
        """Equal counts, and sums equal up to floating-point summation order."""
        return (
            self.queries == other.queries
            and math.isclose(self.processing_time, other.processing_time, abs_tol=1e-6)
            and math.isclose(self.cost, other.cost, abs_tol=1e-6)
        )

    @classmethod
    def of_row(cls, row: Any) -> Delta:
        """From a row with the ``total_*`` columns (``None`` as zero)."""
        if row is None:
            return cls()
        return cls(
            int(row.total_queries or 0),
            float(row.total_processing_time or 0.0),
            float(row.total_cost or 0.0),
        )


def charged_rows() -> ColumnElement[bool]:
    """SQL: a query row that was charged (original rows have no status)."""
    return t.queries.c.status.is_(None) | (t.queries.c.status == "done")


async def charged(conn: AsyncConnection, prefixes: Iterable[str] | None) -> Delta:
    """The charged rows of this database (of ``prefixes`` only, when given)."""
    q = t.queries.c
    condition = charged_rows()
    if prefixes is not None:
        condition = condition & prefix_clause(q.user_guid, list(prefixes))
    row = (
        await conn.execute(
            select(
                func.count().label("total_queries"),
                func.sum(q.processing_time).label("total_processing_time"),
                func.sum(q.cost).label("total_cost"),
            ).where(condition)
        )
    ).one()
    return Delta.of_row(row)


async def read(conn: AsyncConnection, table: Any) -> Delta:
    """The one totals row (id 1) of ``table`` (``shard_totals``, ``system_stats``, ...)."""
    row = (await conn.execute(select(table).where(table.c.id == 1))).first()
    return Delta.of_row(row)


def _add_statement(table: Any) -> Update:
    c = table.c
    values: dict[str, Any] = {
        "total_queries": c.total_queries + bindparam("d_queries"),
        "total_processing_time": c.total_processing_time + bindparam("d_time"),
        "total_cost": c.total_cost + bindparam("d_cost"),
    }
    if table is t.system_stats:
        values["last_updated"] = bindparam("d_now")
    return update(table).where(c.id == 1).values(**values)


# Built once: the ledger adds to these in every batch.
_ADD = {table: Prepared(_add_statement(table)) for table in (t.system_stats, t.shard_totals)}
_OUTBOX = Prepared(insert(t.totals_outbox))


def add_sync(conn: Connection, table: Any, delta: Delta) -> None:
    """Add ``delta`` to the totals row of ``table`` (on a sync connection)."""
    if not delta:
        return
    statement = _ADD.get(table)
    if statement is None:
        statement = _ADD[table] = Prepared(_add_statement(table))
    params: dict[str, Any] = {
        "d_queries": delta.queries,
        "d_time": delta.processing_time,
        "d_cost": delta.cost,
    }
    if table is t.system_stats:
        params["d_now"] = datetime.now(UTC).replace(tzinfo=None)
    statement.execute(conn, params)


async def add(conn: AsyncConnection, table: Any, delta: Delta) -> None:
    """:func:`add_sync` on an async connection."""
    if delta:
        await conn.run_sync(add_sync, table, delta)


def add_to_outbox_sync(conn: Connection, batch_id: str, delta: Delta) -> None:
    """Charge this shard's counter and queue ``delta`` for the main database."""
    add_sync(conn, t.shard_totals, delta)
    _OUTBOX.execute(conn, {"batch_id": batch_id, "created_at": time.time(), **delta.columns()})


async def add_to_outbox(conn: AsyncConnection, batch_id: str, delta: Delta) -> None:
    """:func:`add_to_outbox_sync` on an async connection."""
    await conn.run_sync(add_to_outbox_sync, batch_id, delta)


_APPLIED_AMONG = Prepared(
    select(t.totals_applied.c.batch_id).where(
        t.totals_applied.c.batch_id.in_(bindparam("ids", expanding=True))
    )
)
_MARK_APPLIED = Prepared(insert(t.totals_applied))


def apply_sync(main_conn: Connection, batches: list[tuple[str, Delta]]) -> Delta:
    """Add to ``system_stats`` the batches not applied yet; what was added.

    Run in a transaction of the main database; a batch applied meanwhile by
    another process makes it fail with ``IntegrityError`` (nothing added):
    call again.
    """
    if not batches:
        return Delta()
    ids = [batch_id for batch_id, _ in batches]
    done: set[str] = {row[0] for row in _APPLIED_AMONG.rows(main_conn, {"ids": ids})}
    fresh = [(batch_id, delta) for batch_id, delta in batches if batch_id not in done]
    if not fresh:
        return Delta()
    now = time.time()
    _MARK_APPLIED.execute(main_conn, [{"batch_id": b, "applied_at": now} for b, _ in fresh])
    total = sum((d for _, d in fresh), Delta())
    add_sync(main_conn, t.system_stats, total)
    return total


async def apply(main_conn: AsyncConnection, batches: list[tuple[str, Delta]]) -> Delta:
    """:func:`apply_sync` on an async connection."""
    return await main_conn.run_sync(apply_sync, batches)


Write = Callable[[Callable[[Connection], Delta]], Awaitable[Delta]]


async def apply_with(main_begin: Any, batches: list[tuple[str, Delta]]) -> Delta:
    """:func:`apply` in its own main transaction (``main_begin``), once more on a race."""

    async def write(fn: Callable[[Connection], Delta]) -> Delta:
        async with main_begin() as conn:
            delta: Delta = await conn.run_sync(fn)
        return delta

    return await apply_written(write, batches)


async def apply_written(write: Write, batches: list[tuple[str, Delta]]) -> Delta:
    """:func:`apply_sync` through ``write`` (``Storage.write`` of main), once more on a race."""
    for attempt in range(2):
        try:
            return await write(lambda conn: apply_sync(conn, batches))
        except IntegrityError:
            if attempt:
                raise
    return Delta()


async def recover(main_begin: Any, shard_begins: dict[str, Any]) -> int:
    """Apply outbox batches older than ``RECOVER_AFTER_S`` and clear applied ones.

    ``shard_begins`` maps shard names to their ``begin``; a shard that fails is
    skipped (its batches wait). The number of batches applied here.
    """
    applied = 0
    cutoff = time.time() - RECOVER_AFTER_S
    for name, begin in shard_begins.items():
        try:
            async with begin() as conn:
                rows = (
                    await conn.execute(
                        select(t.totals_outbox).where(t.totals_outbox.c.created_at < cutoff)
                    )
                ).all()
            if not rows:
                continue
            batches = [(r.batch_id, Delta.of_row(r)) for r in rows]
            added = await apply_with(main_begin, batches)
            applied += len(batches) if added else 0
            ids = [b for b, _ in batches]
            async with begin() as conn:
                await conn.execute(
                    delete(t.totals_outbox).where(t.totals_outbox.c.batch_id.in_(ids))
                )
            async with main_begin() as conn:
                await conn.execute(
                    delete(t.totals_applied).where(t.totals_applied.c.batch_id.in_(ids))
                )
        except Exception as exc:  # that shard (or main) is away: next time
            logger.warning("could not settle the totals outbox of shard %s: %s", name, exc)
    return applied


async def pending(conn: AsyncConnection, main_conn: AsyncConnection) -> Delta:
    """The outbox batches of a shard (``conn``) that the main database has not applied."""
    rows = (await conn.execute(select(t.totals_outbox))).all()
    if not rows:
        return Delta()
    ids = [r.batch_id for r in rows]
    done: set[str] = set(
        (
            await main_conn.execute(
                select(t.totals_applied.c.batch_id).where(t.totals_applied.c.batch_id.in_(ids))
            )
        ).scalars()
    )
    return sum((Delta.of_row(r) for r in rows if r.batch_id not in done), Delta())
