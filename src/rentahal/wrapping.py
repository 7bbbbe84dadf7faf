"""Function wrapping: the design's ``process_query``, ``select_worker`` and ``get_db``.

Each tries the realm path first and falls back to the legacy single-queue path
when realms are disabled, or the query's realm is missing or stopped. They are
plain functions over a :class:`~rentahal.broker.Broker`; nothing is patched.
"""

from __future__ import annotations

from rentahal.broker import Broker
from rentahal.models import AIWorker, Query, Result
from rentahal.storage.database import Storage


async def process_query(
    broker: Broker, user_guid: str, query: Query, timeout_s: float | None = None
) -> Result:
    """Queue ``query`` for ``user_guid`` (realm first, legacy fallback) and wait for it."""
    job = await broker.submit(user_guid, query, want_result=True)
    return await broker.wait_result(job.job_id, timeout_s)


async def select_worker(broker: Broker, query: Query) -> AIWorker | None:
    """The worker that would take ``query`` now (no slot is taken), or ``None``."""
    return broker.views.peek_worker(await broker.route(query), query)


def get_db(broker: Broker, user_guid: str | None = None) -> Storage:
    """The storage for ``user_guid``'s data (its shard), else the main database."""
    return broker.database(user_guid)
