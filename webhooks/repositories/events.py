"""Events: the stored body, and the outbox of the deliveries it must make.

An event lists its planned fan-out and stays *open* until every planned delivery has been written (its
first attempt finished, or it was recorded HELD). Until then, the event is where an unwritten delivery
lives: the delivery log and ``delivery(id)`` read it from here, and the sweeper rebuilds lost lane entries
from it. What keeps events open is an *outbox document* in this collection, with ``open: true``:

- a **batch outbox** for the events one write stores together (one per account and at most
  ``BATCH_OUTBOX_EVENTS`` events): their plans, without bodies. It is inserted in the same ordered
  ``insert_many`` as its events, before them, so no event is ever stored without it. Closing the batch
  deletes one small document, where closing each event would rewrite each (with its body and two index
  entries: measured on SecantusDB, 0.55 ms an event against 0.19 ms a batch, bench P8 "huge").
- the **event itself**, flagged ``open``: an event stored alone (a batch outbox would cost it one more
  write), an event stored with an idempotency key (its insert may meet the key taken, and a batch outbox must
  not list an event that was never stored), and events stored by earlier versions. Closing unsets the flag.

Readers expand a batch outbox into its events (``Event.batch`` says which outbox lists one), so the rest
of the service sees open events either way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import pairwise

from bson import Binary, ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from webhooks.db import DUPLICATE_KEY, Collections, Doc, chunked, find_by_ids
from webhooks.ids import id_at
from webhooks.models import Event, OutboxRef, Planned
from webhooks.timeutil import as_utc

# An event's id and its deliveries' ids are minted together; ObjectIds hold whole seconds, so their times
# differ by at most one second (two, with room for events stored by earlier versions).
PLANNING_WINDOW = timedelta(seconds=2)
# A batch outbox's id carries the time of its newest event, so it comes after every delivery it plans, by
# at most the time an event waits for its write batch (seconds, if the store stalls): read this far ahead.
OUTBOX_LAG = timedelta(minutes=1)
BATCH_OUTBOX_EVENTS = 50  # events per batch outbox: what the sweeper reads of one is bounded
# A close holds the events collection's write lock (SecantusDB: per collection) for every document it
# rewrites, and each publishEvent's insert waits behind it: closes stay short.
CLOSE_BATCH = 10


def stored_event_doc(event: Event, retention: timedelta, idempotency_key: str | None) -> Doc:
    """The document ``event`` is stored as (open by itself if it has no batch outbox and sends something)."""
    doc: Doc = {
        "_id": event.id,
        "account_id": event.account_id,
        "event": event.event,
        "body": Binary(event.body),
        "created_at": event.created_at,
        "expires_at": event.created_at + retention,
        "planned": [_planned_doc(p) for p in event.planned],
        "test": event.test,
    }
    if event.batch is not None:
        doc["outbox"] = {"id": event.batch.id, "n": event.batch.size}
    elif _sends(event):
        doc["open"] = True
    if idempotency_key is not None:
        doc["idempotency_key"] = idempotency_key
    return doc


def _sends(event: Event) -> bool:
    return any(not p.held for p in event.planned)


def _planned_doc(p: Planned) -> Doc:
    doc: Doc = {"delivery_id": p.delivery_id, "webhook_id": p.webhook_id, "held": p.held}
    if p.seq is not None:
        doc["resource"] = p.resource
        doc["seq"] = p.seq
    return doc


def _batch_outbox_doc(outbox_id: ObjectId, events: Sequence[Event], retention: timedelta) -> Doc:
    """One batch outbox: the plans of its events (one account's), without their bodies."""
    newest = max(e.created_at for e in events)
    return {
        "_id": outbox_id,
        "account_id": events[0].account_id,
        "open": True,
        "created_at": newest,
        "expires_at": newest + retention,
        "events": [
            {
                "_id": e.id,
                "event": e.event,
                "created_at": e.created_at,
                "planned": [_planned_doc(p) for p in e.planned],
                "test": e.test,
            }
            for e in events
        ],
    }


def _outbox_id(events: Sequence[Event]) -> ObjectId:
    """A new id with the time of the newest event (ids are found by time): that second, this process's
    unique remainder."""
    newest = max(e.id for e in events)
    return ObjectId(newest.binary[:4] + ObjectId().binary[4:])


def _batched(events: Sequence[Event], retention: timedelta) -> tuple[list[Doc], dict[ObjectId, OutboxRef]]:
    """Batch outboxes for ``events`` (per account, in chunks of two or more), and each listed event's
    reference; an event left alone is its own outbox."""
    by_account: dict[ObjectId, list[Event]] = defaultdict(list)
    for e in events:
        by_account[e.account_id].append(e)
    docs: list[Doc] = []
    refs: dict[ObjectId, OutboxRef] = {}
    for group in by_account.values():
        for chunk in chunked(group, BATCH_OUTBOX_EVENTS):
            if len(chunk) == 1:  # its own outbox: a write less (a lone publish costs 1.2 docs a delivery)
                continue
            outbox_id = _outbox_id(chunk)
            docs.append(_batch_outbox_doc(outbox_id, chunk, retention))
            refs |= {e.id: OutboxRef(outbox_id, len(chunk), batch=True) for e in chunk}
    return docs, refs


def _open_events(doc: Doc) -> list[Event]:
    """The open events an outbox document stands for (bodies left out)."""
    if "events" not in doc:  # an event open by itself
        return [Event.from_doc({**doc, "body": b""})]
    ref = OutboxRef(doc["_id"], len(doc["events"]), batch=True)
    return [
        replace(Event.from_doc({**e, "account_id": doc["account_id"], "body": b""}), batch=ref)
        for e in doc["events"]
    ]


class EventRepository:
    def __init__(self, cols: Collections) -> None:
        self._col = cols.events

    async def insert_events(
        self, events: Sequence[tuple[Event, str | None]], retention: timedelta
    ) -> list[Event | None]:
        """Store events with their idempotency keys in one ordered write: the batch outboxes first, then the
        events, those with a key last. Each event as stored (with its batch outbox), or None for one whose
        key is already used."""
        unkeyed = [e for e, key in events if key is None and _sends(e)]
        outboxes, refs = _batched(unkeyed, retention)
        stored = [replace(e, batch=refs[e.id]) if e.id in refs else e for e, _ in events]
        order = sorted(range(len(events)), key=lambda i: events[i][1] is not None)
        docs = outboxes + [stored_event_doc(stored[i], retention, events[i][1]) for i in order]
        took = dict(zip(order, (await _insert_in_order(self._col, docs))[len(outboxes) :], strict=True))
        return [e if took[i] else None for i, e in enumerate(stored)]

    async def by_idempotency_key(self, account_id: ObjectId, key: str, since: datetime) -> Event | None:
        """The event holding the key if it was stored ``since`` then; an older holder gives the key up (it
        may be used again). Read through ``account_idempotency_key_set`` (unique: at most one holder, so the
        window is checked here, and the filter is exactly the index's key, which ``explain`` on SecantusDB
        reports plainly; it reports a scan for a filter with more fields)."""
        doc = await self._col.find_one({"account_id": account_id, "idempotency_key": key})
        if doc is None:
            return None
        if as_utc(doc["created_at"]) >= since:
            return Event.from_doc(doc)
        # by id: nothing but this moves an event's key or its time, so the event read is the one
        await self._col.update_one({"_id": doc["_id"]}, {"$unset": {"idempotency_key": ""}})
        return None

    async def get_many(self, ids: list[ObjectId]) -> dict[ObjectId, Event]:
        """Events with their bodies (internal, worker side: not account-scoped)."""
        return {d["_id"]: Event.from_doc(d) async for d in find_by_ids(self._col, ids)}

    # -- the outbox ------------------------------------------------------------------------------------

    async def open_in_window(
        self, account_id: ObjectId, lower: ObjectId, upper: ObjectId, event: str | None
    ) -> list[Event]:
        """Open events of one account whose outbox ids fall in ``[lower, upper)`` (bodies left out)."""
        query: Doc = {"account_id": account_id, "open": True, "_id": {"$gte": lower, "$lt": upper}}
        found = [e async for d in self._col.find(query, _projection()) for e in _open_events(d)]
        return [e for e in found if event is None or e.event == event]

    async def planning(self, account_id: ObjectId, delivery_id: ObjectId) -> Event | None:
        """The open event that plans ``delivery_id`` (bodies left out).

        A publish mints its delivery ids and then the event's id at once, so the event's id lies within a
        second of the delivery's, and its batch outbox's id usually too: the account's open events in that
        window are read (``account_open_newest``) and searched here, which spares every event an index entry
        per planned delivery. A batch outbox written after a stalled write may come later: then the rest
        of ``OUTBOX_LAG`` is read."""
        at = delivery_id.generation_time
        bounds = [at - PLANNING_WINDOW, at + PLANNING_WINDOW, at + OUTBOX_LAG]
        for lower, upper in pairwise(bounds):
            query = {
                "account_id": account_id,
                "open": True,
                "_id": {"$gte": id_at(lower), "$lt": id_at(upper)},  # clamped: any id may be asked about
            }
            async for doc in self._col.find(query, _projection()):
                for event in _open_events(doc):
                    if any(p.delivery_id == delivery_id for p in event.planned):
                        return event
        return None

    async def open_between(
        self, lower: datetime, upper: datetime, limit: int, after: ObjectId | None = None
    ) -> tuple[list[Event], ObjectId | None]:
        """Open events whose outbox ids fall in ``[lower, upper)`` (internal: the sweeper), from at most
        ``limit`` outbox documents in id order, after the outbox ``after`` if given; and the id to go on
        after when ``limit`` documents came back (there may be more), else None. An id holds whole seconds,
        so a window narrower than a second reads its whole second or nothing; the caller keeps windows
        small (on SecantusDB a query costs what it matches, limit or not) and goes on after that id when
        one is full."""
        bounds: dict[str, ObjectId] = {"$gte": id_at(lower), "$lt": id_at(upper)}
        if after is not None:
            bounds["$gt"] = after
        cursor = self._col.find({"open": True, "_id": bounds}, _projection()).sort("_id", 1).limit(limit)
        docs = await cursor.to_list()
        more = docs[-1]["_id"] if len(docs) >= limit else None
        return [e for d in docs for e in _open_events(d)], more

    async def close(self, outboxes: Sequence[OutboxRef]) -> None:
        """Every planned delivery of these outboxes' events is written: they leave the outbox (internal).
        A batch outbox is deleted; an event open by itself has its flag unset."""
        batches = sorted({o.id for o in outboxes if o.batch})
        singles = sorted({o.id for o in outboxes if not o.batch})
        for chunk in chunked(batches, CLOSE_BATCH):  # "events": never an event document
            await self._col.delete_many({"_id": {"$in": chunk}, "events": {"$exists": True}})
        for chunk in chunked(singles, CLOSE_BATCH):
            await self._col.update_many({"_id": {"$in": chunk}, "open": True}, {"$unset": {"open": ""}})


async def _insert_in_order(collection: AsyncCollection[Doc], docs: list[Doc]) -> list[bool]:
    """``insert_many``, ordered: no document is written before the ones ahead of it. One whose unique key is
    taken is left (False) and the rest are sent again (a round trip more: a replayed idempotency key)."""
    took = [True] * len(docs)
    start = 0
    while start < len(docs):
        try:
            await collection.insert_many(docs[start:], ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if len(errors) != 1 or errors[0].get("code") != DUPLICATE_KEY:
                raise
            failed = start + int(errors[0]["index"])
            took[failed] = False
            start = failed + 1
        else:
            break
    return took


def _projection() -> Doc:
    """What the delivery log and the sweeper read of an outbox document: never an event's body."""
    return {"account_id": 1, "event": 1, "created_at": 1, "planned": 1, "test": 1, "events": 1}
