"""Deliveries: one document per delivery, its attempts embedded, written when its first attempt finishes.

Until then a delivery exists only in its event's outbox (``webhooks.repositories.events``): the reads here
(the delivery log, ``get``) merge those planned deliveries in as PENDING, so clients see no difference.
Write budget: a delivery that succeeds at once costs one document insert; each later attempt one update.

Account-scoped reads take the account id; the few internal, worker-side lookups say so in their names
(``stored_by_ids``, ``overdue``, ``existing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateOne

from webhooks.db import Collections, Doc, find_by_ids, insert_new
from webhooks.ids import id_at
from webhooks.models import Attempt, AttemptTrigger, Delivery, DeliveryStatus
from webhooks.pagination import Page
from webhooks.repositories.events import OUTBOX_LAG, EventRepository

# Where the sweeper's scan of overdue deliveries goes on within a window: (next_attempt_at, _id).
DueKey = tuple[datetime, ObjectId]

# The list query looks at a bounded window of ids (ObjectIds start with their creation time) and widens it
# only while it finds too few: on SecantusDB a sort+limit reads every match, so the window keeps it flat.
FIRST_WINDOW = timedelta(hours=1)
RESTART_BATCH = 500  # updates per bulk write of a recovery
WINDOW_GROWTH = 8
CLOCK_SKEW = timedelta(minutes=1)
# A delivery document keeps its newest attempts up to this many (``attempt_count`` counts them all). The
# schedule bounds an automatic run, but manual retries are not limited, and each appends to the one document:
# at up to ~13 KiB an attempt (4 KiB of body, 8 KiB of headers), about 1,300 of them reach MongoDB's 16 MiB
# document limit, and that refused append would fail its whole record batch (other accounts' attempts too),
# again every time the sweeper re-queued it. 100 attempts stay under ~1.5 MiB.
MAX_KEPT_ATTEMPTS = 100
# The delivery log filtered by a status other than SUCCEEDED reads this partial index (webhooks.db), named:
# for a filter with webhook_id, planners (SecantusDB's at least) pick (account_id, webhook_id, _id), which
# reads every delivery of the webhook to find the few of that status.
UNSUCCEEDED_INDEX = "account_unsucceeded_newest"


def delivery_doc(delivery: Delivery, *, expires_at: datetime, attempts: Sequence[Attempt] = ()) -> Doc:
    doc: Doc = {
        "_id": delivery.id,
        "account_id": delivery.account_id,
        "webhook_id": delivery.webhook_id,
        "event_id": delivery.event_id,
        "event": delivery.event,
        "status": delivery.status.value,
        "test": delivery.test,
        "attempt_count": delivery.attempt_count,
        "run_start": delivery.run_start,
        "run_trigger": delivery.run_trigger.value,
        "next_attempt_at": delivery.next_attempt_at,
        "created_at": delivery.created_at,
        "updated_at": delivery.updated_at,
        "expires_at": expires_at,
        "attempts": [a.to_doc() for a in attempts],
    }
    if delivery.run_from is not None:
        doc["run_from"] = delivery.run_from.value
    if delivery.ordered:
        doc["resource"] = delivery.resource
        doc["seq"] = delivery.seq
    return doc


@dataclass(frozen=True, slots=True)
class Recorded:
    """A finished attempt and the state it moves its delivery to."""

    delivery: Delivery  # as it was before this attempt
    attempt: Attempt
    status: DeliveryStatus
    next_attempt_at: datetime | None
    now: datetime
    first: bool  # the delivery has no document yet: this attempt writes it


@dataclass(frozen=True, slots=True)
class Unsent:
    """A delivery stopped without an attempt (webhook deleted or disabled before its turn)."""

    delivery: Delivery
    status: DeliveryStatus
    stored: bool


class DeliveryRepository:
    def __init__(self, cols: Collections, events: EventRepository) -> None:
        self._col = cols.deliveries
        self._events = events

    # -- writes ----------------------------------------------------------------------------------------

    async def insert_unsent(self, deliveries: Sequence[Delivery], retention: timedelta) -> None:
        """Deliveries recorded without an attempt (HELD at publish); ids already present are left as they
        are (a replayed publish is idempotent)."""
        await insert_new(
            self._col, [delivery_doc(d, expires_at=d.created_at + retention) for d in deliveries]
        )

    async def record_outcomes(self, recorded: Sequence[Recorded], retention: timedelta) -> list[bool]:
        """Finished attempts, in at most two writes: first attempts insert their delivery (a re-run's
        duplicate keeps the first), later ones append to it if it has not moved on meanwhile. Whether each
        took effect (False: a duplicate attempt, whose outcome the delivery does not hold)."""
        inserts: list[tuple[int, Doc]] = []
        updates: list[tuple[int, UpdateOne]] = []
        for i, r in enumerate(recorded):
            if r.first:
                moved = _moved(r.delivery, r.status, r.attempt.number, r.next_attempt_at, r.now)
                inserts.append((i, delivery_doc(moved, expires_at=r.now + retention, attempts=[r.attempt])))
            else:
                updates.append(
                    (
                        i,
                        UpdateOne(
                            {
                                "_id": r.delivery.id,
                                "attempt_count": r.attempt.number - 1,
                                "status": DeliveryStatus.PENDING.value,
                            },
                            {
                                "$set": {
                                    "status": r.status.value,
                                    "attempt_count": r.attempt.number,
                                    "next_attempt_at": r.next_attempt_at,
                                    "updated_at": r.now,
                                },
                                "$push": {
                                    "attempts": {"$each": [r.attempt.to_doc()], "$slice": -MAX_KEPT_ATTEMPTS}
                                },
                            },
                        ),
                    )
                )
        took = [True] * len(recorded)
        if inserts:
            for (i, _), ok in zip(inserts, await insert_new(self._col, [d for _, d in inserts]), strict=True):
                took[i] = ok
        if updates:
            result = await self._col.bulk_write([u for _, u in updates], ordered=False)
            if result.matched_count < len(updates):  # rare: find which ones hold their attempt
                held = await self._holding([recorded[i].attempt for i, _ in updates])
                for i, _ in updates:
                    took[i] = recorded[i].attempt.id in held
        return took

    async def _holding(self, attempts: Sequence[Attempt]) -> set[ObjectId]:
        """The ids of these attempts that their deliveries hold."""
        ids = {a.id for a in attempts}
        held: set[ObjectId] = set()
        async for doc in find_by_ids(self._col, [a.delivery_id for a in attempts], {"attempts._id": 1}):
            held |= {a["_id"] for a in doc.get("attempts", ()) if a["_id"] in ids}
        return held

    async def record_unsent(
        self, unsent: Sequence[Unsent], now: datetime, retention: timedelta
    ) -> set[ObjectId]:
        """Deliveries that will not be sent (HELD, or FAILED: webhook or event gone); the ids of the first
        ones that this call wrote (one written before, by a duplicate attempt, is left as it is)."""
        inserts = [
            delivery_doc(_moved(u.delivery, u.status, 0, None, now), expires_at=now + retention)
            for u in unsent
            if not u.stored
        ]
        updates = [
            UpdateOne(
                {
                    "_id": u.delivery.id,
                    "attempt_count": u.delivery.attempt_count,
                    "status": DeliveryStatus.PENDING.value,
                },
                {"$set": {"status": u.status.value, "next_attempt_at": None, "updated_at": now}},
            )
            for u in unsent
            if u.stored
        ]
        written = await insert_new(self._col, inserts)
        if updates:
            await self._col.bulk_write(updates, ordered=False)
        return {doc["_id"] for doc, new in zip(inserts, written, strict=True) if new}

    async def restart(
        self, account_id: ObjectId, ids: list[ObjectId], statuses: list[DeliveryStatus], now: datetime
    ) -> list[Delivery]:
        """Start a new manual run for deliveries currently in ``statuses``; return the ones restarted.

        Each update is conditional on the state just read, and only the deliveries this call moved (marked
        with its own run id) are returned: a delivery that changed meanwhile is neither counted nor queued.
        """
        wanted = {s.value for s in statuses}
        # read in chunks (``find_by_ids``): one $in of 10,000 ids took SecantusDB close to a minute
        docs = [
            d
            async for d in find_by_ids(self._col, ids, {"attempts": 0})
            if d["account_id"] == account_id and d["status"] in wanted
        ]
        run_id = ObjectId()
        updates = [
            UpdateOne(
                {"_id": doc["_id"], "status": doc["status"], "attempt_count": doc["attempt_count"]},
                {
                    "$set": {
                        "status": DeliveryStatus.PENDING.value,
                        "run_start": doc["attempt_count"] + 1,
                        "run_trigger": AttemptTrigger.MANUAL.value,
                        "run_from": doc["status"],
                        "run_id": run_id,
                        "next_attempt_at": now,
                        "updated_at": now,
                    }
                },
            )
            for doc in docs
        ]
        if not updates:
            return []
        for start in range(0, len(updates), RESTART_BATCH):
            await self._col.bulk_write(updates[start : start + RESTART_BATCH], ordered=False)
        read = find_by_ids(self._col, [d["_id"] for d in docs], {"run_id": 1})
        moved = {d["_id"] async for d in read if d.get("run_id") == run_id}
        return [
            Delivery.from_doc(
                {
                    **d,
                    "status": DeliveryStatus.PENDING.value,
                    "run_start": d["attempt_count"] + 1,
                    "run_trigger": AttemptTrigger.MANUAL.value,
                    "run_from": d["status"],
                    "next_attempt_at": now,
                }
            )
            for d in docs
            if d["_id"] in moved
        ]

    # -- account-scoped reads --------------------------------------------------------------------------

    async def get(self, account_id: ObjectId, delivery_id: ObjectId) -> Delivery | None:
        doc = await self._col.find_one({"_id": delivery_id, "account_id": account_id}, {"attempts": 0})
        if doc is not None:
            return Delivery.from_doc(doc)
        event = await self._events.planning(account_id, delivery_id)
        # written (and its event closed) between the two reads?
        doc = await self._col.find_one({"_id": delivery_id, "account_id": account_id}, {"attempts": 0})
        if doc is not None:
            return Delivery.from_doc(doc)
        if event is None:
            return None
        return event.pending_delivery(next(p for p in event.planned if p.delivery_id == delivery_id))

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
        """Newest first. Served by (account_id[, webhook_id], _id desc), scanning an adaptive id window;
        deliveries not yet written (PENDING in their event's outbox) are merged in."""
        base: Doc = {"account_id": account_id}
        if webhook_id is not None:
            base["webhook_id"] = webhook_id
        if status is not None:
            base["status"] = status.value
        if event is not None:
            base["event"] = event
        with_planned = status in (None, DeliveryStatus.PENDING)
        # the first page starts just after now (a minute of margin for clock skew between processes)
        upper = after or ObjectId.from_datetime(datetime.now(tz=oldest.tzinfo) + CLOCK_SKEW)
        floor = ObjectId.from_datetime(oldest)
        window = FIRST_WINDOW
        found: list[Delivery] = []
        while True:
            lower = max(ObjectId.from_datetime(upper.generation_time - window), floor)
            wanted = first + 1 - len(found)
            # planned ones first: one written meanwhile then shows up in the query below too (and wins)
            planned = await self._planned(account_id, webhook_id, event, lower, upper) if with_planned else []
            query = {**base, "_id": {"$lt": upper, "$gte": lower}}
            cursor = self._col.find(query, {"attempts": 0}).sort("_id", DESCENDING).limit(wanted)
            if status is not None and status is not DeliveryStatus.SUCCEEDED:
                cursor = cursor.hint(UNSUCCEEDED_INDEX)  # the few of that status, not every delivery
            batch = {d.id: d for d in planned} | {d["_id"]: Delivery.from_doc(d) async for d in cursor}
            found += sorted(batch.values(), key=lambda d: d.id, reverse=True)[:wanted]
            if len(found) > first or lower <= floor:
                break
            upper, window = lower, window * WINDOW_GROWTH
        return Page(found[:first], has_next_page=len(found) > first)

    async def _planned(
        self,
        account_id: ObjectId,
        webhook_id: ObjectId | None,
        event: str | None,
        lower: ObjectId,
        upper: ObjectId,
    ) -> list[Delivery]:
        """Planned deliveries in ``[lower, upper)`` that are not written yet."""
        events = await self._events.open_in_window(
            account_id, lower, ObjectId.from_datetime(upper.generation_time + OUTBOX_LAG), event
        )
        candidates = {
            p.delivery_id: e.pending_delivery(p)
            for e in events
            for p in e.planned
            if not p.held
            and lower <= p.delivery_id < upper
            and (webhook_id is None or p.webhook_id == webhook_id)
        }
        if not candidates:
            return []
        written = await self.existing(list(candidates))
        return [d for i, d in candidates.items() if i not in written]

    async def attempts_of(self, delivery_ids: list[ObjectId]) -> dict[ObjectId, list[Attempt]]:
        """The attempts of several deliveries (of one account: the caller holds them), oldest first."""
        found: dict[ObjectId, list[Attempt]] = {d: [] for d in delivery_ids}
        fields = {"account_id": 1, "webhook_id": 1, "event": 1, "attempts": 1}
        async for doc in find_by_ids(self._col, delivery_ids, fields):
            found[doc["_id"]] = sorted(
                (Attempt.from_doc(a, doc) for a in doc.get("attempts") or ()), key=lambda a: a.number
            )
        return found

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
                "$gte": id_at(since - timedelta(seconds=1)),
                "$lt": id_at(until + timedelta(seconds=1)),
            },
            "created_at": {"$gte": since, "$lt": until},
            "status": {"$in": [s.value for s in statuses]},
        }
        docs = await self._col.find(query, {"_id": 1}).sort("_id", DESCENDING).limit(limit).to_list()
        return [d["_id"] for d in docs]

    # -- internal, worker side (not account-scoped) ----------------------------------------------------

    async def stored_by_ids(self, ids: list[ObjectId]) -> dict[ObjectId, Delivery]:
        if not ids:
            return {}
        return {d["_id"]: Delivery.from_doc(d) async for d in find_by_ids(self._col, ids, {"attempts": 0})}

    async def existing(self, ids: list[ObjectId]) -> set[ObjectId]:
        """Which of these deliveries are written."""
        if not ids:
            return set()
        return {d["_id"] async for d in find_by_ids(self._col, ids, {"_id": 1})}

    async def due_between(
        self, lower: datetime, upper: datetime, limit: int, after: DueKey | None = None
    ) -> tuple[list[Delivery], DueKey | None]:
        """Written, pending deliveries whose next attempt fell due in ``[lower, upper)`` (the sweeper's
        scan), at most ``limit`` in ``(next_attempt_at, _id)`` order, after ``after`` if given; and the key
        to go on after when ``limit`` came back (there may be more), else None. The caller keeps windows
        small: on SecantusDB a query costs what it matches, limit or not."""
        due = {"$gte": lower, "$lt": upper}
        query: Doc = {"status": DeliveryStatus.PENDING.value, "next_attempt_at": due}
        if after is not None:
            at, last = after
            query["$or"] = [{"next_attempt_at": {"$gt": at}}, {"next_attempt_at": at, "_id": {"$gt": last}}]
        order = [("next_attempt_at", ASCENDING), ("_id", ASCENDING)]
        cursor = self._col.find(query, {"attempts": 0}).sort(order).limit(limit)
        found = [Delivery.from_doc(d) async for d in cursor]
        last_one = found[-1] if len(found) >= limit else None
        more = (last_one.next_attempt_at, last_one.id) if last_one and last_one.next_attempt_at else None
        return found, more

    async def pending_in_gates(self, gates: list[tuple[ObjectId, str]], limit: int) -> list[Delivery]:
        """Written, pending deliveries of these (webhook, resource) ordering gates (the sweeper's rebuild)."""
        if not gates:
            return []
        query: Doc = {
            "status": DeliveryStatus.PENDING.value,
            "$or": [{"webhook_id": w, "resource": r} for w, r in gates],
        }
        cursor = self._col.find(query, {"attempts": 0}).limit(limit)
        return [Delivery.from_doc(d) async for d in cursor]

    async def count_overdue(self, before: datetime, limit: int, max_time_ms: int) -> int:
        return await self._col.count_documents(
            {"status": DeliveryStatus.PENDING.value, "next_attempt_at": {"$lt": before}},
            limit=limit,
            maxTimeMS=max_time_ms,
        )


def _moved(
    delivery: Delivery, status: DeliveryStatus, attempts: int, next_at: datetime | None, now: datetime
) -> Delivery:
    return replace(delivery, status=status, attempt_count=attempts, next_attempt_at=next_at, updated_at=now)
