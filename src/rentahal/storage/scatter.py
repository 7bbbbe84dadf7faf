"""Scatter-gather over shards with a time limit: what answered, and who did not."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
GATHER_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Gathered(Generic[T]):
    """The answers per shard, and the shards that failed or ran out of time."""

    answers: dict[str, T] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


async def gather(
    calls: dict[str, Callable[[], Awaitable[T]]], timeout_s: float = GATHER_TIMEOUT_S
) -> Gathered[T]:
    """Run every call at once, each within ``timeout_s``; failures are listed, not raised."""
    names = list(calls)

    async def one(name: str) -> T:
        async with asyncio.timeout(timeout_s):
            return await calls[name]()

    results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
    out: Gathered[T] = Gathered()
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            logger.warning("shard %s did not answer a scatter-gather: %r", name, result)
            out.missing.append(name)
        else:
            out.answers[name] = result
    return out
