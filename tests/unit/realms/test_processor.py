"""QueryProcessor's heartbeat: a dead or stuck consume loop is restarted, a beating one not."""

from __future__ import annotations

import asyncio

import aiohttp

from rentahal.bus.base import JobFilter
from rentahal.bus.memory import MemoryBus
from rentahal.config import load_settings
from rentahal.models import Job, Query, Result
from rentahal.realms.execution import QueryExecutor
from rentahal.realms.processor import QueryProcessor
from rentahal.realms.workers import WorkerRegistry


class HangingBus(MemoryBus):
    """The memory bus, except that ``take`` never returns while ``hanging`` is set.

    It plays a consume loop stuck in a call that never comes back (a lost
    wake-up, a driver that hangs): the loop's task is alive but does nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hanging = False

    async def take(
        self, queue: str, *, accept: JobFilter | None = None, timeout_s: float = 1.0
    ) -> Job | None:
        if self.hanging:
            await asyncio.Event().wait()
        return await super().take(queue, accept=accept, timeout_s=timeout_s)


async def test_stuck_and_dead_loops_are_restarted_a_beating_one_is_not() -> None:
    settings = load_settings(None, environ={})
    registry = WorkerRegistry(settings.workers)
    bus = HangingBus()
    finished: list[Result] = []

    async def finish(_job: Job, result: Result) -> None:
        finished.append(result)

    async with aiohttp.ClientSession() as client:
        executor = QueryExecutor(registry, client, settings)
        processor = QueryProcessor("$T", bus, registry, executor, finish)
        processor.take_timeout_s = 0.05
        processor.start()
        try:
            await asyncio.sleep(0.4)
            assert not processor.stuck(0.3)
            assert not processor.revive(0.3)  # beating: left alone

            bus.hanging = True
            await asyncio.sleep(0.5)
            stale = processor._loop_task
            assert processor.alive and processor.stuck(0.3)  # alive, but silent
            bus.hanging = False
            assert processor.revive(0.3)
            await asyncio.sleep(0.1)
            assert stale is not None and stale.cancelled()
            assert processor.alive and not processor.stuck(0.3)

            # the new loop consumes: a job no worker can serve is failed at once
            await bus.enqueue("$T", Job(user_guid="u", query=Query(prompt="hi", query_type="chat")))
            await asyncio.sleep(0.2)
            assert [r.error for r in finished] == ["No chat worker is available"]

            dead = processor._loop_task
            assert dead is not None
            dead.cancel()
            await asyncio.sleep(0.05)
            assert not processor.alive
            assert processor.revive(0.3)
            assert processor.alive and processor._loop_task is not dead
        finally:
            await processor.stop()
