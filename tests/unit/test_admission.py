"""Admission: HTTP queries beyond a user's share wait in line instead of being refused."""

from __future__ import annotations

import asyncio

import pytest

from rentahal.admission import Admission
from rentahal.config import QueueSettings
from rentahal.errors import QueueFull

pytestmark = pytest.mark.timeout(10)


def admission(share: int = 2, waiting: int = 8, timeout_s: float = 5.0) -> Admission:
    """An admission with small limits."""
    return Admission(
        QueueSettings(
            max_queued_per_user=share,
            max_waiting_requests_per_user=waiting,
            queue_timeout=timeout_s,
        )
    )


async def test_requests_beyond_the_share_wait_in_line_and_get_slots_in_order() -> None:
    gate = admission(share=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(i: int) -> None:
        async with gate.share("u"):
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(request(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert order == [0, 1] and gate.in_flight("u") == 2 and gate.waiting("u") == 3
    async with gate.share("other", timeout_s=0.1):  # another user is not held up
        pass
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert gate.in_flight("u") == 0 and gate.waiting("u") == 0


async def test_a_wait_is_bounded_and_gives_its_place_up() -> None:
    gate = admission(share=1)
    async with gate.share("u"):
        with pytest.raises(QueueFull, match="kept your share busy"):
            async with gate.share("u", timeout_s=0.1):
                pass
        assert gate.waiting("u") == 0
    async with gate.share("u", timeout_s=0.1):  # the slot came back
        assert gate.in_flight("u") == 1


async def test_the_line_is_bounded() -> None:
    gate = admission(share=1, waiting=2)
    hold = asyncio.Event()

    async def request() -> None:
        async with gate.share("u"):
            await hold.wait()

    tasks = [asyncio.create_task(request()) for _ in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull, match="2 requests waiting"):
        async with gate.share("u"):
            pass
    hold.set()
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    gate = admission(share=1)
    async with gate.share("u"):
        waiter = asyncio.create_task(gate.share("u").__aenter__())
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.waiting("u") == 0
    assert gate.in_flight("u") == 0


async def test_streams_are_counted() -> None:
    gate = admission(share=3)
    async with gate.share("u", streamed=True), gate.share("u"):
        assert gate.streams("u") == 1 and gate.in_flight("u") == 2
    assert gate.streams("u") == 0
