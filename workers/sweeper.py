"""The sweeper: rebuilds the lanes from MongoDB, so a Redis flush, a killed worker or a lost enqueue loses
nothing. It runs as an arq cron job (one worker per tick, arq's ``unique`` cron jobs).

It puts back what is in no lane, no slot and not being recorded (``Lanes.add(only_if_absent=True)``):
- first attempts planned in open events (the outbox) but not written; an outbox whose events' deliveries
  are all written is closed (the engine closes most itself, as it records their last delivery);
- written deliveries still PENDING whose next attempt is overdue.

Every read is bounded, because a query costs the store what it matches, limit or not: a backlog of 10,000
events waiting for a dead endpoint stays open (and overdue), and reading all of it every tick took
SecantusDB's one core for most of a second. Each scan pages through the retention period in time windows
that match fewer than ``SWEEP_BATCH`` documents, a few windows per tick, and starts over at the end, so a
FLUSHALL under a large backlog is rebuilt over successive ticks while an idle history costs a few empty,
cheap windows.

Deliveries of ordered webhooks (with a sequence number) go back through their resource's gate
(``webhooks.lanes``), with the written PENDING deliveries of the same gates, so a rebuilt gate keeps the
sequence order. A gate whose active delivery is final in MongoDB (its ``advance`` was lost) is moved on.
A delivery in a manual run (sent outside the order) goes back to its lane like an unordered one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from bson import ObjectId

from webhooks.lanes import Enqueue, Kind, LaneItem, Lanes
from webhooks.models import AttemptTrigger, Delivery, DeliveryStatus
from webhooks.repositories.deliveries import DeliveryRepository, DueKey
from webhooks.repositories.events import EventRepository
from webhooks.repositories.expiry import ExpiryRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.deliveries import stored_attempt
from webhooks.settings import Settings
from webhooks.timeutil import utcnow

log = logging.getLogger(__name__)

# Small windows with a pause after each: a burst of large reads holds SecantusDB (reads share one lock) for
# everyone's publishes and loads. Measured in bench P8 "huge" (10,000 open events): windows of 200 read
# back to back every 5 s gave another account's deliveries a p99 of 1.8 s; with no sweeper at all, 0.27 s.
SWEEP_BATCH = 50  # documents read per window: about 15 ms of SecantusDB
TICK_BUDGET = 4 * SWEEP_BATCH  # documents read per scan and tick
WINDOW_PAUSE = 0.02  # seconds after a window that found documents
MAX_STEPS = 24  # windows per scan and tick (an empty one costs a few ms)
FIRST_WINDOW = timedelta(minutes=1)
MIN_WINDOW = timedelta(milliseconds=100)
APPROACH = 8  # a window spans at most this fraction of what is left of the pass (see ``Pager``)
MAX_WINDOW = timedelta(days=1)
EXPIRE_BUDGET = 1_000  # expired documents deleted per tick, with ``retention_sweep``


@dataclass
class Pager:
    """Pages through ``[floor, ceiling)`` in windows that each match fewer than ``SWEEP_BATCH`` documents:
    a full window shrinks and is read again; a sparse one grows. Starts over once past the ceiling.

    A read costs SecantusDB every document its window matches, whatever the limit (DESIGN §7), so a wide
    window that runs into a backlog is expensive: measured, 10,000 open events cost about 1 s per read,
    and shrinking from a day-wide window took five such reads per pass. So a window spans at most
    1/``APPROACH`` of what is left before the ceiling (a backlog is most likely recent: windows narrow as
    they near it; not after a pass that found nothing, so an idle worker's passes stay a few wide, empty
    reads), and the pager remembers where the last pass first met a full window and the width
    that worked there: the next pass stops its growing windows at that point and goes on at that width.

    A window as narrow as windows get that is still full is not skipped: the next reads go on within it,
    after the last document read (the scan's key), until one comes back short. More than ``SWEEP_BATCH``
    outboxes in one second (ids hold whole seconds) or overdue deliveries in ``MIN_WINDOW`` are all read."""

    at: datetime | None = None
    window: timedelta = FIRST_WINDOW
    dense_from: datetime | None = None  # where the previous pass first found a full window
    dense_window: timedelta = MIN_WINDOW  # the width that read fewer than a batch there
    approach: bool = True  # narrow near the ceiling: on the first pass, and after one that found anything
    _found_any: bool = False
    _shrunk: bool = False  # this pass has met a full window
    _seen_dense: datetime | None = None  # this pass's dense_from
    _dense_width: timedelta | None = None
    _resume: tuple[datetime, object] | None = None  # a full narrowest window: its upper end, and its key

    async def tick(self, floor: datetime, ceiling: datetime, scan: Scan) -> None:
        """A few windows, within the tick's budget of documents and steps; at most one pass."""
        read = 0
        for _ in range(MAX_STEPS):
            if self.at is None or self.at < floor:
                self.at, self._resume = floor, None
            if self.at >= ceiling:
                self._end_pass()
                return
            after: object | None = None
            if self._resume is not None:  # within a full narrowest window, after what was read of it
                upper, after = self._resume
            else:
                upper = self._upper(ceiling)
            found, more = await scan(self.at, upper, after)
            read += found
            self._found_any = self._found_any or found > 0
            if found:
                await asyncio.sleep(WINDOW_PAUSE)
            if more is not None and (after is not None or upper - self.at <= MIN_WINDOW):
                self._resume = (upper, more)  # as narrow as it gets and still full: go on after the last one
            elif found >= SWEEP_BATCH and upper - self.at > MIN_WINDOW:
                self._shrunk = True
                self.window = max((upper - self.at) / 8, MIN_WINDOW)  # too dense: read it again, narrower
            else:
                self._resume = None
                if found and self._shrunk and self._seen_dense is None:  # the first to fit, after shrinking
                    self._seen_dense, self._dense_width = self.at, upper - self.at
                self.window = upper - self.at
                self.at = upper
                if found < SWEEP_BATCH // 4:
                    self.window = min(self.window * 2, MAX_WINDOW)
            if read >= TICK_BUDGET:
                return

    def _upper(self, ceiling: datetime) -> datetime:
        assert self.at is not None
        upper = min(self.at + self.window, ceiling)
        if self.approach:  # near the ceiling (now), where a backlog is most likely, narrow geometrically
            upper = min(upper, self.at + max((ceiling - self.at) / APPROACH, MIN_WINDOW))
        if self.dense_from is not None:
            if self.at < self.dense_from:
                upper = min(upper, self.dense_from)  # do not run into the backlog with a wide window
            elif self.at < self.dense_from + self.dense_window:
                upper = min(upper, self.at + self.dense_window)
        return upper

    def _end_pass(self) -> None:
        self.at = None  # the next tick starts over
        if self._seen_dense is not None:  # else the old landmark stays: harmless if that backlog is gone
            self.dense_from, self.dense_window = self._seen_dense, self._dense_width or MIN_WINDOW
        self._seen_dense, self._dense_width, self._shrunk = None, None, False
        if not self._found_any:  # nothing open: the next pass is a few wide, empty (cheap) reads
            self.window = MAX_WINDOW
        self.approach, self._found_any = self._found_any, False


# A scan reads ``[lower, upper)`` after its own key (None: from the start) and says how many documents it
# read, and the key to go on after if it read a full batch (there may be more), else None.
Scan = Callable[[datetime, datetime, object | None], Awaitable[tuple[int, object | None]]]


@dataclass
class Sweeper:
    settings: Settings
    lanes: Lanes
    events: EventRepository
    deliveries: DeliveryRepository
    webhooks: WebhookRepository
    expiry: ExpiryRepository | None = None  # given with ``retention_sweep``: it deletes expired documents
    _outbox: Pager = field(default_factory=Pager)
    _overdue: Pager = field(default_factory=Pager)
    _running: bool = False

    async def sweep(self) -> int:
        """One tick; how many attempts it put back. A tick that finds the previous one still running (a store
        that stopped answering) does nothing: arq's cron starts a tick on time whatever, and the ticks that
        piled up would otherwise all read at once when the store came back, sharing the pagers."""
        if self._running:
            log.info("sweeper: the previous tick is still running; skipping this one")
            return 0
        self._running = True
        try:
            return await self._sweep()
        finally:
            self._running = False

    async def _sweep(self) -> int:
        before = utcnow() - timedelta(seconds=self.settings.sweep_grace)
        oldest = utcnow() - timedelta(days=self.settings.delivery_retention_days)
        counts: list[int] = []

        async def outbox(lower: datetime, upper: datetime, after: object | None) -> tuple[int, object | None]:
            found, requeued, more = await self._scan_outbox(lower, upper, cast(ObjectId | None, after))
            counts.append(requeued)
            return found, more

        async def overdue(
            lower: datetime, upper: datetime, after: object | None
        ) -> tuple[int, object | None]:
            found, requeued, more = await self._scan_overdue(lower, upper, cast(DueKey | None, after))
            counts.append(requeued)
            return found, more

        await self._outbox.tick(oldest, before, outbox)
        await self._overdue.tick(oldest, before, overdue)
        if self.expiry is not None:
            await self.expiry.expire(utcnow(), EXPIRE_BUDGET)
        requeued = sum(counts)
        if requeued:
            log.warning("sweeper re-queued %d attempts", requeued)
        return requeued

    async def _scan_outbox(
        self, lower: datetime, upper: datetime, after: ObjectId | None
    ) -> tuple[int, int, ObjectId | None]:
        events, more = await self.events.open_between(lower, upper, SWEEP_BATCH, after)
        planned = {
            LaneItem(str(p.webhook_id), str(p.delivery_id), 1, str(e.id), Kind.NEW): e
            for e in events
            for p in e.planned
            if not p.held and p.seq is None
        }
        ordered = [
            e.pending_delivery(p) for e in events for p in e.planned if not p.held and p.seq is not None
        ]
        requeued = await self._gated([(d, False) for d in ordered])
        # Redis first, then MongoDB: an attempt absent from Redis has either been recorded already (the
        # engine writes MongoDB before it clears its recording mark) or is lost. The other order would
        # re-queue an attempt recorded between the two reads, and send it twice.
        absent = await self.lanes.absent(list(planned), utcnow())
        # An item still in Redis is being handled: its event stays open for now. Only the absent ones (and
        # ordered ones, which the gates hold) need MongoDB to say whether they are written.
        written = await self.deliveries.existing(
            [ObjectId(i.delivery_id) for i in absent] + [d.id for d in ordered]
        )
        gone = set(absent)
        unwritten = {e.id for i, e in planned.items() if i not in gone}
        unwritten |= {planned[i].id for i in absent if ObjectId(i.delivery_id) not in written}
        unwritten |= {d.event_id for d in ordered if d.id not in written}
        # a batch outbox lists several events: it is closed once all of them are written
        still_open = {e.outbox for e in events if e.id in unwritten}
        await self.events.close([o for o in {e.outbox for e in events} if o not in still_open])
        lost = [i for i in absent if ObjectId(i.delivery_id) not in written]
        limits = await self._limits({ObjectId(i.webhook_id) for i in lost})
        entries = [
            Enqueue(
                i,
                due=planned[i].created_at,
                limit=limits.get(ObjectId(i.webhook_id), self.settings.webhook_max_in_flight),
            )
            for i in lost
        ]
        return len(events), requeued + await self.lanes.add(entries, only_if_absent=True), more

    async def _gated(self, found: list[tuple[Delivery, bool]]) -> int:
        """Ordered deliveries (unwritten ones of open events, or written PENDING ones): put each back in
        its gate if it is lost, and move on gates whose active delivery is final.

        Redis is read first, as for the outbox: a delivery that is in no gate (or is its gate's active one
        and in no lane, slot or recording) and is still unwritten/PENDING afterwards is lost.
        """
        if not found:
            return 0
        now = utcnow()
        deliveries = [d for d, _ in found]
        written = {d.id for d, w in found if w}
        keys = [(str(d.webhook_id), d.resource or "", str(d.id)) for d in deliveries]
        states = await self.lanes.gate_states(keys)
        items = {d.id: _next_attempt(d, d.id in written) for d in deliveries}
        absent = {ObjectId(i.delivery_id) for i in await self.lanes.absent(list(items.values()), now)}
        candidates = [
            d
            for d, (in_gate, active) in zip(deliveries, states, strict=True)
            if not in_gate or (active == str(d.id) and d.id in absent)
        ]
        actives = {
            (d.webhook_id, d.resource or "", ObjectId(active))
            for d, (_, active) in zip(deliveries, states, strict=True)
            if active is not None and active != str(d.id)
        }
        # MongoDB second: which candidates are still to be sent, and which active ones are final
        stored = await self.deliveries.stored_by_ids([d.id for d in candidates] + [a for _, _, a in actives])
        lost = [d for d in candidates if _still_pending(d, d.id in written, stored.get(d.id))]
        stale = [
            (str(w), r, str(a))
            for w, r, a in actives
            if (s := stored.get(a)) is not None and s.status is not DeliveryStatus.PENDING
        ]
        moved = await self.lanes.advance(stale, now) if stale else 0
        if not lost:
            return moved
        # a rebuilt gate also takes its written PENDING delivery (one mid-retry), so the order holds
        gates = sorted({(d.webhook_id, d.resource or "") for d in lost})
        pending = await self.deliveries.pending_in_gates(gates, SWEEP_BATCH)
        every = {d.id: (d, True) for d in pending if _through_gate(d)} | {
            d.id: (d, d.id in written) for d in lost
        }
        limits = await self._limits({d.webhook_id for d, _ in every.values()})
        entries = [
            Enqueue(
                _next_attempt(d, w),
                due=d.next_attempt_at or d.created_at,
                limit=limits.get(d.webhook_id, self.settings.webhook_max_in_flight),
                resource=d.resource,
                seq=d.seq,
            )
            for d, w in sorted(every.values(), key=lambda dw: dw[0].seq or 0)
        ]
        return moved + await self.lanes.add(entries, only_if_absent=True)

    async def _scan_overdue(
        self, lower: datetime, upper: datetime, after: DueKey | None
    ) -> tuple[int, int, DueKey | None]:
        found, more = await self.deliveries.due_between(lower, upper, SWEEP_BATCH, after)
        requeued = await self._gated([(d, True) for d in found if _through_gate(d)])
        overdue = [d for d in found if not _through_gate(d)]
        limits = await self._limits({d.webhook_id for d in overdue})
        entries = [
            Enqueue(
                stored_attempt(d),
                due=d.next_attempt_at or d.created_at,
                limit=limits.get(d.webhook_id, self.settings.webhook_max_in_flight),
            )
            for d in overdue
        ]
        return len(found), requeued + await self.lanes.add(entries, only_if_absent=True), more

    async def _limits(self, webhook_ids: set[ObjectId]) -> dict[ObjectId, int]:
        if not webhook_ids:
            return {}
        found = await self.webhooks.get_many(list(webhook_ids))
        return {i: w.in_flight_limit(self.settings.webhook_max_in_flight) for i, w in found.items()}


def _through_gate(delivery: Delivery) -> bool:
    """Whether the delivery's attempts go through its resource's ordering gate: an ordered one in its
    automatic run. A manual run (``retryDelivery``, ``recoverDeliveries``) is sent outside the order, in the
    lane only; taken for a lost member of its gate, it would hold up the later deliveries of its resource
    until it is final, and be queued a second time when it became the gate's active delivery."""
    return delivery.ordered and delivery.run_trigger is not AttemptTrigger.MANUAL


def _next_attempt(delivery: Delivery, written: bool) -> LaneItem:
    """The lane item of a delivery's next attempt: its first (unwritten) or a stored one."""
    if not written:
        return LaneItem(str(delivery.webhook_id), str(delivery.id), 1, str(delivery.event_id), Kind.NEW)
    return stored_attempt(delivery)


def _still_pending(delivery: Delivery, written: bool, stored: Delivery | None) -> bool:
    """An unwritten delivery that is still unwritten, or a written one still at the same attempt."""
    if not written:
        return stored is None
    return (
        stored is not None
        and stored.status is DeliveryStatus.PENDING
        and stored.attempt_count == delivery.attempt_count
    )
