"""Events: the stored body, and the outbox of the deliveries it must make.

An event document lists its planned fan-out and stays ``open`` until every planned delivery has been
written (its first attempt finished, or it was recorded HELD); the sweeper closes it. Until then, the
event is where an unwritten delivery lives: the delivery log and ``delivery(id)`` read it from here,
and the sweeper rebuilds lost lane entries from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from bson import Binary, ObjectId

from webhooks.db import Collections, Doc, chunked, find_by_ids, insert_new
from webhooks.models import Event, Planned

# An event's id and its deliveries' ids are minted together; ObjectIds hold whole seconds, so their times
# differ by at most one second (two, with room for events stored by earlier versions).
PLANNING_WINDOW = timedelta(seconds=2)
# A close holds the events collection's write lock (SecantusDB: per collection) for every document it
# rewrites, and each publishEvent's insert waits behind it: closes stay short.
CLOSE_BATCH = 10


def event_doc(
    *,
    event_id: ObjectId,
    account_id: ObjectId,
    event: str,
    body: bytes,
    now: datetime,
    retention: timedelta,
    idempotency_key: str | None,
    planned: Sequence[Planned],
    test: bool = False,
) -> Doc:
    doc: Doc = {
        "_id": event_id,
        "account_id": account_id,
        "event": event,
        "body": Binary(body),
        "created_at": now,
        "expires_at": now + retention,
        "planned": [_planned_doc(p) for p in planned],
        "test": test,
    }
    if any(not p.held for p in planned):
        doc["open"] = True
    if idempotency_key is not None:
        doc["idempotency_key"] = idempotency_key
    return doc


def stored_event_doc(event: Event, retention: timedelta, idempotency_key: str | None) -> Doc:
    """The document ``event`` is stored as."""
    return event_doc(
        event_id=event.id,
        account_id=event.account_id,
        event=event.event,
        body=event.body,
        now=event.created_at,
        retention=retention,
        idempotency_key=idempotency_key,
        planned=event.planned,
        test=event.test,
    )


def _planned_doc(p: Planned) -> Doc:
    doc: Doc = {"delivery_id": p.delivery_id, "webhook_id": p.webhook_id, "held": p.held}
    if p.seq is not None:
        doc["resource"] = p.resource
        doc["seq"] = p.seq
    return doc


def _plan(doc: Doc) -> Event:
    return Event.from_doc({**doc, "body": b""})


class EventRepository:
    def __init__(self, cols: Collections) -> None:
        self._col = cols.events

    async def insert_events(
        self, events: Sequence[tuple[Event, str | None]], retention: timedelta
    ) -> list[bool]:
        """Insert events with their idempotency keys; False for one whose key is already used."""
        docs = [stored_event_doc(e, retention, key) for e, key in events]
        return await insert_new(self._col, docs)

    async def by_idempotency_key(self, account_id: ObjectId, key: str, since: datetime) -> Event | None:
        doc = await self._col.find_one(
            {"account_id": account_id, "idempotency_key": key, "created_at": {"$gte": since}}
        )
        return Event.from_doc(doc) if doc else None

    async def release_idempotency_key(self, account_id: ObjectId, key: str, before: datetime) -> None:
        """An expired key (older than the window) may be used again."""
        await self._col.update_one(
            {"account_id": account_id, "idempotency_key": key, "created_at": {"$lt": before}},
            {"$unset": {"idempotency_key": ""}},
        )

    async def get_many(self, ids: list[ObjectId]) -> dict[ObjectId, Event]:
        """Events with their bodies (internal, worker side: not account-scoped)."""
        return {d["_id"]: Event.from_doc(d) async for d in find_by_ids(self._col, ids)}

    # -- the outbox ------------------------------------------------------------------------------------

    async def open_in_window(
        self, account_id: ObjectId, lower: ObjectId, upper: ObjectId, event: str | None
    ) -> list[Event]:
        """Open events of one account whose ids fall in ``[lower, upper)`` (bodies left out)."""
        query: Doc = {"account_id": account_id, "open": True, "_id": {"$gte": lower, "$lt": upper}}
        if event is not None:
            query["event"] = event
        return [_plan(d) async for d in self._col.find(query, _projection())]

    async def planning(self, account_id: ObjectId, delivery_id: ObjectId) -> Event | None:
        """The open event that plans ``delivery_id`` (bodies left out).

        A publish mints its delivery ids and then the event's id at once, so the event's id lies within a
        second of the delivery's: the account's open events in that window are read (``account_open_newest``)
        and searched here, which spares every event an index entry per planned delivery."""
        at = delivery_id.generation_time
        window = {
            "$gte": ObjectId.from_datetime(at - PLANNING_WINDOW),
            "$lt": ObjectId.from_datetime(at + PLANNING_WINDOW),
        }
        query = {"account_id": account_id, "open": True, "_id": window}
        async for doc in self._col.find(query, _projection()):
            event = _plan(doc)
            if any(p.delivery_id == delivery_id for p in event.planned):
                return event
        return None

    async def open_between(self, lower: datetime, upper: datetime, limit: int) -> list[Event]:
        """Open events created in ``[lower, upper)`` (internal: the sweeper). Unsorted: the caller keeps the
        window small enough to get them all (on SecantusDB a query costs what it matches, limit or not)."""
        bounds = {"$gte": ObjectId.from_datetime(lower), "$lt": ObjectId.from_datetime(upper)}
        cursor = self._col.find({"open": True, "_id": bounds}, _projection()).limit(limit)
        return [_plan(d) async for d in cursor]

    async def close(self, ids: list[ObjectId]) -> None:
        """Every planned delivery of these events is written: they leave the outbox (internal)."""
        for chunk in chunked(ids, CLOSE_BATCH):
            await self._col.update_many({"_id": {"$in": chunk}, "open": True}, {"$unset": {"open": ""}})


def _projection() -> Doc:
    """What the delivery log and the sweeper read of an event: never its body."""
    return {"account_id": 1, "event": 1, "created_at": 1, "planned": 1, "test": 1}
