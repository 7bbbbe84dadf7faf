"""The ledger: one transaction per finished query (row, user totals, system totals)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError

from rentahal.config import CostSettings
from rentahal.models import Job, Result, User
from rentahal.storage import tables as t
from rentahal.storage.database import Storage, user_from_row

logger = logging.getLogger(__name__)


def compute_cost(processing_time_s: float, costs: CostSettings) -> float:
    """Cost of one completed query: ``base_cost_per_query + processing_time * cost_per_second``."""
    return costs.base_cost_per_query + processing_time_s * costs.cost_per_second


class Ledger:
    """Records finished queries; only completed ones are charged."""

    def __init__(self, storage: Storage, costs: CostSettings) -> None:
        self._storage = storage
        self._costs = costs

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
        storage = self._storage.for_user(job.user_guid)
        now = datetime.now(UTC).replace(tzinfo=None)
        charged = result.status == "done"
        try:
            async with storage.begin() as conn:
                await conn.execute(
                    insert(t.queries).values(
                        user_guid=job.user_guid,
                        query_type=job.query.query_type,
                        model_type=job.query.model_type,
                        model_name=job.query.model_name,
                        prompt=job.query.prompt,
                        processing_time=result.processing_time,
                        cost=result.cost,
                        timestamp=now,
                        job_id=job.job_id,
                        status=result.status,
                        error=result.error,
                        queue_wait=result.queue_wait,
                        worker=result.worker,
                        realm=result.realm,
                        attempts=result.attempts,
                        result_type=result.result_type if charged else None,
                    )
                )
                user = None
                if charged:
                    row = (
                        await conn.execute(
                            update(t.users)
                            .where(t.users.c.guid == job.user_guid)
                            .values(
                                total_query_time=t.users.c.total_query_time
                                + result.processing_time,
                                total_cost=t.users.c.total_cost + result.cost,
                                query_count=t.users.c.query_count + 1,
                            )
                            .returning(*t.users.c)
                        )
                    ).first()
                    user = user_from_row(row) if row is not None else None
                    await conn.execute(
                        update(t.system_stats)
                        .where(t.system_stats.c.id == 1)
                        .values(
                            total_queries=t.system_stats.c.total_queries + 1,
                            total_processing_time=t.system_stats.c.total_processing_time
                            + result.processing_time,
                            total_cost=t.system_stats.c.total_cost + result.cost,
                            last_updated=now,
                        )
                    )
        except IntegrityError:
            logger.info("job %s already recorded; not charged twice", job.job_id)
            return False, None
        return True, user
