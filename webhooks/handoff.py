"""Event handoff: the API leaves each new event in Redis for a short while, so a worker's first attempts
read it from there rather than from MongoDB.

MongoDB stays the source of truth. The entry is written after the event is stored, as its attempts are
queued, and it is only a copy: on a miss (a Redis flush, an expired entry, an event too large to hand off,
an attempt claimed before its copy landed) the worker reads MongoDB, as it always could. Events never
change once stored, so a copy is never stale. Redis memory is bounded by ``event_handoff_ttl`` × publish
rate × ``MAX_BYTES``.

Why: on the embedded store every read competes with the writes for its one core, and a first attempt's
event read sat on the path of every delivery (measured in bench P8: a webhook's 10 in-flight slots each
held for the length of that read).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import bson
from bson import CodecOptions, ObjectId
from redis.asyncio import Redis

from webhooks.models import Event
from webhooks.repositories.events import stored_event_doc

log = logging.getLogger(__name__)

MAX_BYTES = 16 * 1024  # larger events are read from MongoDB
_DECODE: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


class EventHandoff:
    def __init__(self, redis: Redis, prefix: str, ttl: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:handoff:"
        self._ttl_ms = int(ttl * 1000)

    @property
    def key_prefix(self) -> str:
        """An event's copy is at this prefix + its id, so a worker's claim reads it in the same round trip
        (``Lanes.claim(attach=...)``); empty when the handoff is off."""
        return self._prefix if self._ttl_ms > 0 else ""

    def decode(self, raw: bytes) -> Event:
        """One copy, as read from ``key_prefix`` + the event's id."""
        return Event.from_doc(bson.decode(raw, _DECODE))

    async def put(self, events: Sequence[Event]) -> None:
        """Best effort: a copy that is not written is read from MongoDB instead."""
        if self._ttl_ms <= 0:
            return
        encoded = [(e.id, _encode(e)) for e in events]
        encoded = [(i, raw) for i, raw in encoded if len(raw) <= MAX_BYTES]
        if not encoded:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event_id, raw in encoded:
                    pipe.set(self._prefix + str(event_id), raw, px=self._ttl_ms)
                await pipe.execute()
        except Exception as exc:
            log.warning("could not hand off %d events (%s)", len(encoded), type(exc).__name__)

    async def get_many(self, ids: Sequence[ObjectId]) -> dict[ObjectId, Event]:
        """The events still handed off (a Redis error reads as a miss)."""
        if self._ttl_ms <= 0 or not ids:
            return {}
        try:
            found = await self._redis.mget([self._prefix + str(i) for i in ids])
        except Exception as exc:
            log.warning("could not read %d handed-off events (%s)", len(ids), type(exc).__name__)
            return {}
        return {i: self.decode(raw) for i, raw in zip(ids, found, strict=True) if raw}


def _encode(event: Event) -> bytes:
    return bson.encode(stored_event_doc(event, timedelta(0), None))
