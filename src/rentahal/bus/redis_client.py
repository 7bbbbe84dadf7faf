"""The Redis client the cluster state and the share counters open, and their error rule."""

from __future__ import annotations

from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from rentahal.errors import BusError


def call_retry() -> Retry:
    """The retry policy of these clients: a fresh connection with back-off, about 3 s."""
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), 6)


def retrying_client(url: str, connect_timeout_s: float) -> Redis:
    """A client that retries a call on a fresh connection with back-off (about 3 s).

    A restarted Redis leaves dead connections in the pool; the callers' commands
    are idempotent, so repeating one is safe.
    """
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=connect_timeout_s,
        health_check_interval=30,
        retry=call_retry(),
        retry_on_error=[rexc.ConnectionError, rexc.TimeoutError],
    )


async def bus_call(what: str, coro: Any) -> Any:
    """Await a Redis call; a Redis or socket failure becomes a :class:`BusError`."""
    try:
        return await coro
    except (rexc.RedisError, OSError) as exc:
        raise BusError(f"redis {what} failed: {exc}") from exc
