"""Admission counting, concurrency limit and latency; chat splitting helpers."""

from __future__ import annotations

import asyncio
import time

import pytest

from rentahal.worker.errors import InputError
from rentahal.worker.gate import Gate
from rentahal.worker.routes._chat import Message, split_chunks, split_conversation


async def test_gate_counts_arrivals_before_the_semaphore() -> None:
    gate = Gate(latency_ms=50, max_concurrency=1)
    inside = 0
    most_inside = 0

    async def call() -> None:
        nonlocal inside, most_inside
        async with gate.admit():
            inside += 1
            most_inside = max(most_inside, inside)
            await asyncio.sleep(0)
            inside -= 1

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(3):
            group.create_task(call())
    assert time.monotonic() - started >= 0.15
    assert most_inside == 1
    assert gate.snapshot() == {"requests_total": 3, "in_flight": 0, "max_in_flight_seen": 3}


async def test_gate_without_limit_runs_calls_together() -> None:
    gate = Gate(latency_ms=100)

    async def call() -> None:
        async with gate.admit():
            pass

    started = time.monotonic()
    await asyncio.gather(*(call() for _ in range(5)))
    assert time.monotonic() - started < 0.4
    assert gate.max_in_flight_seen == 5


def test_split_chunks_joins_back() -> None:
    text = "one two  three four five six seven eight nine ten eleven"
    chunks = split_chunks(text, 4)
    assert len(chunks) >= 3
    assert "".join(chunks) == text
    assert split_chunks("") == [""]


def test_split_conversation_takes_the_last_user_message() -> None:
    conversation = split_conversation(
        [Message("system", "be brief"), Message("user", "hi", ["img"]), Message("assistant", "")]
    )
    assert conversation.prompt == "hi"
    assert conversation.images == ["img"]
    assert [turn.role for turn in conversation.history] == ["system"]
    with pytest.raises(InputError, match="no user message"):
        split_conversation([Message("system", "x")])
    with pytest.raises(InputError, match="empty"):
        split_conversation([Message("user", " ")])
