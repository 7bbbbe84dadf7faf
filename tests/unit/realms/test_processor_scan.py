"""The consume loop skips a deep backlog of jobs no free worker serves, in fair order."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from tests.support.servers import reference_worker

from rentahal.bus.memory import MemoryBus
from rentahal.config import load_settings
from rentahal.models import AIWorker, Job, Query, Result
from rentahal.realms.execution import QueryExecutor
from rentahal.realms.processor import QueryProcessor
from rentahal.realms.workers import WorkerRegistry

pytestmark = pytest.mark.timeout(30)


async def test_a_chat_job_behind_a_busy_backlog_runs_and_the_backlog_keeps_its_order() -> None:
    settings = load_settings(None, environ={})
    registry = WorkerRegistry(settings.workers)
    bus = MemoryBus()
    finished: dict[str, Result] = {}
    done = asyncio.Event()

    async def finish(job: Job, result: Result) -> None:
        finished[job.query.prompt] = result
        done.set()

    with reference_worker() as address:
        registry.add(AIWorker(name="chat", address=address, type="chat", max_concurrency=2))
        registry.add(
            AIWorker(
                name="img", address=address, type="imagine", protocol="a1111", max_concurrency=1
            )
        )
        held = registry.reserve_type("imagine")  # its only slot is busy: imagine jobs wait
        assert held is not None
        async with aiohttp.ClientSession() as client:
            processor = QueryProcessor(
                "$T", bus, registry, QueryExecutor(registry, client, settings), finish
            )
            for i in range(300):
                await bus.enqueue(
                    "$T",
                    Job(user_guid=f"u{i % 3}", query=Query(prompt=f"v{i}", query_type="imagine")),
                )
            waiting_before = [j.job_id for j in await bus.waiting("$T")]
            await bus.enqueue("$T", Job(user_guid="u9", query=Query(prompt="c", query_type="chat")))
            processor.start()
            try:
                await asyncio.wait_for(done.wait(), 10)
                assert finished["c"].status == "done"
                assert [j.job_id for j in await bus.waiting("$T")] == waiting_before

                done.clear()
                registry.release("img")  # the imagine slot frees: the first in fair order runs
                await asyncio.wait_for(done.wait(), 10)
                first = next(j for j in finished if j != "c")
                assert first == "v0"
                assert finished[first].status == "done"
            finally:
                await processor.stop()


async def test_a_job_waiting_for_the_worker_a_finished_job_frees_starts_before_it_is_recorded() -> (
    None
):
    settings = load_settings(None, environ={})
    registry = WorkerRegistry(settings.workers)
    bus = MemoryBus()
    running_at_finish: dict[str, list[str]] = {}
    done = asyncio.Event()
    processor: QueryProcessor

    async def finish(job: Job, result: Result) -> None:
        assert result.status == "done"
        running_at_finish[job.query.prompt] = [
            j.query.prompt for j in processor.running_jobs.values() if j.job_id != job.job_id
        ]
        if len(running_at_finish) == 3:
            done.set()

    with reference_worker() as address:
        registry.add(AIWorker(name="chat", address=address, type="chat", max_concurrency=1))
        async with aiohttp.ClientSession() as client:
            processor = QueryProcessor(
                "$T", bus, registry, QueryExecutor(registry, client, settings), finish
            )
            for prompt in ("a", "b", "c"):
                job = Job(user_guid="u", query=Query(prompt=prompt, query_type="chat"))
                await bus.enqueue("$T", job)
            processor.start()
            try:
                await asyncio.wait_for(done.wait(), 10)
            finally:
                await processor.stop()
    # The worker's one slot is never idle while a finished job is recorded: the next
    # job already runs then; the last job finds nothing waiting.
    assert running_at_finish == {"a": ["b"], "b": ["c"], "c": []}
