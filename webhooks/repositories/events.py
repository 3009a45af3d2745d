from __future__ import annotations

from datetime import datetime, timedelta

from bson import Binary, ObjectId

from webhooks.db import Collections, Doc, insert_new
from webhooks.models import Event


def event_doc(
    *,
    account_id: ObjectId,
    event: str,
    body: bytes,
    now: datetime,
    retention: timedelta,
    idempotency_key: str | None,
    planned: list[tuple[ObjectId, ObjectId, bool]],
) -> Doc:
    """An event with its planned fan-out ``(delivery id, webhook id, held)``: the durable record of what
    must be delivered, written before anything is queued."""
    doc: Doc = {
        "_id": ObjectId(),
        "account_id": account_id,
        "event": event,
        "body": Binary(body),
        "created_at": now,
        "expires_at": now + retention,
        "planned": [{"delivery_id": d, "webhook_id": w, "held": h} for d, w, h in planned],
    }
    if idempotency_key is not None:
        doc["idempotency_key"] = idempotency_key
    return doc


class EventRepository:
    def __init__(self, cols: Collections) -> None:
        self._col = cols.events

    async def insert_many(self, docs: list[Doc]) -> list[bool]:
        """Insert events (built by ``event_doc``); False for one whose idempotency key is already used."""
        return await insert_new(self._col, docs)

    async def by_idempotency_key(self, account_id: ObjectId, key: str, since: datetime) -> Doc | None:
        return await self._col.find_one(
            {"account_id": account_id, "idempotency_key": key, "created_at": {"$gte": since}}
        )

    async def release_idempotency_key(self, account_id: ObjectId, key: str, before: datetime) -> None:
        """An expired key (older than the window) may be used again."""
        await self._col.update_one(
            {"account_id": account_id, "idempotency_key": key, "created_at": {"$lt": before}},
            {"$unset": {"idempotency_key": ""}},
        )

    async def get_many(self, ids: list[ObjectId]) -> dict[ObjectId, Event]:
        return {d["_id"]: Event.from_doc(d) async for d in self._col.find({"_id": {"$in": ids}})}
