"""The distributed bus: realm queues on Redis Streams, broadcasts on Redis pub/sub.

Queue layout (names in :mod:`rentahal.bus.keys`): one stream per queue whose
entries carry only a ``job_id``; the job JSON lives in the hash ``jobs_key``
(so a requeue can store the updated job) and ``job_index_key`` maps
``job_id -> entry id``. Every node reads through one consumer group; its
consumer name is the node id.

A job is in exactly one of these states, and every change between them is one
Redis command or one Lua script, so two nodes never both get it:

* **held** (waiting): pending, owned by the pseudo-consumer
  :data:`~rentahal.bus.keys.HELD_CONSUMER`. :meth:`RedisBus.enqueue` hands a
  new entry to held at once (``XREADGROUP >`` in the same script); jobs also
  land here when a node requeues them and when they are reclaimed from a dead
  node. Held jobs are offered in fair order (:mod:`rentahal.bus.fair`): the
  sorted set ``fair_order_key`` lists them by start tag, and every script that
  moves an entry into or out of held updates it in the same step. A requeued or
  reclaimed job keeps its tag, so it is back at its place (near the head).
  Held jobs are visible to :meth:`RedisBus.waiting` and removable from any
  node. (An entry left undelivered by an older version is filed by the repair
  pass that also re-files any held entry missing from the order.)
* **taken**: pending, owned by a node. A background task re-claims the node's
  taken entries every ``claim_idle_ms / 3`` to keep them fresh; entries idle
  longer than ``claim_idle_ms`` belong to a dead (or stuck) node and are moved
  to *held* by whichever node looks next (the ``XAUTOCLAIM`` idea, done in Lua
  so that held entries are skipped).

``ack`` deletes the entry and the job (``XACK`` + ``XDEL``). Delivery is
at-least-once: a job reclaimed from a node that was only slow runs twice, which
is why the ledger is idempotent per job and a result is marked delivered once
(``ClusterState.mark_delivered``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, NamedTuple, TypeVar

import orjson
from pydantic import ValidationError
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from rentahal.bus import keys
from rentahal.bus.base import JobFilter, JobReserver, MessageHandler
from rentahal.bus.fair import Weight, job_cost, unit_weight
from rentahal.bus.link import RedisLink, RedisSubscriber
from rentahal.errors import BusError
from rentahal.models import Job

logger = logging.getLogger(__name__)

T = TypeVar("T")

WAITING_CAP = 1000  # most jobs :meth:`RedisBus.waiting` returns and ``take`` scans when held
# ``take`` reads the fair order in pages: the first acceptable job is nearly always in
# the first one, and a long queue is not read (and parsed) whole on every look.
HEAD_PAGE = 16
# Parsed jobs no page reached kept for later looks (so this node fetches none of the
# jobs it queued itself): text-only ones (no image, no audio), at most this many, none
# older than ``KEEP_PARSED_S`` (a kept job that another node took or that was removed
# is never offered: the fair order no longer names it).
KEEP_PARSED = 1000
KEEP_PARSED_S = 600.0
# Most parsed jobs a take's first look names (see _FAIR_GRAB); more waiting jobs of
# this node than these ahead of the one to take mean a second round trip, not a loss.
GRAB_NAMED = 16
# Most jobs one look takes for a consumer that holds a worker for each beforehand
# (take_batch): a consume loop would otherwise wait one round trip per job.
GRAB_TAKES = 8
# How long a publish that only this node heard stands for "no other node listens".
ALONE_S = 1.0
_CONNECTION_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError)

# Start-time fair queuing (the rules of :mod:`rentahal.bus.fair`), shared by the
# scripts below: ``local F = fair_keys(i)`` names KEYS[i..i+3] as order, tags,
# finish, flows (see :func:`_fair_keys`). Waiting jobs are exactly the held
# entries; ``order`` lists them by (start tag, seq).
_FAIR_LIB = """
local function fair_keys(i)
  return {order = KEYS[i], tags = KEYS[i + 1], finish = KEYS[i + 2], flows = KEYS[i + 3]}
end
local function fair_num(x) return string.format('%.17g', x) end
local function fair_tag(F, job_id)
  local t = redis.call('HGET', F.tags, job_id)
  if not t then return nil end
  local s, c, q, f = string.match(t, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return {start = tonumber(s), cost = tonumber(c), seq = q, flow = f}
end
local function entry_job(stream, id)
  local r = redis.call('XRANGE', stream, id, id)
  if #r == 0 then return nil end
  local f = r[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'job_id' then return f[i + 1] end
  end
  return nil
end
local function flow_of(jobs, job_id)
  local body = redis.call('HGET', jobs, job_id)
  if not body then return nil end
  local ok, job = pcall(cjson.decode, body)
  if ok and type(job) == 'table' and type(job['user_guid']) == 'string' then
    return job['user_guid']
  end
  return ''
end
local function fair_stamp(F, job_id, flow, cost)
  local clock = tonumber(redis.call('HGET', F.flows, 'clock') or '0')
  local last = tonumber(redis.call('ZSCORE', F.finish, flow) or '0')
  local start = math.max(clock, last)
  local seq = string.format('%015d', redis.call('HINCRBY', F.flows, 'seq', 1))
  redis.call('ZADD', F.finish, fair_num(start + cost), flow)
  redis.call('HSET', F.tags, job_id,
    fair_num(start) .. '|' .. fair_num(cost) .. '|' .. seq .. '|' .. flow)
  redis.call('ZADD', F.order, fair_num(start), seq .. ':' .. job_id)
  redis.call('HINCRBY', F.flows, 'n:' .. flow, 1)
  return seq .. ':' .. job_id
end
-- The job waits (again) with its tag, or a new tag when it has none. True if filed now.
local function fair_file(F, jobs, job_id)
  local tag = fair_tag(F, job_id)
  if not tag then
    local flow = flow_of(jobs, job_id)
    if not flow then return false end
    fair_stamp(F, job_id, flow, 1)
    return true
  end
  if redis.call('ZADD', F.order, 'NX', fair_num(tag.start), tag.seq .. ':' .. job_id) == 0 then
    return false
  end
  redis.call('HINCRBY', F.flows, 'n:' .. tag.flow, 1)
  return true
end
-- The job stops waiting: taken (served: the clock moves to its start tag) or
-- cancelled (its user gets the virtual time back). False when it was not waiting.
local function fair_unfile(F, job_id, served)
  local tag = fair_tag(F, job_id)
  if not tag then return false end
  if redis.call('ZREM', F.order, tag.seq .. ':' .. job_id) == 0 then return false end
  local left = redis.call('HINCRBY', F.flows, 'n:' .. tag.flow, -1)
  if left <= 0 then redis.call('HDEL', F.flows, 'n:' .. tag.flow) end
  if served then
    local clock = tonumber(redis.call('HGET', F.flows, 'clock') or '0')
    local last = redis.call('ZRANGE', F.finish, -1, -1, 'WITHSCORES')
    if redis.call('ZCARD', F.order) == 0 and #last > 0 then
      -- Nothing waits: the clock moves on to the last finish tag, as an idle server's.
      redis.call('HSET', F.flows, 'clock', fair_num(math.max(clock, tag.start, tonumber(last[2]))))
      redis.call('DEL', F.finish)
    elseif tag.start > clock then
      redis.call('HSET', F.flows, 'clock', fair_num(tag.start))
      redis.call('ZREMRANGEBYSCORE', F.finish, '-inf', fair_num(tag.start))
    end
  elseif left <= 0 then
    redis.call('ZREM', F.finish, tag.flow)
  elseif tonumber(redis.call('ZSCORE', F.finish, tag.flow) or '-1') == tag.start + tag.cost then
    redis.call('ZADD', F.finish, fair_num(tag.start), tag.flow)
  end
  return true
end
local function fair_forget(F, job_id)
  fair_unfile(F, job_id, false)
  redis.call('HDEL', F.tags, job_id)
end
"""

# Add the entry and hand it to held at once (every waiting job is held), with
# its fair tag; legacy undelivered entries found on the way are filed too.
# Answers the job's 1-based place in the fair order.
# KEYS: stream, index, jobs, fair x4, wake channel.
# ARGV: group, job_id, job JSON, held, user, cost, wake message.
_ENQUEUE_LIB = """
local function enqueue()
  local F = fair_keys(4)
  redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  fair_forget(F, ARGV[2])
  local id = redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], id)
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  local member = nil
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[4], 'STREAMS', KEYS[1], '>')
  if got then
    for _, e in ipairs(got[1][2]) do
      if e[1] == id then
        member = fair_stamp(F, ARGV[2], ARGV[5], tonumber(ARGV[6]))
      else
        local job_id = entry_job(KEYS[1], e[1])
        if job_id then fair_file(F, KEYS[3], job_id) end
      end
    end
  end
  redis.call('PUBLISH', KEYS[8], ARGV[7])
  if not member then return 0 end
  return (redis.call('ZRANK', F.order, member) or -1) + 1
end
"""
_ENQUEUE = _FAIR_LIB + _ENQUEUE_LIB + "return enqueue()\n"

# A new job in one step: the depth check (waiting jobs of every queue plus the
# running set against ``max depth``), the share leases (as bus/counters.py's
# acquire: every cap checked, then every lease taken) and the enqueue.
# Answers {0, depth with the job, place} or {-1, depth} (queue full) or {-2, i}
# (share key i full); nothing is changed unless it answers 0.
# KEYS: as _ENQUEUE (8), running, n fair orders (depth), m share keys.
# ARGV: as _ENQUEUE (7), max depth, n, lease ms, m, m caps.
_SUBMIT = (
    _FAIR_LIB
    + _ENQUEUE_LIB
    + """
local nq, ns = tonumber(ARGV[9]), tonumber(ARGV[11])
local depth = redis.call('HLEN', KEYS[9])
for i = 10, 9 + nq do depth = depth + redis.call('ZCARD', KEYS[i]) end
if depth >= tonumber(ARGV[8]) then return {-1, depth} end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = tonumber(ARGV[10])
for j = 1, ns do
  local key = KEYS[9 + nq + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms)
  if not redis.call('ZSCORE', key, ARGV[2])
     and redis.call('ZCARD', key) >= tonumber(ARGV[11 + j]) then
    return {-2, j}
  end
end
for j = 1, ns do
  local key = KEYS[9 + nq + j]
  redis.call('ZADD', key, ms + lease, ARGV[2])
  if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, lease) end
end
return {0, depth + 1, enqueue()}
"""
)

# Hand a pending entry from one consumer to another, only if ``from`` owns it;
# a job handed to held waits again at its place in the fair order (and is not
# running any more).
# KEYS: stream, jobs, fair x4, wake channel, running.
# ARGV: group, entry id, from, to, job_id, new job JSON or '', held, wake message.
_MOVE = (
    _FAIR_LIB
    + """
local F = fair_keys(3)
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, ARGV[2], 'JUSTID')
local job_id = ARGV[5]
if job_id == '' then job_id = entry_job(KEYS[1], ARGV[2]) end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
  redis.call('HINCRBY', KEYS[2], 'rev:' .. ARGV[5], 1)
end
if job_id then
  if ARGV[4] == ARGV[7] then
    fair_file(F, KEYS[2], job_id)
    redis.call('HDEL', KEYS[8], job_id)
    redis.call('PUBLISH', KEYS[7], ARGV[8])
  elseif ARGV[3] == ARGV[7] then
    fair_unfile(F, job_id, true)
  end
end
return 1
"""
)

# Reset the idle time of this node's entries; answer the ids it no longer owns.
# KEYS: stream. ARGV: group, consumer, entry ids...
_HEARTBEAT = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 or p[1][2] ~= ARGV[2] then
    table.insert(lost, ARGV[i])
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return lost
"""

# Move entries idle longer than min_idle from any real consumer to held; drop
# consumers that own nothing and were idle for forget_ms. Moved jobs wait again
# at their place in the fair order.
# KEYS: stream, jobs, fair x4, wake channel.
# ARGV: group, held, min_idle_ms, count, forget_ms, wake message.
_RECLAIM = (
    _FAIR_LIB
    + """
local F = fair_keys(3)
local moved = {}
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then return moved end
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  local name = info['name']
  if name ~= ARGV[2] then
    if tonumber(info['pending']) > 0 then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', tonumber(ARGV[3]),
        '-', '+', tonumber(ARGV[4]), name)
      for _, e in ipairs(p) do
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e[1], 'JUSTID')
        table.insert(moved, e[1])
        local job_id = entry_job(KEYS[1], e[1])
        if job_id then fair_file(F, KEYS[2], job_id) end
      end
    elseif tonumber(info['idle']) > tonumber(ARGV[5]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    end
  end
end
if #moved > 0 then redis.call('PUBLISH', KEYS[7], ARGV[6]) end
return moved
"""
)

# Cancel a waiting (new or held) job; nil when it is taken or unknown.
# KEYS: stream, index, jobs, fair x4. ARGV: group, job_id, held.
_REMOVE = (
    _FAIR_LIB
    + """
local F = fair_keys(4)
local id = redis.call('HGET', KEYS[2], ARGV[2])
if not id then return false end
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
if p.err then p = {} end
if #p > 0 then
  if p[1][2] ~= ARGV[3] then return false end
  redis.call('XACK', KEYS[1], ARGV[1], id)
elseif #redis.call('XRANGE', KEYS[1], id, id) == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2], 'rev:' .. ARGV[2])
  fair_forget(F, ARGV[2])
  return false
end
fair_forget(F, ARGV[2])
redis.call('XDEL', KEYS[1], id)
local body = redis.call('HGET', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2], 'rev:' .. ARGV[2])
return body
"""
)

# Finish a job: forget its entry and, if the index still points there, the job;
# it leaves the running set.
# KEYS: stream, index, jobs, fair x4, running. ARGV: group, job_id, entry id or ''.
_ACK = (
    _FAIR_LIB
    + """
local F = fair_keys(4)
redis.call('HDEL', KEYS[8], ARGV[2])
local id = ARGV[3]
if id == '' then
  id = redis.call('HGET', KEYS[2], ARGV[2])
  if not id then return 0 end
end
redis.pcall('XACK', KEYS[1], ARGV[1], id)
local n = redis.call('XDEL', KEYS[1], id)
if redis.call('HGET', KEYS[2], ARGV[2]) == id then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2], 'rev:' .. ARGV[2])
  fair_forget(F, ARGV[2])
end
return n
"""
)

# Finish a job in one step: keep its result in the user's mailbox, clear it
# from the running set, forget its entry (as _ACK) and publish the result. One
# script, so the result is kept no later than the job leaves queue and running set.
# The job id's leases on the share counters go too (the node that queued it finishes it).
# KEYS: stream, index, jobs, fair x4, mailbox, running, results channel, share keys.
# ARGV: group, job_id, entry id or '', result JSON, mailbox length, mailbox ttl s.
_FINISH = (
    _FAIR_LIB
    + """
local F = fair_keys(4)
redis.call('RPUSH', KEYS[8], ARGV[4])
redis.call('LTRIM', KEYS[8], -tonumber(ARGV[5]), -1)
redis.call('EXPIRE', KEYS[8], tonumber(ARGV[6]))
redis.call('HDEL', KEYS[9], ARGV[2])
local id = ARGV[3]
if id == '' then id = redis.call('HGET', KEYS[2], ARGV[2]) or '' end
if id ~= '' then
  redis.pcall('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
  if redis.call('HGET', KEYS[2], ARGV[2]) == id then
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('HDEL', KEYS[3], ARGV[2], 'rev:' .. ARGV[2])
    fair_forget(F, ARGV[2])
  end
end
for i = 11, #KEYS do redis.call('ZREM', KEYS[i], ARGV[2]) end
return redis.call('PUBLISH', KEYS[10], ARGV[4])
"""
)

# ``count`` waiting jobs from ``first`` in fair order, appended to ``out`` as job_id,
# entry id, revision, ...: ``take`` fetches only bodies it has not parsed yet (jobs may
# carry large images).
_HEAD_LIB = """
local function head_page(out, order, index, jobs, first, count)
  for _, m in ipairs(redis.call('ZRANGE', order, first, first + count - 1)) do
    local job_id = string.match(m, '^[^:]*:(.*)$')
    table.insert(out, job_id)
    table.insert(out, redis.call('HGET', index, job_id) or '')
    table.insert(out, redis.call('HGET', jobs, 'rev:' .. job_id) or '0')
  end
  return out
end
"""

# KEYS: fair order, index, jobs. ARGV: start, count.
_FAIR_HEAD = (
    _HEAD_LIB
    + "return head_page({}, KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]))\n"
)

# Take job_id's held entry ``id`` for a node, atomically against every other take
# and remove, and note it in the running set as the node's (``node|user``). A stale
# member of the fair order is dropped on the way. 1 when taken.
# KEYS: stream, index, fair x4, running. ARGV: group, held, node.
_TAKE_LIB = """
local function take_held(F, job_id, id)
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p.err then return 0 end
  if #p == 0 then
    if #redis.call('XRANGE', KEYS[1], id, id) == 0 then fair_forget(F, job_id) end
    return 0
  end
  local tag = fair_tag(F, job_id)
  fair_unfile(F, job_id, true)
  if p[1][2] ~= ARGV[2] then return 0 end
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, id, 'JUSTID')
  if tag then redis.call('HSET', KEYS[7], job_id, ARGV[3] .. '|' .. tag.flow) end
  return 1
end
"""

# Take a waiting job (a held entry) for a node; see take_held.
# KEYS: stream, index, fair x4, running. ARGV: group, held, node, job_id, entry id.
_FAIR_TAKE = (
    _FAIR_LIB
    + _TAKE_LIB
    + """
local F = fair_keys(3)
local id = redis.call('HGET', KEYS[2], ARGV[4])
if not id then
  fair_forget(F, ARGV[4])
  return 0
end
if id ~= ARGV[5] then return 0 end
return take_held(F, ARGV[4], id)
"""
)

# The first look of a take, and the take itself when it can be decided here: while
# the first waiting jobs are ones the node named (it has them parsed, at that
# revision, and would run them), up to ``limit`` of them are taken. Answers {1, ngone,
# gone..., jobs left waiting, then job_id, entry, revision of each taken}; else {0,
# ngone, gone..., then the first ``count`` waiting jobs as _FAIR_HEAD does}, for the
# node to choose from. ``gone`` are the named jobs not taken that no longer wait at
# that revision (another node took them, or they were changed or removed): the node
# forgets them, so it names (and holds a worker for) each such job at most once more.
# KEYS: stream, index, fair x4, running, jobs. ARGV: group, held, node, count, limit,
# then job_id, revision pairs.
_FAIR_GRAB = (
    _FAIR_LIB
    + _TAKE_LIB
    + _HEAD_LIB
    + """
local F = fair_keys(3)
local want = {}
for i = 6, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local count, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local took, done = {}, {}
for _, m in ipairs(redis.call('ZRANGE', F.order, 0, count - 1)) do
  local job_id = string.match(m, '^[^:]*:(.*)$')
  local rev = redis.call('HGET', KEYS[8], 'rev:' .. job_id) or '0'
  if want[job_id] ~= rev then break end
  local id = redis.call('HGET', KEYS[2], job_id)
  if not id then
    fair_forget(F, job_id)
  elseif take_held(F, job_id, id) == 1 then
    done[job_id] = true
    table.insert(took, job_id)
    table.insert(took, id)
    table.insert(took, rev)
    if #took >= 3 * limit then break end
  end
end
local gone = {}
for i = 6, #ARGV, 2 do
  local job_id = ARGV[i]
  if not done[job_id] then
    local tag = fair_tag(F, job_id)
    local rev = redis.call('HGET', KEYS[8], 'rev:' .. job_id) or '0'
    if not tag or rev ~= ARGV[i + 1]
       or not redis.call('ZSCORE', F.order, tag.seq .. ':' .. job_id) then
      table.insert(gone, job_id)
    end
  end
end
local out = {#took > 0 and 1 or 0, #gone}
for _, x in ipairs(gone) do table.insert(out, x) end
if #took > 0 then
  table.insert(out, redis.call('ZCARD', F.order))
  for _, x in ipairs(took) do table.insert(out, x) end
  return out
end
return head_page(out, F.order, KEYS[2], KEYS[8], 0, count)
"""
)

# File every held entry (and any undelivered one) that is missing from the fair
# order; answers how many were filed. Keeps the order whole whatever moved an
# entry to held.
# KEYS: stream, jobs, fair x4, wake channel. ARGV: group, held, cap, wake message.
_FAIR_REPAIR = (
    _FAIR_LIB
    + """
local F = fair_keys(3)
local filed = 0
local got = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]),
  'STREAMS', KEYS[1], '>')
if type(got) == 'table' and got.err then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
for _, e in ipairs(p) do
  local job_id = entry_job(KEYS[1], e[1])
  if job_id and fair_file(F, KEYS[2], job_id) then filed = filed + 1 end
end
if filed > 0 then redis.call('PUBLISH', KEYS[7], ARGV[4]) end
return filed
"""
)

# The first ``cap`` waiting jobs' JSON in fair order.
# KEYS: fair order, jobs. ARGV: cap.
_FAIR_WAITING = """
local out = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  local body = redis.call('HGET', KEYS[2], string.match(m, '^[^:]*:(.*)$'))
  if body then table.insert(out, body) end
end
return out
"""


def _fair_keys(queue: str) -> list[str]:
    """The keys a script's ``fair_keys(i)`` names, in its order."""
    return [
        keys.fair_order_key(queue),
        keys.fair_tags_key(queue),
        keys.fair_finish_key(queue),
        keys.fair_flows_key(queue),
    ]


QUEUE_FULL = "\x00queue"  # :attr:`Submitted.full` when the depth check refused


class Submitted(NamedTuple):
    """What :meth:`RedisBus.submit` did: ``full`` names what refused the job (the share
    key, or :data:`QUEUE_FULL`), None when it was queued; ``depth`` counts it, and
    ``position`` is its 1-based place in the fair order then."""

    full: str | None
    depth: int
    position: int


def _kept(
    seen: dict[tuple[str, str], Job], before: dict[tuple[str, str], Job]
) -> dict[tuple[str, str], Job]:
    """The parsed jobs to keep after a look: those of the pages read, then the earlier
    ones no page reached, within the bounds of :data:`KEEP_PARSED`."""
    oldest = time.time() - KEEP_PARSED_S
    for key, job in before.items():
        if len(seen) >= KEEP_PARSED:
            break
        query = job.query
        if key not in seen and not (query.image or query.audio) and job.submitted_at > oldest:
            seen[key] = job
    return seen


def _named(
    cached: dict[tuple[str, str], Job], accept: JobFilter | None, reserve: JobReserver | None
) -> tuple[list[str], list[Job]]:
    """The job_id, revision pairs a first look names (:data:`_FAIR_GRAB`), and the jobs
    ``reserve`` holds a worker for.

    Without ``reserve``: parsed jobs ``accept`` takes, at most :data:`GRAB_NAMED` (a
    :class:`KeyedJobFilter` is asked once per key); the look takes one. With it: the
    parsed jobs it could hold a worker for, at most :data:`GRAB_TAKES`; the look takes
    as many of them as stand first in the fair order.
    """
    named: list[str] = []
    held: list[Job] = []
    if reserve is not None:
        for looked, ((job_id, rev), job) in enumerate(cached.items()):
            if len(held) >= GRAB_TAKES or looked >= 4 * GRAB_TAKES:
                break
            if (accept is None or accept(job)) and reserve.reserve(job):
                named += (job_id, rev)
                held.append(job)
        return named, held
    key_of = getattr(accept, "scan_key", None)
    verdicts: dict[Hashable, bool] = {}
    for looked, ((job_id, rev), job) in enumerate(cached.items()):
        if len(named) >= 2 * GRAB_NAMED or looked >= 4 * GRAB_NAMED:
            break
        if accept is not None:
            key = key_of(job) if key_of is not None else None
            ok = verdicts.get(key) if key is not None else None
            if ok is None:
                ok = accept(job)
                if key is not None:
                    verdicts[key] = ok
            if not ok:
                continue
        named += (job_id, rev)
    return named, held


class _QueueState:
    """What this node knows of one queue.

    ``added`` counts the signs that jobs may have arrived (an enqueue, requeue or
    reclaim here, a wake-up message from another node, a pub/sub reconnect);
    ``empty_at`` is its value when a look found the queue empty (or took its only
    job). While they are equal the queue is known to be empty: ``take`` (woken by
    a freed worker slot, say) need not ask Redis, nor need :meth:`RedisBus.depth`
    or :meth:`RedisBus.waiting`. The ``block_ms`` poll always asks, so a lost
    wake-up message delays a job by at most that.
    """

    __slots__ = ("added", "empty_at", "ensured", "inflight", "last_reclaim", "parsed", "woken")

    def __init__(self) -> None:
        self.ensured = False
        self.inflight: dict[str, str] = {}  # job_id -> entry id of jobs this node took
        self.parsed: dict[tuple[str, str], Job] = {}  # (job_id, revision) -> waiting job
        self.last_reclaim = 0.0
        self.woken = asyncio.Event()
        self.added = 0
        self.empty_at = -1

    def arrived(self) -> None:
        """Jobs may have arrived: the next look asks Redis."""
        self.added += 1
        self.woken.set()

    @property
    def known_empty(self) -> bool:
        """The last look found nothing and nothing may have arrived since."""
        return self.empty_at == self.added


class RedisBus:
    """The :class:`~rentahal.bus.base.Bus` on Redis Streams and pub/sub, shared by all nodes.

    ``node_id`` names this node's consumer; ``claim_idle_ms`` is how long a taken
    job may go without its node's heartbeat before another node takes it over;
    ``block_ms`` bounds one ``XREADGROUP BLOCK`` and hence how late :meth:`wake`
    and jobs requeued by other nodes are noticed when a pub/sub wake-up is
    missed; ``retry_s`` is how long one operation retries a lost connection
    before raising :class:`BusError`. ``weight`` gives each job's user its share
    of a queue (:mod:`rentahal.bus.fair`); every node should use the same.
    """

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        group: str = "rentahal",
        claim_idle_ms: int = 30000,
        block_ms: int = 200,
        retry_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        weight: Weight = unit_weight,
    ) -> None:
        if not node_id or node_id == keys.HELD_CONSUMER:
            raise ValueError(f"invalid node id {node_id!r}")
        self.url = url
        self.node_id = node_id
        self.group = group
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = max(1, block_ms)
        self.retry_s = retry_s
        self._connect_timeout_s = connect_timeout_s
        self._weight = weight
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            # Longer than any BLOCK, so a blocked read is never cut short.
            socket_timeout=connect_timeout_s + self.block_ms / 1000,
            retry=Retry(NoBackoff(), 0),  # we retry ourselves, with back-off and a limit
            health_check_interval=30,
        )
        # The hot commands go over one pipelined connection (see rentahal.bus.link).
        self._link = RedisLink(
            url,
            connect_timeout_s=connect_timeout_s,
            reply_timeout_s=connect_timeout_s + self.block_ms / 1000,
        )
        self._scripts = {
            name: self._link.register(self._redis.register_script(src))
            for name, src in (
                ("enqueue", _ENQUEUE),
                ("submit", _SUBMIT),
                ("move", _MOVE),
                ("heartbeat", _HEARTBEAT),
                ("reclaim", _RECLAIM),
                ("remove", _REMOVE),
                ("ack", _ACK),
                ("finish", _FINISH),
                ("fair_head", _FAIR_HEAD),
                ("fair_take", _FAIR_TAKE),
                ("fair_grab", _FAIR_GRAB),
                ("fair_repair", _FAIR_REPAIR),
                ("fair_waiting", _FAIR_WAITING),
            )
        }
        self._queues: dict[str, _QueueState] = {}
        self._handlers: dict[str, list[MessageHandler]] = {keys.WAKE_CHANNEL: [self._on_wake]}
        self._listening = asyncio.Event()
        self._heard: dict[str, tuple[int, float]] = {}  # channel -> (receivers, loop time)
        self._tasks: list[asyncio.Task[None]] = []
        self._handing_back: set[asyncio.Future[None]] = set()
        self._closed = False

    # lifecycle

    async def start(self) -> None:
        """Check the connection, then start the pub/sub listener and the heartbeat."""
        await self._call(lambda: self._link.call("PING"), "ping")
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"redis-bus-listen:{self.node_id}"),
            asyncio.create_task(self._heartbeat(), name=f"redis-bus-heartbeat:{self.node_id}"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._listening.wait()

    async def close(self, *, hand_back: bool = True) -> None:
        """Stop the background tasks, hand taken jobs back (held), disconnect.

        ``hand_back=False`` leaves taken jobs pending, as a crashed node would:
        other nodes reclaim them after ``claim_idle_ms``.
        """
        if self._closed:
            return
        self._closed = True
        pending = set(self._tasks)
        for _ in range(20):  # a cancel that races a read timeout can be lost: cancel again
            if not pending:
                break
            for task in pending:
                task.cancel()
            done, pending = await asyncio.wait(pending, timeout=0.25)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("bus task %s failed", task.get_name(), exc_info=task.exception())
        if pending:
            logger.warning("%d bus task(s) did not stop", len(pending))
        self._tasks = []
        for q in self._queues.values():
            q.woken.set()
        if hand_back:
            for queue, q in self._queues.items():
                for job_id, entry in list(q.inflight.items()):
                    try:
                        async with asyncio.timeout(2.0):
                            await self._move(queue, entry, self.node_id, keys.HELD_CONSUMER)
                    except (BusError, TimeoutError, rexc.RedisError, OSError):
                        logger.warning("could not hand back job %s; it is reclaimed later", job_id)
                q.inflight.clear()
        await self._link.close()
        await self._redis.aclose()

    # plumbing

    async def _call(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``op``, retrying a lost connection with back-off for ``retry_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_s
        delay = 0.05
        while True:
            try:
                return await op()
            except _CONNECTION_ERRORS as exc:
                if self._closed or loop.time() + delay > deadline:
                    raise BusError(f"redis unreachable ({what}): {exc}") from exc
                logger.debug("redis %s failed (%s); retrying in %.2fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except rexc.RedisError as exc:
                raise BusError(f"redis {what} failed: {exc}") from exc

    def _state(self, queue: str) -> _QueueState:
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = _QueueState()
        return q

    async def _ensure(self, queue: str) -> None:
        """Create the group (and stream) of ``queue`` once, reclaiming this node's old entries.

        A node restarted under the same id finds its previous life's taken
        entries in its pending list; they go to held right away.
        """
        q = self._state(queue)
        if q.ensured:
            return
        stream = keys.stream_key(queue)
        try:
            await self._redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        old = await self._redis.xpending_range(
            stream, self.group, min="-", max="+", count=WAITING_CAP, consumername=self.node_id
        )
        for entry in old:
            entry_id = str(entry["message_id"])
            if entry_id not in q.inflight.values():
                await self._move(queue, entry_id, self.node_id, keys.HELD_CONSUMER)
        await self._repair(queue)
        q.ensured = True

    def _wake_message(self, queue: str) -> str:
        return orjson.dumps({"queue": queue, "node": self.node_id}).decode()

    async def _on_wake(self, message: dict[str, Any]) -> None:
        """A queue changed on some node: let this node's ``take`` calls look again.

        This node's own wake-ups are skipped: what it changed, it marked already.
        """
        if message.get("node") == self.node_id:
            return
        q = self._queues.get(str(message.get("queue")))
        if q is not None:
            q.arrived()

    async def _move(
        self, queue: str, entry: str, src: str, dst: str, job_id: str = "", body: str = ""
    ) -> bool:
        keys_ = [
            keys.stream_key(queue),
            keys.jobs_key(queue),
            *_fair_keys(queue),
            keys.channel_key(keys.WAKE_CHANNEL),
            keys.running_key(),
        ]
        args = [self.group, entry, src, dst, job_id, body, keys.HELD_CONSUMER]
        args.append(self._wake_message(queue))
        return bool(await self._scripts["move"](keys=keys_, args=args))

    async def _repair(self, queue: str) -> None:
        """File held (or undelivered) entries missing from the fair order."""
        filed = await self._scripts["fair_repair"](
            keys=[
                keys.stream_key(queue),
                keys.jobs_key(queue),
                *_fair_keys(queue),
                keys.channel_key(keys.WAKE_CHANNEL),
            ],
            args=[self.group, keys.HELD_CONSUMER, WAITING_CAP, self._wake_message(queue)],
        )
        if filed:
            self._state(queue).arrived()
            logger.warning(
                "filed %d waiting job(s) of %s missing from the fair order", filed, queue
            )

    def _parse(self, body: str) -> Job | None:
        try:
            return Job.model_validate_json(body)
        except ValidationError:
            logger.error("dropping an unreadable job: %.200s", body)
            return None

    # queues

    def _enqueue_call(self, queue: str, job: Job) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of :data:`_ENQUEUE` (which :data:`_SUBMIT` begins with)."""
        keys_ = [
            keys.stream_key(queue),
            keys.job_index_key(queue),
            keys.jobs_key(queue),
            *_fair_keys(queue),
            keys.channel_key(keys.WAKE_CHANNEL),
        ]
        args: list[str | int] = [
            self.group,
            job.job_id,
            job.model_dump_json(),
            keys.HELD_CONSUMER,
            job.user_guid,
            repr(job_cost(self._weight, job)),
            self._wake_message(queue),
        ]
        return keys_, args

    def _enqueued(self, queue: str, job: Job) -> None:
        q = self._state(queue)
        # This node need not fetch and parse the body again to take it (revision 0: new).
        q.parsed[job.job_id, "0"] = job
        q.arrived()

    async def enqueue(self, queue: str, job: Job) -> None:
        """Queue ``job`` at its user's place in the fair order, and wake every node."""
        keys_, args = self._enqueue_call(queue, job)
        await self._call(lambda: self._scripts["enqueue"](keys=keys_, args=args), "enqueue")
        self._enqueued(queue, job)

    async def submit(
        self,
        queue: str,
        job: Job,
        *,
        depth_of: list[str],
        running_key: str,
        max_depth: int,
        shares: dict[str, int],
        lease_s: float,
    ) -> Submitted:
        """Check the depth, take the share leases and enqueue ``job``, in one atomic step.

        The depth counts the waiting jobs of ``depth_of`` and the entries of the hash
        ``running_key``; ``shares`` maps each share counter to its cap, and the job id
        holds a lease of ``lease_s`` on each (as :class:`~rentahal.bus.counters.
        RedisCounters`). Nothing changes unless :attr:`Submitted.full` is None.
        """
        keys_, args = self._enqueue_call(queue, job)
        names = list(shares)
        keys_ += [running_key, *(keys.fair_order_key(q) for q in depth_of), *names]
        args += [max_depth, len(depth_of), int(lease_s * 1000), len(names)]
        args += [shares[k] for k in names]
        got = await self._call(lambda: self._scripts["submit"](keys=keys_, args=args), "submit")
        code, figure = int(got[0]), int(got[1])
        if code == -1:
            return Submitted(QUEUE_FULL, figure, 0)
        if code == -2:
            return Submitted(names[figure - 1], 0, 0)
        self._enqueued(queue, job)
        return Submitted(None, figure, int(got[2]))

    async def take(
        self, queue: str, *, accept: JobFilter | None = None, timeout_s: float = 1.0
    ) -> Job | None:
        """The first acceptable job in fair order, or ``None`` after ``timeout_s``
        (see :meth:`take_batch`)."""
        jobs = await self.take_batch(queue, accept=accept, timeout_s=timeout_s)
        return jobs[0] if jobs else None

    async def take_batch(
        self,
        queue: str,
        *,
        accept: JobFilter | None = None,
        reserve: JobReserver | None = None,
        timeout_s: float = 1.0,
    ) -> list[Job]:
        """The first acceptable job in fair order, and with ``reserve`` up to
        :data:`GRAB_TAKES` of them in one round trip ([] after ``timeout_s``).

        Several are taken only from the jobs this node parsed that ``reserve``
        held a worker for, while they stand first in the fair order (see
        :data:`_FAIR_GRAB`); the workers are then held again in fair order for the
        jobs taken only (:meth:`_hold_in_fair_order`), so a parsed job that another
        node took keeps no worker from them, and the look names it no more.

        A refused job keeps its place for the next ``take`` on any node. Between
        looks this waits for a wake-up (an enqueue, requeue or reclaim on any
        node, or :meth:`wake`), at most ``block_ms``. While Redis is unreachable
        this waits (retrying) and answers ``[]`` at the deadline, so a consume
        loop survives a Redis restart; other Redis errors raise :class:`BusError`.
        """
        q = self._state(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.05
        ask = False  # a look asks Redis unless the queue is known empty; every poll asks
        while not self._closed:
            q.woken.clear()
            try:
                jobs = await self._take_once(queue, q, accept, reserve, ask=ask)
                delay = 0.05
            except _CONNECTION_ERRORS as exc:
                q.ensured = False
                remaining = deadline - loop.time()
                logger.warning("redis unreachable while taking from %s: %s", queue, exc)
                if remaining <= 0:
                    return []
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)
                continue
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise BusError(f"redis take from {queue} failed: {exc}") from exc
                q.ensured = False  # Redis lost the group (restarted empty): create it again
                continue
            except rexc.RedisError as exc:
                raise BusError(f"redis take from {queue} failed: {exc}") from exc
            if jobs:
                return jobs
            remaining = deadline - loop.time()
            ask = False
            if q.woken.is_set():
                continue
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(min(self.block_ms / 1000, remaining)):
                    await q.woken.wait()
            except TimeoutError:
                ask = True  # the poll: catches a wake-up message that was lost
        return []

    async def _take_once(
        self,
        queue: str,
        q: _QueueState,
        accept: JobFilter | None,
        reserve: JobReserver | None,
        *,
        ask: bool = True,
    ) -> list[Job]:
        await self._ensure(queue)
        await self._maybe_reclaim(queue, q)
        if not ask and q.known_empty:
            return []
        return await self._take_fair(queue, q, accept, reserve)

    async def _maybe_reclaim(self, queue: str, q: _QueueState) -> None:
        # time.monotonic, not the loop's clock: Python 3.11's get_running_loop is a getpid call.
        now = time.monotonic()
        if now - q.last_reclaim < self.claim_idle_ms / 2000:
            return
        q.last_reclaim = now
        moved = await self._scripts["reclaim"](
            keys=[
                keys.stream_key(queue),
                keys.jobs_key(queue),
                *_fair_keys(queue),
                keys.channel_key(keys.WAKE_CHANNEL),
            ],
            args=[
                self.group,
                keys.HELD_CONSUMER,
                self.claim_idle_ms,
                WAITING_CAP,
                max(10 * self.claim_idle_ms, 60000),
                self._wake_message(queue),
            ],
        )
        if moved:
            q.arrived()
            logger.warning("reclaimed %d stale job(s) of %s", len(moved), queue)
        await self._repair(queue)

    async def _take_fair(
        self, queue: str, q: _QueueState, accept: JobFilter | None, reserve: JobReserver | None
    ) -> list[Job]:
        """Take the first acceptable waiting job, in fair order, reading it page by page.

        The first look takes the job in the same step when the first waiting jobs
        are ones this node has parsed (:data:`_FAIR_GRAB`), else it answers the page.
        """
        added = q.added  # before the look: what arrives meanwhile is not "known empty"
        cached, seen = q.parsed, dict[tuple[str, str], Job]()
        start, count = 0, HEAD_PAGE
        try:
            while start < WAITING_CAP:
                count = min(count, WAITING_CAP - start)
                if start == 0:
                    grabbed, head = await self._grab(queue, q, count, accept, reserve, cached, seen)
                    if grabbed is not None:
                        taken, left = grabbed
                        if left == 0:
                            q.empty_at = added  # it was the only waiting job
                        elif q.known_empty:
                            q.empty_at = -1  # jobs came without a sign
                        return taken
                else:
                    head = await self._head(queue, start, count, cached, seen)
                if not head:
                    if start == 0:
                        q.empty_at = added
                    return []
                if start == 0 and q.known_empty:
                    q.empty_at = -1  # jobs came without a sign (a lost wake-up message)
                job = await self._take_from(queue, q, accept, head, seen)
                if job is not None and start == 0 and len(head) == 1:
                    q.empty_at = added  # it was the only waiting job
                if job is not None:
                    return [job]
                if len(head) < count:
                    return []
                start, count = start + count, count * 4
            return []
        finally:
            q.parsed = _kept(seen, q.parsed)

    async def _grab(
        self,
        queue: str,
        q: _QueueState,
        count: int,
        accept: JobFilter | None,
        reserve: JobReserver | None,
        cached: dict[tuple[str, str], Job],
        seen: dict[tuple[str, str], Job],
    ) -> tuple[tuple[list[Job], int] | None, list[tuple[str, str, str]]]:
        """The first look (:data:`_FAIR_GRAB`): ((jobs, jobs left waiting), []) when it took
        some, else (None, the first ``count`` waiting jobs as :meth:`_head` answers)."""
        keys_ = [
            keys.stream_key(queue),
            keys.job_index_key(queue),
            *_fair_keys(queue),
            keys.running_key(),
            keys.jobs_key(queue),
        ]
        named, held = _named(cached, accept, reserve)
        limit = len(held) if held else 1
        args = [self.group, keys.HELD_CONSUMER, self.node_id, count, limit, *named]
        call = asyncio.ensure_future(self._scripts["fair_grab"](keys=keys_, args=args))
        try:
            flat = await asyncio.shield(call)
        except BaseException as exc:
            if reserve is not None:
                for job in held:
                    reserve.release(job)
            if isinstance(exc, asyncio.CancelledError):  # what it takes still goes back
                call.add_done_callback(functools.partial(self._grabbed_late, queue))
            raise
        ngone = int(flat[1])
        if ngone:
            revs = dict(zip(named[::2], named[1::2], strict=True))
            for job_id in flat[2 : 2 + ngone]:
                q.parsed.pop((str(job_id), revs.get(str(job_id), "")), None)
        rest = flat[2 + ngone :]
        taken: list[Job] = []
        if int(flat[0]) == 1:
            for job_id, entry, rev in zip(*[iter(rest[1:])] * 3, strict=True):
                key = (str(job_id), str(rev))
                q.inflight[key[0]] = str(entry)
                found = cached.pop(key, None)  # cached is q.parsed during a look
                if found is None:  # only named jobs are taken, and they were parsed
                    self._hand_back(queue, q, key[0], str(entry))
                    continue
                taken.append(found)
        if reserve is not None:
            taken = self._hold_in_fair_order(queue, q, reserve, held, taken)
        if taken:
            return (taken, int(rest[0])), []
        return None, await self._bodies(queue, rest, cached, seen)

    def _hold_in_fair_order(
        self, queue: str, q: _QueueState, reserve: JobReserver, held: list[Job], taken: list[Job]
    ) -> list[Job]:
        """The taken jobs, each with its worker held as if held in fair order.

        Workers were held in parse order, for named jobs some of which the look did
        not take (another node had): when the holds are not exactly the taken jobs
        in fair order, all are given back and held again in fair order, so no taken
        job's worker went to a job that was not taken. A taken job (past the first)
        that then finds no worker is handed back to wait at its place."""
        if [job.job_id for job in held] == [job.job_id for job in taken]:
            return taken
        for job in held:
            reserve.release(job)
        kept: list[Job] = []
        for job in taken:
            if reserve.reserve(job) or not kept:
                kept.append(job)
            else:
                self._hand_back(queue, q, job.job_id, q.inflight[job.job_id])
        return kept

    def _grabbed_late(self, queue: str, call: asyncio.Future[Any]) -> None:
        """A first look whose caller was cancelled took jobs: hand them back to held."""
        if call.cancelled() or call.exception() is not None or int(call.result()[0]) != 1:
            return
        q = self._state(queue)
        flat = call.result()
        taken = flat[3 + int(flat[1]) :]
        for job_id, entry, _rev in zip(*[iter(taken)] * 3, strict=True):
            self._hand_back(queue, q, str(job_id), str(entry))

    def _hand_back(self, queue: str, q: _QueueState, job_id: str, entry: str) -> None:
        q.inflight[job_id] = entry  # handed back on close if this does not run first

        async def _back() -> None:
            try:
                await self._move(queue, entry, self.node_id, keys.HELD_CONSUMER)
                q.inflight.pop(job_id, None)
            except (BusError, rexc.RedisError, OSError) as exc:
                logger.warning("could not hand back job %s (%s); reclaimed later", job_id, exc)

        task = asyncio.ensure_future(_back())
        self._handing_back.add(task)
        task.add_done_callback(self._handing_back.discard)

    async def _head(
        self,
        queue: str,
        start: int,
        count: int,
        cached: dict[tuple[str, str], Job],
        seen: dict[tuple[str, str], Job],
    ) -> list[tuple[str, str, str]]:
        """``count`` waiting jobs from ``start`` as (job_id, entry, revision); their bodies
        go into ``seen``, parsed before (``cached``) or fetched now."""
        flat = await self._scripts["fair_head"](
            keys=[keys.fair_order_key(queue), keys.job_index_key(queue), keys.jobs_key(queue)],
            args=[start, count],
        )
        return await self._bodies(queue, flat, cached, seen)

    async def _bodies(
        self,
        queue: str,
        flat: list[Any],
        cached: dict[tuple[str, str], Job],
        seen: dict[tuple[str, str], Job],
    ) -> list[tuple[str, str, str]]:
        """The (job_id, entry, revision) triples of ``flat``, their jobs put in ``seen``."""
        head = [(str(j), str(e), str(r)) for j, e, r in zip(*[iter(flat)] * 3, strict=True)]
        missing = []
        for job_id, entry, rev in head:
            known = cached.get((job_id, rev))
            if known is not None:
                seen[job_id, rev] = known
            elif entry:
                missing.append((job_id, rev))
        if missing:
            bodies: list[Any] = await self._link.call(
                "HMGET", keys.jobs_key(queue), *(j for j, _r in missing)
            )
            for (job_id, rev), body in zip(missing, bodies, strict=True):
                job = self._parse(body) if body else None
                if job is not None:
                    seen[job_id, rev] = job
        return head

    async def _take_from(
        self,
        queue: str,
        q: _QueueState,
        accept: JobFilter | None,
        head: list[tuple[str, str, str]],
        parsed: dict[tuple[str, str], Job],
    ) -> Job | None:
        for job_id, entry, rev in head:
            job = parsed.get((job_id, rev))
            if accept is not None and job is not None and not accept(job):
                continue
            # Another node may win the race for this job: then try the next one.
            # Unreadable or stale members are passed to the script, which drops them.
            if not await self._claim(queue, q, job_id, entry):
                continue
            # Taken: never offered from the cache again.
            parsed.pop((job_id, rev), None)
            q.parsed.pop((job_id, rev), None)
            if job is not None:
                return job
            logger.error("dropping unreadable job %s of %s", job_id, queue)
            await self.ack(queue, job_id)
        return None

    async def _claim(self, queue: str, q: _QueueState, job_id: str, entry: str) -> bool:
        q.inflight[job_id] = entry  # from here a cancellation must hand the entry back
        try:
            taken = await self._scripts["fair_take"](
                keys=[
                    keys.stream_key(queue),
                    keys.job_index_key(queue),
                    *_fair_keys(queue),
                    keys.running_key(),
                ],
                args=[self.group, keys.HELD_CONSUMER, self.node_id, job_id, entry],
            )
        except BaseException:
            q.inflight.pop(job_id, None)
            raise
        if not taken:
            q.inflight.pop(job_id, None)
        return bool(taken)

    def wake(self, queue: str) -> None:
        """Make waiting :meth:`take` calls look again (within ``block_ms``)."""
        self._state(queue).woken.set()

    async def ack(self, queue: str, job_id: str) -> None:
        """The job is finished: delete its entry and its JSON (``XACK`` + ``XDEL``); it
        leaves the running set."""
        entry = self._state(queue).inflight.pop(job_id, "")
        keys_ = [
            keys.stream_key(queue),
            keys.job_index_key(queue),
            keys.jobs_key(queue),
            *_fair_keys(queue),
            keys.running_key(),
        ]
        args = [self.group, job_id, entry]
        await self._call(lambda: self._scripts["ack"](keys=keys_, args=args), "ack")

    async def finish(
        self,
        queue: str,
        job_id: str,
        result: dict[str, Any],
        *,
        mailbox: tuple[str, int, int],
        running_key: str,
        channel: str,
        shares: list[str] | None = None,
    ) -> None:
        """Keep, clear, ack and publish a finished job's result in one atomic step.

        ``mailbox`` is (key, length, ttl s) of the user's mailbox; the job leaves
        ``running_key``'s hash and ``queue`` and the result goes out on ``channel``,
        as :meth:`ack` + :meth:`publish` with the mailbox kept first would; the job
        id's leases on the ``shares`` counters are dropped. Nothing
        is done when it raises :class:`BusError`: the caller may take the steps one
        by one.
        """
        q = self._state(queue)
        entry = q.inflight.get(job_id, "")
        keys_ = [
            keys.stream_key(queue),
            keys.job_index_key(queue),
            keys.jobs_key(queue),
            *_fair_keys(queue),
            mailbox[0],
            running_key,
            keys.channel_key(channel),
            *(shares or ()),
        ]
        data = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS)
        args: list[str | bytes | int] = [self.group, job_id, entry, data, mailbox[1], mailbox[2]]
        await self._call(lambda: self._scripts["finish"](keys=keys_, args=args), "finish")
        q.inflight.pop(job_id, None)

    async def requeue(self, queue: str, job: Job) -> None:
        """Hand a taken job back, at its place in the fair order, with ``job``'s new state.

        A job this node did not take (or lost to a reclaim) is appended instead,
        unless another node owns it now.
        """
        q = self._state(queue)
        entry = q.inflight.pop(job.job_id, None)
        body = job.model_dump_json()
        if entry is not None:

            async def _hold() -> bool:
                return await self._move(
                    queue, entry, self.node_id, keys.HELD_CONSUMER, job.job_id, body
                )

            if await self._call(_hold, "requeue"):
                q.arrived()
                return
            logger.warning("job %s was reclaimed by another node; not requeued", job.job_id)
            return
        await self.enqueue(queue, job)

    async def remove(self, queue: str, job_id: str) -> Job | None:
        """Take a waiting job out, atomically against any node's ``take``."""
        keys_ = [
            keys.stream_key(queue),
            keys.job_index_key(queue),
            keys.jobs_key(queue),
            *_fair_keys(queue),
        ]
        args = [self.group, job_id, keys.HELD_CONSUMER]
        body = await self._call(lambda: self._scripts["remove"](keys=keys_, args=args), "remove")
        return self._parse(body) if body else None

    async def waiting(self, queue: str) -> list[Job]:
        """The waiting jobs in the fair order ``take`` offers them (at most :data:`WAITING_CAP`)."""
        q = self._queues.get(queue)
        if q is not None and q.known_empty:
            return []
        keys_ = [keys.fair_order_key(queue), keys.jobs_key(queue)]
        bodies = await self._call(
            lambda: self._scripts["fair_waiting"](keys=keys_, args=[WAITING_CAP]), "waiting"
        )
        jobs = (self._parse(body) for body in bodies)
        return [job for job in jobs if job is not None]

    async def depth(self, queue: str) -> int:
        """How many jobs wait in ``queue``."""
        q = self._queues.get(queue)
        if q is not None and q.known_empty:
            return 0
        key = keys.fair_order_key(queue)
        return int(await self._call(lambda: self._link.call("ZCARD", key), "depth"))

    async def total_depth(self, queues: list[str], running_key: str) -> int:
        """Waiting jobs of ``queues`` plus the entries of the hash ``running_key``, in one
        round trip (queues known to be empty are not asked)."""
        asked = [q for q in queues if not (q in self._queues and self._queues[q].known_empty)]

        async def _counts() -> list[Any]:
            link = self._link
            calls = [link.call("ZCARD", keys.fair_order_key(queue)) for queue in asked]
            return await asyncio.gather(*calls, link.call("HLEN", running_key))

        return sum(int(n) for n in await self._call(_counts, "depth"))

    async def holding(self, queue: str, job_ids: list[str]) -> set[str]:
        """The ids among ``job_ids`` that ``queue`` holds (waiting or taken, not yet acked)."""
        if not job_ids:
            return set()
        key = keys.job_index_key(queue)
        found: list[Any] = await self._call(
            lambda: self._link.call("HMGET", key, *job_ids), "holding"
        )
        return {job_id for job_id, entry in zip(job_ids, found, strict=True) if entry is not None}

    async def _heartbeat(self) -> None:
        """Keep this node's taken entries fresh so no other node reclaims them."""
        interval_s = max(self.claim_idle_ms / 3000, 0.02)
        while not self._closed:
            await asyncio.sleep(interval_s)
            for queue, q in list(self._queues.items()):
                if not q.inflight:
                    continue
                try:
                    lost = await self._scripts["heartbeat"](
                        keys=[keys.stream_key(queue)],
                        args=[self.group, self.node_id, *q.inflight.values()],
                    )
                except rexc.RedisError as exc:
                    logger.warning("heartbeat of %s failed: %s", queue, exc)
                    continue
                for entry in lost:
                    for job_id, mine in list(q.inflight.items()):
                        if mine == entry:
                            logger.warning("job %s was taken over by another node", job_id)
                            del q.inflight[job_id]

    # pub/sub

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` (as JSON) to every subscriber of ``channel`` on every node."""
        data = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
        key = keys.channel_key(channel)
        heard = await self._call(lambda: self._link.call("PUBLISH", key, data), "publish")
        self._heard[channel] = (int(heard), asyncio.get_running_loop().time())

    def alone_on(self, channel: str) -> bool:
        """Whether the last publish on ``channel``, less than :data:`ALONE_S` ago, reached
        only this node's own subscriber (so a message only other nodes need can wait)."""
        heard, at = self._heard.get(channel, (2, 0.0))
        return heard <= 1 and asyncio.get_running_loop().time() - at < ALONE_S

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call ``handler`` for each message on ``channel``.

        Channels subscribed before :meth:`start` are listening when it returns;
        later ones within ``block_ms``-ish (the listener's next turn).
        """
        self._handlers.setdefault(channel, []).append(handler)

    async def _listen(self) -> None:
        """Own the pub/sub connection: (re)subscribe, dispatch, reconnect with back-off."""
        delay = 0.05
        while not self._closed:
            sub = RedisSubscriber(
                self.url,
                connect_timeout_s=self._connect_timeout_s,
                reply_timeout_s=self._connect_timeout_s,
            )
            subscribed: set[str] = set()
            try:
                await sub.connect()
                while not self._closed:
                    wanted = set(self._handlers) - subscribed
                    if wanted:
                        await sub.subscribe(*(keys.channel_key(c) for c in wanted))
                        subscribed |= wanted
                        if keys.WAKE_CHANNEL in wanted:  # wake-ups may have been missed
                            for q in self._queues.values():
                                q.arrived()
                    self._listening.set()
                    delay = 0.05
                    for channel, data in await sub.wait(self.block_ms / 1000):
                        await self._dispatch(channel, data)
            except _CONNECTION_ERRORS as exc:
                logger.warning("pub/sub connection lost (%s); reconnecting in %.2fs", exc, delay)
            finally:
                await sub.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _dispatch(self, key: str, data: str) -> None:
        channel = key.removeprefix(keys.channel_key(""))
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.error("dropping a non-JSON message on %s", channel)
            return
        for handler in list(self._handlers.get(channel, ())):
            try:
                await handler(message)
            except Exception:
                logger.exception("handler of channel %s failed", channel)


async def publish_once(url: str, channel: str, message: dict[str, Any]) -> None:
    """Publish one message to a bus channel from outside a node (the CLI), as RedisBus does."""
    client: Redis = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        await client.publish(
            keys.channel_key(channel), orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
        )
    except (rexc.RedisError, OSError) as exc:
        raise BusError(f"redis publish failed: {exc}") from exc
    finally:
        await client.aclose()
