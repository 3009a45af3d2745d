"""Sequence numbers of ordered webhooks (``X-Webhook-Sequence``): one counter per (webhook, resource).

Allocated at publish, before the event is written, with one atomic ``$inc`` per ordered webhook, and
stored with the planned delivery: so the number survives a Redis flush, and numbers grow by one per
delivery. (A publish that dies between the two writes, or loses an idempotency-key race, leaves a gap:
the receiver sees a number skipped, never one used twice.) A deleted webhook's counters go with it.
"""

from __future__ import annotations

import contextlib

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from webhooks.db import Collections


class SequenceRepository:
    def __init__(self, cols: Collections) -> None:
        self._col = cols.sequences

    async def next(self, webhook_id: ObjectId, resource: str) -> int:
        """The resource's next number. Its counter is created first if it has none (at 0): an upsert that
        also increments could, on SecantusDB, count for two racing publishes and answer one of them with
        nothing (the number lost, the publish failed); an increment of a counter that exists cannot."""
        key = f"{webhook_id}:{resource}"
        for _ in range(2):
            doc = await self._col.find_one_and_update(
                {"_id": key}, {"$inc": {"seq": 1}}, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                return int(doc["seq"])
            with contextlib.suppress(DuplicateKeyError):  # another publish created it meanwhile
                await self._col.update_one(
                    {"_id": key}, {"$setOnInsert": {"seq": 0, "webhook_id": webhook_id}}, upsert=True
                )
        raise RuntimeError(f"the sequence counter {key} could not be created")

    async def forget(self, webhook_id: ObjectId) -> int:
        """Drop a deleted webhook's counters (one per resource it ever ordered); how many went. Their ids
        start with the webhook's (``next``), so this is a range of the ``_id`` index."""
        prefix = f"{webhook_id}:"
        end = prefix[:-1] + chr(ord(":") + 1)
        result = await self._col.delete_many({"_id": {"$gte": prefix, "$lt": end}})
        return result.deleted_count
