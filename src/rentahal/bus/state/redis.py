"""Cluster state shared by every node of one Redis."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from rentahal.bus import keys
from rentahal.bus.link import RedisLink
from rentahal.bus.redis_client import bus_call, call_retry, retrying_client
from rentahal.bus.state.base import MAILBOX_LENGTH, MAILBOX_TTL_S

_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""

_LEAD = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class RedisState:
    """State shared by every node of one Redis."""

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        self._redis: Redis = retrying_client(url, connect_timeout_s)
        # Slot leases and delivery marks, one or two per job, over the pipelined link.
        self._link = RedisLink(
            url,
            connect_timeout_s=connect_timeout_s,
            reply_timeout_s=connect_timeout_s,
            retry=call_retry(),
        )
        self._acquire = self._link.register(self._redis.register_script(_ACQUIRE))
        self._lead = self._link.register(self._redis.register_script(_LEAD))

    async def close(self) -> None:
        await self._link.close()
        await self._redis.aclose()

    async def _do(self, what: str, coro: Any) -> Any:
        return await bus_call(what, coro)

    async def acquire_slot(self, worker: str, cap: int, holder: str, lease_s: float) -> bool:
        got = await self._do(
            "acquire_slot",
            self._acquire(keys=[keys.slots_key(worker)], args=[cap, int(lease_s * 1000), holder]),
        )
        return bool(got)

    async def release_slot(self, worker: str, holder: str) -> None:
        await self._do("release_slot", self._link.call("ZREM", keys.slots_key(worker), holder))

    async def try_lead(self, role: str, node_id: str, ttl_s: float) -> bool:
        got = await self._do(
            "try_lead", self._lead(keys=[keys.leader_key(role)], args=[node_id, int(ttl_s * 1000)])
        )
        return bool(got)

    async def post_result(
        self, user_guid: str, result: dict[str, Any], *, finished: str | None = None
    ) -> None:
        key = keys.mailbox_key(user_guid)
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(key, orjson.dumps(result))
        pipe.ltrim(key, -MAILBOX_LENGTH, -1)
        pipe.expire(key, MAILBOX_TTL_S)
        if finished is not None:
            pipe.hdel(keys.running_key(), finished)
        await self._do("post_result", pipe.execute())

    async def undelivered(self, user_guid: str) -> list[dict[str, Any]]:
        raw = await self._do("mailbox", self._redis.lrange(keys.mailbox_key(user_guid), 0, -1))
        results = [orjson.loads(r) for r in raw]
        if not results:
            return []
        flags = await self._do(
            "delivered",
            self._redis.mget([keys.delivered_key(r["job_id"]) for r in results]),
        )
        return [r for r, flag in zip(results, flags, strict=True) if flag is None]

    async def mark_delivered(self, job_id: str) -> bool:
        got = await self._do(
            "mark_delivered",
            self._link.call("SET", keys.delivered_key(job_id), "1", "NX", "EX", MAILBOX_TTL_S),
        )
        return bool(got)

    async def set_running(self, job_id: str, node_id: str, user_guid: str) -> None:
        await self._do(
            "set_running", self._redis.hset(keys.running_key(), job_id, f"{node_id}|{user_guid}")
        )

    async def clear_running(self, job_id: str) -> None:
        await self._do("clear_running", self._redis.hdel(keys.running_key(), job_id))

    async def running(self, job_id: str) -> tuple[str, str] | None:
        value = await self._do("running", self._redis.hget(keys.running_key(), job_id))
        if value is None:
            return None
        node, _, guid = str(value).partition("|")
        return node, guid

    async def running_count(self) -> int:
        return int(await self._do("running_count", self._redis.hlen(keys.running_key())))
