"""Share counters: how much of a limited share each user or address holds, cluster-wide.

Each counter is a set of leases (one per holder, e.g. a job id) that expire
unless renewed, so the counts of a node that died heal on their own. Taking a
lease checks every cap and takes every lease in one atomic step: no
check-then-act race between coroutines or nodes. The memory implementation
serves the embedded single node; the Redis one is shared by every node of one
Redis (a Lua script, run atomically by Redis).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from redis.asyncio import Redis

from rentahal.bus.redis_client import bus_call, retrying_client

_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms)
  if not redis.call('ZSCORE', key, ARGV[1])
     and redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ms + tonumber(ARGV[2]), ARGV[1])
  if redis.call('PTTL', key) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', key, tonumber(ARGV[2]))
  end
end
return 0
"""

_RENEW = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', ms + tonumber(ARGV[1]), ARGV[i + 1])
  if redis.call('PTTL', key) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', key, tonumber(ARGV[1]))
  end
end
return 0
"""

_COUNT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. ms, '+inf')
"""


class ShareCounters(Protocol):
    """Leases per counter key, taken atomically against caps."""

    async def acquire(self, holder: str, caps: dict[str, int], lease_s: float) -> str | None:
        """Take a lease for ``holder`` on every key of ``caps``, unless one is at its cap.

        Answers None when taken (also when ``holder`` held them already), else
        the first key that is full (and nothing is taken).
        """
        ...

    async def renew(self, leases: list[tuple[str, str]], lease_s: float) -> None:
        """Extend the ``(key, holder)`` leases that still exist by ``lease_s``."""
        ...

    async def release(self, holder: str, keys: list[str]) -> None:
        """Drop ``holder``'s leases on ``keys``."""
        ...

    async def count(self, key: str) -> int:
        """Live leases on ``key``."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...


class MemoryCounters:
    """Share counters of a single node (the embedded deployment)."""

    def __init__(self) -> None:
        self._leases: dict[str, dict[str, float]] = {}

    def _live(self, key: str, now: float) -> dict[str, float]:
        leases = self._leases.get(key)
        if leases is None:
            return {}
        for holder in [h for h, until in leases.items() if until <= now]:
            del leases[holder]
        if not leases:
            del self._leases[key]
        return leases

    async def acquire(self, holder: str, caps: dict[str, int], lease_s: float) -> str | None:
        now = time.monotonic()
        for key, cap in caps.items():
            leases = self._live(key, now)
            if holder not in leases and len(leases) >= cap:
                return key
        for key in caps:
            self._leases.setdefault(key, {})[holder] = now + lease_s
        return None

    async def renew(self, leases: list[tuple[str, str]], lease_s: float) -> None:
        now = time.monotonic()
        for key, holder in leases:
            held = self._live(key, now)
            if holder in held:
                held[holder] = now + lease_s

    async def release(self, holder: str, keys: list[str]) -> None:
        for key in keys:
            leases = self._leases.get(key)
            if leases is not None:
                leases.pop(holder, None)
                if not leases:
                    del self._leases[key]

    async def count(self, key: str) -> int:
        return len(self._live(key, time.monotonic()))

    async def close(self) -> None:
        return None


class RedisCounters:
    """Share counters shared by every node of one Redis."""

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        self._redis: Redis = retrying_client(url, connect_timeout_s)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._count = self._redis.register_script(_COUNT)

    async def _do(self, what: str, coro: Any) -> Any:
        return await bus_call(what, coro)

    async def acquire(self, holder: str, caps: dict[str, int], lease_s: float) -> str | None:
        names = list(caps)
        full = await self._do(
            "share acquire",
            self._acquire(
                keys=names, args=[holder, int(lease_s * 1000), *(caps[k] for k in names)]
            ),
        )
        return names[int(full) - 1] if int(full) else None

    async def renew(self, leases: list[tuple[str, str]], lease_s: float) -> None:
        if not leases:
            return
        await self._do(
            "share renew",
            self._renew(
                keys=[k for k, _h in leases], args=[int(lease_s * 1000), *(h for _k, h in leases)]
            ),
        )

    async def release(self, holder: str, keys: list[str]) -> None:
        if not keys:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrem(key, holder)
        await self._do("share release", pipe.execute())

    async def count(self, key: str) -> int:
        return int(await self._do("share count", self._count(keys=[key])))

    async def close(self) -> None:
        await self._redis.aclose()
