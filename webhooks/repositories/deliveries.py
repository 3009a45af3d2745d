from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, UpdateMany, UpdateOne

from webhooks.db import Collections, Doc, insert_new
from webhooks.models import Attempt, AttemptTrigger, Delivery, DeliveryStatus
from webhooks.pagination import Page

# The list query looks at a bounded window of ids (ObjectIds start with their creation time) and widens it
# only while it finds too few: on SecantusDB a sort+limit reads every match, so the window keeps it flat.
FIRST_WINDOW = timedelta(hours=1)
WINDOW_GROWTH = 8
CLOCK_SKEW = timedelta(minutes=1)


def delivery_doc(
    *,
    delivery_id: ObjectId,
    account_id: ObjectId,
    webhook_id: ObjectId,
    event_id: ObjectId,
    event: str,
    now: datetime,
    retention: timedelta,
    held: bool = False,
    test: bool = False,
) -> Doc:
    return {
        "_id": delivery_id,
        "account_id": account_id,
        "webhook_id": webhook_id,
        "event_id": event_id,
        "event": event,
        "status": (DeliveryStatus.HELD if held else DeliveryStatus.PENDING).value,
        "test": test,
        "attempt_count": 0,
        "run_start": 1,
        "run_trigger": (AttemptTrigger.TEST if test else AttemptTrigger.AUTOMATIC).value,
        "next_attempt_at": None if held else now,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + retention,
    }


class DeliveryRepository:
    def __init__(self, cols: Collections) -> None:
        self._col = cols.deliveries
        self._attempts = cols.attempts

    async def insert_many(self, docs: list[Doc]) -> None:
        """Insert; ids already present are left as they are (a replayed publish is idempotent)."""
        if not docs:
            return
        await insert_new(self._col, docs)

    async def get(self, account_id: ObjectId, delivery_id: ObjectId) -> Delivery | None:
        doc = await self._col.find_one({"_id": delivery_id, "account_id": account_id})
        return Delivery.from_doc(doc) if doc else None

    async def docs_by_ids(self, ids: list[ObjectId]) -> list[Doc]:
        return await self._col.find({"_id": {"$in": ids}}).to_list()

    async def page(
        self,
        account_id: ObjectId,
        *,
        webhook_id: ObjectId | None,
        status: DeliveryStatus | None,
        event: str | None,
        first: int,
        after: ObjectId | None,
        oldest: datetime,
    ) -> Page[Delivery]:
        """Newest first. Served by (account_id[, webhook_id], _id desc), scanning an adaptive id window."""
        base: Doc = {"account_id": account_id}
        if webhook_id is not None:
            base["webhook_id"] = webhook_id
        if status is not None:
            base["status"] = status.value
        if event is not None:
            base["event"] = event
        # the first page starts just after now (a minute of margin for clock skew between processes)
        upper = after or ObjectId.from_datetime(datetime.now(tz=oldest.tzinfo) + CLOCK_SKEW)
        floor = ObjectId.from_datetime(oldest)
        window = FIRST_WINDOW
        found: list[Doc] = []
        while True:
            lower = ObjectId.from_datetime(upper.generation_time - window)
            lower = max(lower, floor)
            query = {**base, "_id": {"$lt": upper, "$gte": lower}}
            found += (
                await self._col.find(query).sort("_id", DESCENDING).limit(first + 1 - len(found)).to_list()
            )
            if len(found) > first or lower <= floor:
                break
            upper, window = lower, window * WINDOW_GROWTH
        return Page([Delivery.from_doc(d) for d in found[:first]], has_next_page=len(found) > first)

    async def attempts_of(self, delivery_ids: list[ObjectId]) -> dict[ObjectId, list[Attempt]]:
        """The attempts of several deliveries, oldest first, in one query (index ``delivery_attempts``)."""
        found: dict[ObjectId, list[Attempt]] = {d: [] for d in delivery_ids}
        cursor = self._attempts.find({"delivery_id": {"$in": delivery_ids}}).sort(
            [("delivery_id", 1), ("number", 1)]
        )
        async for doc in cursor:
            found[doc["delivery_id"]].append(Attempt.from_doc(doc))
        return found

    async def overdue(self, before: datetime, limit: int) -> list[Doc]:
        """Pending deliveries whose next attempt is overdue (the sweeper's scan, bounded)."""
        cursor = self._col.find(
            {"status": DeliveryStatus.PENDING.value, "next_attempt_at": {"$lt": before}},
            {"_id": 1, "event_id": 1, "attempt_count": 1, "next_attempt_at": 1},
        ).limit(limit)
        return await cursor.to_list()

    async def record_attempts(
        self, attempt_docs: list[Doc], updates: Sequence[UpdateOne | UpdateMany]
    ) -> None:
        """Append the attempt log and move the deliveries on, in two batched writes."""
        if attempt_docs:
            await insert_new(self._attempts, attempt_docs)  # a re-run job's attempt again: keep the first
        if updates:
            await self._col.bulk_write(list(updates), ordered=False)

    async def restart(
        self, account_id: ObjectId, ids: list[ObjectId], statuses: list[DeliveryStatus], now: datetime
    ) -> list[Doc]:
        """Start a new manual run for deliveries currently in ``statuses``; return the ones restarted.

        Each update is conditional on the state just read, and only the deliveries this call moved (marked
        with its own run id) are returned: a delivery that changed meanwhile is neither counted nor queued.
        """
        query: Doc = {
            "_id": {"$in": ids},
            "account_id": account_id,
            "status": {"$in": [s.value for s in statuses]},
        }
        docs = await self._col.find(query).to_list()
        run_id = ObjectId()
        updates: list[UpdateOne] = []
        for doc in docs:
            updates.append(
                UpdateOne(
                    {"_id": doc["_id"], "status": doc["status"], "attempt_count": doc["attempt_count"]},
                    {
                        "$set": {
                            "status": DeliveryStatus.PENDING.value,
                            "run_start": doc["attempt_count"] + 1,
                            "run_trigger": AttemptTrigger.MANUAL.value,
                            "run_id": run_id,
                            "next_attempt_at": now,
                            "updated_at": now,
                        }
                    },
                )
            )
        if not updates:
            return []
        await self._col.bulk_write(updates, ordered=False)
        moved = {d["_id"] async for d in self._col.find({"_id": {"$in": ids}, "run_id": run_id}, {"_id": 1})}
        return [d for d in docs if d["_id"] in moved]

    async def ids_in_window(
        self,
        account_id: ObjectId,
        webhook_id: ObjectId,
        statuses: list[DeliveryStatus],
        since: datetime,
        until: datetime,
        limit: int,
    ) -> list[ObjectId]:
        # ObjectIds hold whole seconds: bound them a second wider (for the index) and filter exactly on
        # created_at, or a delivery made in the same second as ``until`` (e.g. "until now") is missed.
        query: dict[str, Any] = {
            "account_id": account_id,
            "webhook_id": webhook_id,
            "_id": {
                "$gte": ObjectId.from_datetime(since - timedelta(seconds=1)),
                "$lt": ObjectId.from_datetime(until + timedelta(seconds=1)),
            },
            "created_at": {"$gte": since, "$lt": until},
            "status": {"$in": [s.value for s in statuses]},
        }
        docs = await self._col.find(query, {"_id": 1}).sort("_id", DESCENDING).limit(limit).to_list()
        return [d["_id"] for d in docs]
