"""Sequence numbers of ordered webhooks (``X-Webhook-Sequence``): one counter per (webhook, resource).

Allocated at publish, before the event is written, with one atomic ``$inc`` per ordered webhook, and
stored with the planned delivery: so the number survives a Redis flush, and numbers grow by one per
delivery. (A publish that dies between the two writes, or loses an idempotency-key race, leaves a gap:
the receiver sees a number skipped, never one used twice.)
"""

from __future__ import annotations

from bson import ObjectId
from pymongo import ReturnDocument

from webhooks.db import Collections


class SequenceRepository:
    def __init__(self, cols: Collections) -> None:
        self._col = cols.sequences

    async def next(self, webhook_id: ObjectId, resource: str) -> int:
        doc = await self._col.find_one_and_update(
            {"_id": f"{webhook_id}:{resource}"},
            {"$inc": {"seq": 1}, "$setOnInsert": {"webhook_id": webhook_id}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upserted
        return int(doc["seq"])
