"""Per-webhook lanes in Redis: fair dispatch, a per-webhook in-flight limit and a circuit breaker.

arq's queue is one due-time-ordered list: it has no per-key concurrency and no fairness, so one dead
endpoint's backlog delays everyone (DESIGN.md §8). Delivery attempts are therefore scheduled here, on
structures kept in arq's own Redis (all keys under the queue name):

``<q>:lane:<webhook>``      ZSET  attempts waiting for that webhook, scored by due time (ms)
``<q>:sched``               ZSET  webhooks with waiting attempts, scored by when they next deserve a turn
``<q>:inflight:<webhook>``  ZSET  attempts being made, scored by when their slot expires (ms)
``<q>:limits``              HASH  webhook -> its in-flight limit (rewritten by every enqueue)
``<q>:breaker:<webhook>``   HASH  ``failures`` (consecutive timeouts/connection errors), ``open`` (since, ms);
                            expires a day after its last unreachable attempt
``<q>:limited``             HASH  webhook -> when a claim last found it at its limit (why attempts are late)
``<q>:recording``           ZSET  attempts made whose outcome is being written to MongoDB, scored by expiry
``<q>:wake``                LIST  a token per enqueue or freed slot; idle dispatchers block on it
``<q>:gate:<webhook>:<resource>``   ZSET  PER_RESOURCE ordering: deliveries of one resource, scored by
                                   their sequence number (``X-Webhook-Sequence``)
``<q>:gatei:<webhook>:<resource>``  HASH  delivery -> ``<due_ms> <lane member>`` of its next attempt;
                                   ``@active`` -> the one delivery of the gate that is in the lane

A claim walks ``sched`` from its head: each webhook due for a turn gets up to ``min(free slots, quantum)``
of its due attempts, then goes to the back of the line (score = now), so a backlog of 100,000 costs every
other webhook one turn per round, not 100,000 (round-robin; Shreedhar and Varghese's DRR with equal
quanta). A webhook at its limit leaves the line until a slot is released, or until its oldest slot
expires: slots carry an expiry, so a killed worker cannot leak them. An open breaker lowers the limit to
one: a single probe at a time until one succeeds.

Ordered webhooks (``PER_RESOURCE``): a delivery that carries a sequence number enters its resource's gate
instead of the lane; only the gate's active delivery (the lowest sequence when the gate had none active)
is in the lane, with its retries going through the lane as usual. When it is final (succeeded, finally
failed, or stopped without an attempt), ``advance`` removes it and puts the next one in the lane, in one
script. Other resources of the same webhook have their own gates, so they are not held up.

MongoDB stays the source of truth: everything here is a cache that the sweeper rebuilds (``readd``),
so a FLUSHALL loses nothing. The scripts touch keys they compute from the queue name: fine on a single
Redis (with or without Sentinel), not meant for Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import orjson
from redis.asyncio import Redis

WAKE_TOKENS = 16  # enough to wake every dispatcher of a burst; the list never grows past this
# An attempt made but not yet recorded in MongoDB is left alone by the sweeper for this long (ms).
RECORDING_MS = 60_000
# A breaker is forgotten (closed) a day after its last unreachable attempt: a webhook with no attempts for
# that long is probed afresh, and the breaker of a webhook deleted with attempts in flight does not stay.
BREAKER_TTL_MS = 86_400_000


class Kind(Enum):
    """What the engine must load for an attempt."""

    NEW = "n"  # first attempt of a delivery not yet written: its event holds the plan
    STORED = "s"  # the delivery document exists (retries, manual runs)


@dataclass(frozen=True, slots=True)
class LaneItem:
    """One attempt to make. Encoded as the lane member ``<delivery>:<number>:<event>:<kind>``."""

    webhook_id: str
    delivery_id: str
    number: int
    event_id: str
    kind: Kind

    @property
    def member(self) -> str:
        return f"{self.delivery_id}:{self.number}:{self.event_id}:{self.kind.value}"

    @classmethod
    def parse(cls, webhook_id: str, member: str) -> LaneItem:
        delivery_id, number, event_id, kind = member.split(":")
        return cls(webhook_id, delivery_id, int(number), event_id, Kind(kind))


class LateReason(Enum):
    """Why an attempt started after its due time (shown in the delivery log)."""

    WEBHOOK_LIMIT = "WEBHOOK_LIMIT"  # its webhook had its in-flight limit of attempts running
    BREAKER_OPEN = "BREAKER_OPEN"  # its webhook's breaker was open: one probe at a time
    WORKER_BUSY = "WORKER_BUSY"  # every worker was busy


@dataclass(frozen=True, slots=True)
class Claimed:
    item: LaneItem
    due: datetime
    limited: bool  # its webhook was at its limit at some point after the attempt fell due
    breaker_open: bool
    attached: bytes | None = None  # NEW items: the value at ``attach`` + event id, read by the claim

    def late_reason(self, started: datetime, tolerance_ms: float) -> LateReason | None:
        if (started - self.due).total_seconds() * 1000 <= tolerance_ms:
            return None
        if self.breaker_open:
            return LateReason.BREAKER_OPEN
        return LateReason.WEBHOOK_LIMIT if self.limited else LateReason.WORKER_BUSY


class Outcome(Enum):
    """What a finished attempt tells the breaker."""

    OK = "ok"  # 2xx: closes the breaker
    UNREACHABLE = "dead"  # timeout or connection failure: counts towards opening it
    # any other answer: the endpoint is alive, but not healthy. It ends an unreachable streak (the breaker
    # opens on consecutive ones), but does not close an open breaker: only a success does.
    ANSWERED = "other"
    RETURNED = "back"  # not attempted (worker stopping): back into the lane, breaker untouched
    SKIPPED = "skip"  # not attempted (moved on, or its webhook is gone): the slot is freed, nothing else


@dataclass(frozen=True, slots=True)
class Finished:
    item: LaneItem
    outcome: Outcome
    due: datetime | None = None  # for RETURNED: its original due time


class BreakerState(Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"  # tripped: the next attempt is a probe
    HALF_OPEN = "HALF_OPEN"  # tripped, and a probe is in flight


@dataclass(frozen=True, slots=True)
class LaneState:
    breaker: BreakerState
    breaker_since: datetime | None
    unreachable_streak: int
    in_flight: int
    waiting: int


@dataclass(frozen=True, slots=True)
class Enqueue:
    item: LaneItem
    due: datetime
    limit: int
    # PER_RESOURCE ordering: enter the (webhook, resource) gate, scored by seq, instead of the lane
    resource: str | None = None
    seq: int | None = None

    @property
    def gated(self) -> bool:
        return self.resource is not None and self.seq is not None


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# Lane insertion shared by ADD and ADVANCE: (lane, sched, webhook, member, due)
_PUT = """
local function put(p, wh, member, due)
  redis.call('ZADD', p .. ':lane:' .. wh, due, member)
  redis.call('ZADD', p .. ':sched', 'LT', due, wh)
end
-- a gate's next delivery goes in the lane if none is active; true if one was put
local function activate(p, wh, gate, items, now)
  if redis.call('HEXISTS', items, '@active') == 1 then return false end
  local head = redis.call('ZRANGE', gate, 0, 0)
  if #head == 0 then return false end
  local entry = redis.call('HGET', items, head[1])
  if not entry then  -- half lost (eviction): drop it; the sweeper puts it back from MongoDB
    redis.call('ZREM', gate, head[1])
    return false
  end
  redis.call('HSET', items, '@active', head[1])
  local sp = string.find(entry, ' ', 1, true)
  put(p, wh, string.sub(entry, sp + 1), math.max(now, tonumber(string.sub(entry, 1, sp - 1))))
  return true
end
"""

# ARGV: prefix, wake?, now_ms, and a JSON array of [webhook, member, due_ms, limit, only_if_absent, resource,
# seq] (all strings; resource '' = not gated). One argument, not seven per entry: redis-py packs every
# argument on its own (measured: 100 entries cost the client 0.9-1.15 ms of CPU as 700 arguments,
# 0.27-0.31 ms as one).
_ADD = (
    _PUT
    + """
local p, now = ARGV[1], tonumber(ARGV[3])
local n = 0
local gates = {}
for _, e in ipairs(cjson.decode(ARGV[4])) do
  local wh, member, due, limit, nx = e[1], e[2], tonumber(e[3]), e[4], e[5]
  local resource, seq = e[6], e[7]
  redis.call('HSET', p .. ':limits', wh, limit)
  local skip = false
  if resource ~= '' then
    local gate, items = p .. ':gate:' .. wh .. ':' .. resource, p .. ':gatei:' .. wh .. ':' .. resource
    local delivery = string.sub(member, 1, string.find(member, ':', 1, true) - 1)
    redis.call('ZADD', gate, 'NX', seq, delivery)
    redis.call('HSET', items, delivery, due .. ' ' .. member)
    if redis.call('HGET', items, '@active') ~= delivery then
      skip = true  -- waits for its turn (or is activated below)
      gates[#gates + 1] = {wh, gate, items}
    end
  end
  if not skip and nx == '1' then
    local inflight = p .. ':inflight:' .. wh
    local held = redis.call('ZSCORE', inflight, member)
    if held and tonumber(held) <= now then  -- an expired slot: its worker died
      redis.call('ZREM', inflight, member)
      held = false
    end
    local queued = redis.call('ZSCORE', p .. ':lane:' .. wh, member)
    local recording = redis.call('ZSCORE', p .. ':recording', member)
    skip = held ~= false or queued ~= false or (recording ~= false and tonumber(recording) > now)
  end
  if not skip then
    put(p, wh, member, due)
    n = n + 1
  end
end
for _, g in ipairs(gates) do
  if activate(p, g[1], g[2], g[3], now) then n = n + 1 end
end
if n > 0 and ARGV[2] == '1' then
  redis.call('LPUSH', p .. ':wake', '1')
  redis.call('LTRIM', p .. ':wake', 0, WAKE_TOKENS - 1)
end
return n
"""
).replace("WAKE_TOKENS", str(WAKE_TOKENS))

# ARGV: prefix, now_ms, then (webhook, resource, delivery) * n: these deliveries are final
_ADVANCE = (
    _PUT
    + """
local p, now = ARGV[1], tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 3 do
  local wh, resource, delivery = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local gate, items = p .. ':gate:' .. wh .. ':' .. resource, p .. ':gatei:' .. wh .. ':' .. resource
  if redis.call('ZREM', gate, delivery) == 1 then
    redis.call('HDEL', items, delivery)
    if redis.call('HGET', items, '@active') == delivery then redis.call('HDEL', items, '@active') end
    if activate(p, wh, gate, items, now) then n = n + 1 end
  end
end
if n > 0 then
  redis.call('LPUSH', p .. ':wake', '1')
  redis.call('LTRIM', p .. ':wake', 0, WAKE_TOKENS - 1)
end
return n
"""
).replace("WAKE_TOKENS", str(WAKE_TOKENS))

# ARGV: prefix, now_ms, max_items, default_limit, slot_ms, quantum, max_visits, attach
# -> {flat list of (webhook, member, due_ms, limited, breaker_open), next_score or false,
#     flat list of (event, value at attach .. event) for the first attempts claimed, if attach is not ''}
# (a member is ``<delivery>:<number>:<event>:<kind>``: ``LaneItem.member``)
_CLAIM = """
local p, now, max_items = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local default_limit, slot, quantum, max_visits = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])
local attach = ARGV[8] or ''
local sched = p .. ':sched'
local out = {}
local taken, visits = 0, 0
while taken < max_items and visits < max_visits do
  local head = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
  if #head == 0 or tonumber(head[2]) > now then break end
  visits = visits + 1
  local wh = head[1]
  local lane, inflight = p .. ':lane:' .. wh, p .. ':inflight:' .. wh
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
  local limit = tonumber(redis.call('HGET', p .. ':limits', wh) or default_limit)
  local open = redis.call('HGET', p .. ':breaker:' .. wh, 'open')
  if open then limit = 1 end
  local busy = redis.call('ZCARD', inflight)
  local want = math.min(limit - busy, quantum, max_items - taken)
  if want > 0 then
    local limited = tonumber(redis.call('HGET', p .. ':limited', wh) or '0')
    local items = redis.call('ZRANGEBYSCORE', lane, '-inf', now, 'WITHSCORES', 'LIMIT', 0, want)
    for i = 1, #items, 2 do
      redis.call('ZREM', lane, items[i])
      redis.call('ZADD', inflight, now + slot, items[i])
      local due = tonumber(items[i + 1])
      out[#out + 1] = wh
      out[#out + 1] = items[i]
      out[#out + 1] = items[i + 1]
      out[#out + 1] = (limited >= due) and '1' or '0'
      out[#out + 1] = open and '1' or '0'
      taken = taken + 1
      busy = busy + 1
    end
  end
  local nxt = redis.call('ZRANGE', lane, 0, 0, 'WITHSCORES')
  if #nxt == 0 then
    redis.call('ZREM', sched, wh)
    redis.call('HDEL', p .. ':limited', wh)
  elseif busy >= limit then
    if tonumber(nxt[2]) <= now then redis.call('HSET', p .. ':limited', wh, now) end
    local oldest = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
    redis.call('ZADD', sched, math.max(tonumber(oldest[2]), tonumber(nxt[2])), wh)
  else
    redis.call('ZADD', sched, math.max(now, tonumber(nxt[2])), wh)
  end
end
local head = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
local attached = {}
if attach ~= '' then
  local seen = {}
  for i = 2, #out, 5 do
    local m = out[i]
    local d1 = string.find(m, ':', 1, true)
    local d2 = string.find(m, ':', d1 + 1, true)
    local d3 = string.find(m, ':', d2 + 1, true)
    local event = string.sub(m, d2 + 1, d3 - 1)
    if string.sub(m, d3 + 1) == 'n' and not seen[event] then
      seen[event] = true
      local raw = redis.call('GET', attach .. event)
      if raw then
        attached[#attached + 1] = event
        attached[#attached + 1] = raw
      end
    end
  end
end
return {out, head[2] or false, attached}
"""

# ARGV: prefix, now_ms, open_after, and a JSON array of [webhook, member, outcome, due_ms] (strings; one
# argument, as for ADD) -> flat list of (webhook, 'opened' | 'closed', failures)
_RELEASE = (
    """
local p, now, open_after = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local changes = {}
local woke = false
for _, f in ipairs(cjson.decode(ARGV[4])) do
  local wh, member, outcome = f[1], f[2], f[3]
  local lane, bkey = p .. ':lane:' .. wh, p .. ':breaker:' .. wh
  redis.call('ZREM', p .. ':inflight:' .. wh, member)
  if outcome ~= 'back' and outcome ~= 'skip' then
    redis.call('ZADD', p .. ':recording', now + RECORDING_MS, member)
  end
  if outcome == 'ok' then
    if redis.call('HGET', bkey, 'open') then
      changes[#changes + 1] = wh
      changes[#changes + 1] = 'closed'
      changes[#changes + 1] = 0
    end
    redis.call('DEL', bkey)
  elseif outcome == 'dead' then
    local failures = redis.call('HINCRBY', bkey, 'failures', 1)
    redis.call('PEXPIRE', bkey, BREAKER_TTL_MS)
    if failures >= open_after and not redis.call('HGET', bkey, 'open') then
      redis.call('HSET', bkey, 'open', now)
      changes[#changes + 1] = wh
      changes[#changes + 1] = 'opened'
      changes[#changes + 1] = failures
    end
  elseif outcome == 'other' then
    if not redis.call('HGET', bkey, 'open') then  -- it answered: the unreachable streak is over
      redis.call('HDEL', bkey, 'failures')
    end
  elseif outcome == 'back' then
    redis.call('ZADD', lane, 'NX', tonumber(f[4]), member)
  end
  local nxt = redis.call('ZRANGE', lane, 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    redis.call('ZADD', p .. ':sched', 'LT', math.max(now, tonumber(nxt[2])), wh)
    woke = true
  end
end
if woke then
  redis.call('LPUSH', p .. ':wake', '1')
  redis.call('LTRIM', p .. ':wake', 0, WAKE_TOKENS - 1)
end
return changes
""".replace("WAKE_TOKENS", str(WAKE_TOKENS))
    .replace("RECORDING_MS", str(RECORDING_MS))
    .replace("BREAKER_TTL_MS", str(BREAKER_TTL_MS))
)


# ARGV: n, the release's n arguments, then the claim's: both scripts in one call
# (``Lanes.release_then_claim``), each on its own slice of the arguments -> {release's result, claim's three}
_RELEASE_THEN_CLAIM = (
    "local function release(ARGV)\n"
    + _RELEASE
    + "\nend\nlocal function claim(ARGV)\n"
    + _CLAIM
    + """
end
local n = tonumber(ARGV[1])
local r, c = {}, {}
for i = 2, n + 1 do r[#r + 1] = ARGV[i] end
for i = n + 2, #ARGV do c[#c + 1] = ARGV[i] end
local changes = release(r)
local claimed = claim(c)
return {changes, claimed[1], claimed[2], claimed[3]}
"""
)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A claim to make in the same call as a release (``Lanes.release_then_claim``): the slots it frees are
    taken again at once, by the same round-robin as ``Lanes.claim``, without a round trip of their own."""

    now: datetime
    max_items: int
    slot_seconds: float
    attach: str = ""
    quantum: int = 10
    max_visits: int = 200


@dataclass(frozen=True, slots=True)
class BreakerChange:
    webhook_id: str
    opened: bool
    failures: int


def _claimed(flat: list[Any], next_score: Any, pairs: list[Any]) -> tuple[list[Claimed], datetime | None]:
    """A claim script's answer: the attempts taken, and when the next webhook is due."""
    bodies = {_s(pairs[i]): pairs[i + 1] for i in range(0, len(pairs), 2)}
    claimed = []
    for i in range(0, len(flat), 5):
        item = LaneItem.parse(_s(flat[i]), _s(flat[i + 1]))
        claimed.append(
            Claimed(
                item=item,
                due=from_ms(float(flat[i + 2])),
                limited=_s(flat[i + 3]) == "1",
                breaker_open=_s(flat[i + 4]) == "1",
                attached=bodies.get(item.event_id) if item.kind is Kind.NEW else None,
            )
        )
    return claimed, from_ms(float(next_score)) if next_score else None


def _changes(flat: list[Any]) -> list[BreakerChange]:
    """A release script's answer: the breakers that opened or closed."""
    return [
        BreakerChange(_s(flat[i]), _s(flat[i + 1]) == "opened", int(flat[i + 2]))
        for i in range(0, len(flat), 3)
    ]


class Lanes:
    """The one module that knows the lane structures (see the module docstring)."""

    def __init__(self, redis: Redis, queue_name: str, *, default_limit: int = 10) -> None:
        self._redis = redis
        self.prefix = queue_name
        self.default_limit = default_limit
        self._add = redis.register_script(_ADD)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._release_then_claim = redis.register_script(_RELEASE_THEN_CLAIM)
        self._advance = redis.register_script(_ADVANCE)

    @property
    def wake_key(self) -> str:
        return f"{self.prefix}:wake"

    def _lane(self, webhook_id: str) -> str:
        return f"{self.prefix}:lane:{webhook_id}"

    def _inflight(self, webhook_id: str) -> str:
        return f"{self.prefix}:inflight:{webhook_id}"

    def _breaker(self, webhook_id: str) -> str:
        return f"{self.prefix}:breaker:{webhook_id}"

    def _gate(self, webhook_id: str, resource: str) -> str:
        return f"{self.prefix}:gate:{webhook_id}:{resource}"

    def _gate_items(self, webhook_id: str, resource: str) -> str:
        return f"{self.prefix}:gatei:{webhook_id}:{resource}"

    async def add(
        self, entries: Sequence[Enqueue], *, only_if_absent: bool = False, wake: bool = True
    ) -> int:
        """Put attempts in their webhooks' lanes (idempotent per attempt); how many were added.

        ``only_if_absent`` (the sweeper): leave an attempt alone while it is queued or in flight.
        A gated entry (``Enqueue.gated``) joins its gate; it is in the lane only while it is the gate's
        active delivery. Entries are taken in the order given (pass a gate's entries in ``seq`` order).
        """
        if not entries:
            return 0
        nx = "1" if only_if_absent else "0"
        rows = [
            [e.item.webhook_id, e.item.member, str(to_ms(e.due)), str(e.limit), nx]
            + ([e.resource or "", str(e.seq or 0)] if e.gated else ["", "0"])
            for e in entries
        ]
        args = [self.prefix, "1" if wake else "0", to_ms(datetime.now(UTC)), orjson.dumps(rows)]
        return int(await self._add(args=args))

    async def advance(self, finals: Sequence[tuple[str, str, str]], now: datetime) -> int:
        """These (webhook, resource, delivery) are final: leave their gates, each gate's next one goes in
        its lane. Idempotent (a delivery not in its gate is ignored); how many were put in a lane."""
        if not finals:
            return 0
        args: list[str | int] = [self.prefix, to_ms(now)]
        for webhook_id, resource, delivery_id in finals:
            args += [webhook_id, resource, delivery_id]
        return int(await self._advance(args=args))

    async def gate_states(self, items: Sequence[tuple[str, str, str]]) -> list[tuple[bool, str | None]]:
        """For each (webhook, resource, delivery): whether it is in its gate, and the gate's active one."""
        if not items:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for webhook_id, resource, delivery_id in items:
                pipe.zscore(self._gate(webhook_id, resource), delivery_id)
                pipe.hget(self._gate_items(webhook_id, resource), "@active")
            raw = await pipe.execute()
        return [
            (raw[2 * i] is not None, _s(raw[2 * i + 1]) if raw[2 * i + 1] is not None else None)
            for i in range(len(items))
        ]

    async def claim(
        self,
        now: datetime,
        max_items: int,
        *,
        slot_seconds: float,
        quantum: int = 10,
        max_visits: int = 200,
        attach: str = "",
    ) -> tuple[list[Claimed], datetime | None]:
        """Take up to ``max_items`` due attempts, round-robin across webhooks, each holding a slot of its
        webhook for ``slot_seconds`` (or until released). Also: when the next webhook is due, if any.

        ``attach``: a key prefix; each first attempt (``Kind.NEW``) claimed carries the value at that prefix
        plus its event id, if there is one (the worker passes ``EventHandoff.key_prefix``, so a new event's
        copy comes with its claim instead of in a round trip of its own)."""
        raw = await self._claim(
            args=self._claim_args(ClaimRequest(now, max_items, slot_seconds, attach, quantum, max_visits))
        )
        return _claimed(*raw)

    def _claim_args(self, claim: ClaimRequest) -> list[str | int]:
        return [
            self.prefix,
            to_ms(claim.now),
            claim.max_items,
            self.default_limit,
            int(claim.slot_seconds * 1000),
            claim.quantum,
            claim.max_visits,
            claim.attach,
        ]

    async def release(
        self, finished: Sequence[Finished], now: datetime, *, open_after: int
    ) -> list[BreakerChange]:
        """Free the slots of finished attempts, update breakers; the breakers that opened or closed."""
        if not finished:
            return []
        return _changes(await self._release(args=self._release_args(finished, now, open_after)))

    async def release_then_claim(
        self, finished: Sequence[Finished], now: datetime, *, open_after: int, claim: ClaimRequest
    ) -> tuple[list[BreakerChange], list[Claimed]]:
        """``release``, then ``claim`` in the same call: the breaker changes, and the attempts claimed."""
        release_args = self._release_args(finished, now, open_after)
        raw = await self._release_then_claim(
            args=[len(release_args), *release_args, *self._claim_args(claim)]
        )
        claimed, _ = _claimed(raw[1], raw[2], raw[3])
        return _changes(raw[0]), claimed

    def _release_args(
        self, finished: Sequence[Finished], now: datetime, open_after: int
    ) -> list[str | int | bytes]:
        at = to_ms(now)
        rows = [
            [f.item.webhook_id, f.item.member, f.outcome.value, str(at if f.due is None else to_ms(f.due))]
            for f in finished
        ]
        return [self.prefix, at, open_after, orjson.dumps(rows)]

    async def absent(self, items: Sequence[LaneItem], now: datetime) -> list[LaneItem]:
        """The items that are in no lane, no live slot and not being recorded (a snapshot)."""
        if not items:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.zscore(self._lane(item.webhook_id), item.member)
                pipe.zscore(self._inflight(item.webhook_id), item.member)
                pipe.zscore(f"{self.prefix}:recording", item.member)
            raw = await pipe.execute()
        at = to_ms(now)
        return [
            item
            for i, item in enumerate(items)
            if raw[3 * i] is None
            and (raw[3 * i + 1] is None or float(raw[3 * i + 1]) <= at)
            and (raw[3 * i + 2] is None or float(raw[3 * i + 2]) <= at)
        ]

    async def upcoming(self, webhook_ids: Sequence[str], count: int) -> list[LaneItem]:
        """The first ``count`` attempts waiting in each webhook's lane, in due order (a snapshot: what its
        next claims will take, for reading their events ahead)."""
        if not webhook_ids or count <= 0:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for wh in webhook_ids:
                pipe.zrange(self._lane(wh), 0, count - 1)
            raw = await pipe.execute()
        return [
            LaneItem.parse(wh, _s(member))
            for wh, members in zip(webhook_ids, raw, strict=True)
            for member in members
        ]

    async def recorded(self, items: Sequence[LaneItem], now: datetime) -> None:
        """These attempts' outcomes are in MongoDB (which the sweeper reads from now on)."""
        if not items:
            return
        key = f"{self.prefix}:recording"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(key, *[i.member for i in items])
            pipe.zremrangebyscore(key, "-inf", to_ms(now))  # entries of workers that died meanwhile
            await pipe.execute()

    async def extend(self, items: Sequence[LaneItem], until: datetime) -> None:
        """Keep the slots of attempts still running (a live worker's lease); a dead worker's expire."""
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.zadd(self._inflight(item.webhook_id), {item.member: to_ms(until)}, xx=True)
            await pipe.execute()

    async def set_limit(self, webhook_id: str, limit: int) -> None:
        await self._redis.hset(f"{self.prefix}:limits", webhook_id, str(limit))  # type: ignore[misc]

    async def states(self, webhook_ids: Sequence[str], now: datetime) -> dict[str, LaneState]:
        """Breaker, in-flight and waiting counts of several webhooks, in one round trip."""
        if not webhook_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for wh in webhook_ids:
                pipe.hgetall(self._breaker(wh))
                pipe.zcount(self._inflight(wh), to_ms(now), "+inf")
                pipe.zcard(self._lane(wh))
            raw = await pipe.execute()
        found: dict[str, LaneState] = {}
        for i, wh in enumerate(webhook_ids):
            breaker = {_s(k): _s(v) for k, v in raw[3 * i].items()}
            in_flight, waiting = int(raw[3 * i + 1]), int(raw[3 * i + 2])
            opened = breaker.get("open")
            state = BreakerState.CLOSED
            if opened is not None:
                state = BreakerState.HALF_OPEN if in_flight else BreakerState.OPEN
            found[wh] = LaneState(
                breaker=state,
                breaker_since=from_ms(float(opened)) if opened is not None else None,
                unreachable_streak=int(breaker.get("failures", 0)),
                in_flight=in_flight,
                waiting=waiting,
            )
        return found

    async def forget(self, webhook_id: str) -> None:
        """A deleted webhook: drop its limit, breaker and limit mark, so no gauge counts it. Attempts still in
        its lane drain on their own (the engine finds the webhook gone and fails them)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(f"{self.prefix}:limits", webhook_id)
            pipe.hdel(f"{self.prefix}:limited", webhook_id)
            pipe.delete(self._breaker(webhook_id))
            await pipe.execute()

    async def open_breakers(self) -> int:
        """How many webhooks have an open breaker (a scan: for metrics scrapes, not hot paths)."""
        count = 0
        async for key in self._redis.scan_iter(match=f"{self.prefix}:breaker:*", count=500):
            if await self._redis.hexists(_s(key), "open"):  # type: ignore[misc]
                count += 1
        return count

    async def waiting_on_limit(self, now: datetime) -> int:
        """Due attempts of webhooks that are at their in-flight limit (parked until a slot frees)."""
        parked = await self._redis.zrangebyscore(f"{self.prefix}:sched", f"({to_ms(now)}", "+inf")
        if not parked:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for wh in parked:
                pipe.zcount(self._lane(_s(wh)), "-inf", to_ms(now))
            counts = await pipe.execute()
        return sum(int(c) for c in counts)

    async def depth(self) -> int:
        """Attempts waiting in every lane (due now or later)."""
        webhooks = await self._redis.zrange(f"{self.prefix}:sched", 0, -1)
        if not webhooks:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for wh in webhooks:
                pipe.zcard(self._lane(_s(wh)))
            counts = await pipe.execute()
        return sum(int(c) for c in counts)

    async def ordered_waiting(self) -> int:
        """Deliveries of ordered webhooks waiting in their resource's gate for an earlier one to finish (a
        scan: for metrics scrapes, not hot paths). Not in ``depth``: more workers would not make them go."""
        head = f"{self.prefix}:gate:"
        gates = [_s(k) async for k in self._redis.scan_iter(match=f"{head}*", count=500)]
        if not gates:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for gate in gates:
                pipe.zcard(gate)
                pipe.hexists(f"{self.prefix}:gatei:{gate[len(head) :]}", "@active")
            raw = await pipe.execute()
        return sum(int(raw[2 * i]) - (1 if raw[2 * i + 1] else 0) for i in range(len(gates)))

    async def wake(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lpush(self.wake_key, b"1")
            pipe.ltrim(self.wake_key, 0, WAKE_TOKENS - 1)
            await pipe.execute()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
