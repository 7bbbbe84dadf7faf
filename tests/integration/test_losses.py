"""No silent losses: Redis restarted without persistence, the database down (issue 11).

Two broker nodes on one Redis (``--save "" --appendonly no``) and one
PostgreSQL. Every accepted query must end in an answer or an error to its
user and exactly one ledger row; nothing is charged that was not delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rentahal.config import Settings
from rentahal.lost_jobs import LOST_MESSAGE
from tests.integration.test_cluster import ClusterUser, close_all
from tests.support.cluster import Cluster

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

RECORDED_LATER = (
    "The query ran but could not be recorded yet: database unavailable; "
    "it will be recorded when the database is back"
)


def _known(env: dict[str, str]) -> dict[str, str]:
    """``env`` without settings this version of the broker does not have."""
    sections = Settings.model_fields
    known = {}
    for name, value in env.items():
        section, key = name.removeprefix("RENTAHAL_").lower().split("__")
        annotation = sections[section].annotation
        if key in getattr(annotation, "model_fields", {}):
            known[name] = value
    return known


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two nodes, Redis, PostgreSQL, one slow and one fast reference worker."""
    with Cluster(nodes=2) as started:
        started.start_worker("slow", latency_ms=400)
        started.start_worker("fast", latency_ms=20)
        yield started


async def _rows(cluster: Cluster) -> list[dict[str, Any]]:
    return await cluster.fetch("SELECT job_id, user_guid, status, cost, error FROM queries")


async def _rows_when(cluster: Cluster, count: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    rows = await _rows(cluster)
    while len(rows) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        rows = await _rows(cluster)
    return rows


async def _check_totals(cluster: Cluster, users: list[ClusterUser]) -> None:
    """User and system totals are the sums of the completed rows."""
    rows = await _rows(cluster)
    done = [r for r in rows if r["status"] == "done"]
    stats = (await cluster.fetch("SELECT total_queries, total_cost FROM system_stats"))[0]
    assert stats["total_queries"] == len(done)
    assert abs(stats["total_cost"] - sum(r["cost"] for r in done)) < 1e-6
    for user in users:
        mine = [r for r in done if r["user_guid"] == user.guid]
        row = (
            await cluster.fetch(
                "SELECT query_count, total_cost FROM users WHERE guid = $1", user.guid
            )
        )[0]
        assert row["query_count"] == len(mine)
        assert abs(row["total_cost"] - sum(r["cost"] for r in mine)) < 1e-6


@pytest.mark.timeout(120)
async def test_redis_restart_every_query_answered_or_failed(cluster: Cluster) -> None:
    cluster.prepare(
        [cluster.record("slow", max_concurrency=4)],
        env=_known(
            {
                "RENTAHAL_BROKER__LOST_JOB_CHECK_S": "0.5",
                "RENTAHAL_QUEUE__MAX_QUEUED_PER_USER": "10",
            }
        ),
    )
    users = [ClusterUser() for _ in range(3)]
    try:
        for i, user in enumerate(users):
            await user.connect(cluster.node(i % 2).ws_url)
        jobs = await asyncio.gather(*(u.submit(10, "before") for u in users))
        every = {j for ids in jobs for j in ids}
        assert len(every) == 30
        await asyncio.sleep(1.0)  # a few answered, a few running, most waiting
        cluster.redis.restart()

        settled = await asyncio.gather(
            *(u.wait_settled(ids, 30) for u, ids in zip(users, jobs, strict=True))
        )
        assert settled == [True] * 3, {
            u.guid[:8]: [j for j in ids if not u.settled([j])]
            for u, ids in zip(users, jobs, strict=True)
        }
        rows = await _rows_when(cluster, 30, 10)
        per_job = Counter(r["job_id"] for r in rows)
        assert set(per_job) == every, f"jobs without a row: {sorted(every - set(per_job))[:5]}"
        assert max(per_job.values()) == 1, "a job was recorded twice"
        by_job = {r["job_id"]: r for r in rows}
        lost = {j for j, r in by_job.items() if r["error"] == LOST_MESSAGE}
        assert lost, "the restart lost no waiting job: the test did not test anything"
        for user, ids in zip(users, jobs, strict=True):
            errors = {e["job_id"]: e["message"] for e in user.errors if "job_id" in e}
            for job_id in ids:
                row = by_job[job_id]
                if row["status"] == "done":
                    # charged only when delivered, at the price the user was shown
                    assert user.answered([job_id]), f"{job_id} charged but not delivered"
                    assert abs(user.costs[job_id] - row["cost"]) < 1e-9
                else:
                    assert row["status"] == "failed" and row["cost"] == 0
                    assert errors.get(job_id) == row["error"]
                    assert not user.answered([job_id])
            assert not user.duplicates()
        await _check_totals(cluster, users)

        # nobody is left with a stuck share: each submits a full share again
        for user in users:
            user.errors.clear()
        again = await asyncio.gather(*(u.submit(10, "after") for u in users))
        done = await asyncio.gather(
            *(u.wait_settled(ids, 40) for u, ids in zip(users, again, strict=True))
        )
        assert done == [True] * 3
        assert all(u.answered(ids) for u, ids in zip(users, again, strict=True))
        assert not [e for u in users for e in u.errors]
    finally:
        await close_all(users)


def _spooled(spool: Path) -> int:
    """Rows waiting in a spool (its file plus an unfinished replay's)."""
    files = (spool, spool.with_name(spool.name + ".replay"))
    return sum(len(f.read_bytes().splitlines()) for f in files if f.exists())


async def _submit_answered(user: ClusterUser, count: int, prompt: str) -> list[str]:
    ids = await user.submit(count, prompt)
    assert await user.wait_settled(ids, 20)
    assert user.answered(ids), user.errors
    return ids


async def _deferred(user: ClusterUser, ids: list[str], timeout_s: float) -> bool:
    """Whether each of ``ids`` got its 'recorded later' error."""

    def seen() -> bool:
        said = {e.get("job_id") for e in user.errors if e.get("message") == RECORDED_LATER}
        return all(j in said for j in ids)

    return await user.pump(seen, timeout_s)


@pytest.mark.timeout(120)
async def test_database_outage_rows_replayed_once(cluster: Cluster) -> None:
    cluster.prepare(
        [cluster.record("fast", max_concurrency=4)],
        env=_known({"RENTAHAL_DATABASE__SPOOL_REPLAY_S": "0.5"}),
    )
    cluster.kill(1)  # every query runs on node A, so its spool holds them all
    user = ClusterUser()
    spool = cluster.node(0).realms_file.parent / "ledger-spool-nodeA.jsonl"
    try:
        await user.connect(cluster.node(0).ws_url)
        answered = await _submit_answered(user, 2, "before")

        # PostgreSQL stops while queries are answered, then comes back
        cluster.postgres.pause()
        try:
            during = await _submit_answered(user, 4, "during")
            assert await _deferred(user, during, 10), user.errors
            assert _spooled(spool) == 4
        finally:
            cluster.postgres.resume()
        rows = await _rows_when(cluster, 6, 20)
        assert sorted(r["job_id"] for r in rows) == sorted(answered + during)
        assert {r["status"] for r in rows} == {"done"}
        for row in rows:
            assert abs(row["cost"] - user.costs[row["job_id"]]) < 1e-9
        await _check_totals(cluster, [user])

        # a spool left by a killed node is replayed when it starts again
        user.errors.clear()
        more = await _submit_answered(user, 1, "fresh")  # refreshes the node's user cache
        cluster.postgres.pause()
        try:
            late = await _submit_answered(user, 3, "late")
            assert await _deferred(user, late, 10), user.errors
            await user.close()
            cluster.kill(0)
        finally:
            cluster.postgres.resume()
        assert _spooled(spool) == 3
        cluster.start(0)
        rows = await _rows_when(cluster, 10, 20)
        per_job = Counter(r["job_id"] for r in rows)
        assert set(per_job) == set(answered + during + more + late)
        assert max(per_job.values()) == 1
        await _check_totals(cluster, [user])
        assert _spooled(spool) == 0
    finally:
        await user.close()
