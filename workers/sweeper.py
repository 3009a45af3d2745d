"""The sweeper: rebuilds the lanes from MongoDB, so a Redis flush, a killed worker or a lost enqueue loses
nothing. It runs as an arq cron job (one worker per tick, arq's ``unique`` cron jobs).

Two bounded scans, each putting back what is in no lane and no slot (``Lanes.add(only_if_absent=True)``):
- open events (the outbox) older than the grace period: their planned deliveries not yet written; an
  event whose deliveries are all written is closed. The scan pages through the outbox from where the
  last one stopped, so a large backlog is covered a page per tick.
- written deliveries still PENDING whose next attempt is overdue by the grace period.

Deliveries of ordered webhooks (with a sequence number) go back through their resource's gate
(``webhooks.lanes``), with the written PENDING deliveries of the same gates, so a rebuilt gate keeps the
sequence order. A gate whose active delivery is final in MongoDB (its ``advance`` was lost) is moved on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId

from webhooks.lanes import Enqueue, Kind, LaneItem, Lanes
from webhooks.models import Delivery, DeliveryStatus
from webhooks.repositories.deliveries import DeliveryRepository
from webhooks.repositories.events import EventRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.deliveries import stored_attempt
from webhooks.settings import Settings
from webhooks.timeutil import utcnow

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


@dataclass
class Sweeper:
    settings: Settings
    lanes: Lanes
    events: EventRepository
    deliveries: DeliveryRepository
    webhooks: WebhookRepository
    _outbox_cursor: ObjectId | None = None

    async def sweep(self) -> int:
        """One pass; how many attempts it put back."""
        before = utcnow() - timedelta(seconds=self.settings.sweep_grace)
        requeued = await self._outbox(before) + await self._overdue(before)
        if requeued:
            log.warning("sweeper re-queued %d attempts", requeued)
        return requeued

    async def _outbox(self, before: datetime) -> int:
        events = await self.events.open_after(self._outbox_cursor, before, SWEEP_BATCH)
        # the next tick goes on from here, and starts over once the end is reached
        self._outbox_cursor = events[-1].id if len(events) == SWEEP_BATCH else None
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
        written = await self.deliveries.existing([ObjectId(i.delivery_id) for i in planned])
        unwritten = {e.id for i, e in planned.items() if ObjectId(i.delivery_id) not in written}
        if ordered:  # their events stay open while any of their planned deliveries is unwritten
            written_ordered = await self.deliveries.existing([d.id for d in ordered])
            unwritten |= {d.event_id for d in ordered if d.id not in written_ordered}
        await self.events.close([e.id for e in events if e.id not in unwritten])
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
        return requeued + await self.lanes.add(entries, only_if_absent=True)

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
        every = {d.id: (d, True) for d in pending if d.ordered} | {d.id: (d, d.id in written) for d in lost}
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

    async def _overdue(self, before: datetime) -> int:
        overdue = await self.deliveries.overdue(before, SWEEP_BATCH)
        requeued = await self._gated([(d, True) for d in overdue if d.ordered])
        overdue = [d for d in overdue if not d.ordered]
        limits = await self._limits({d.webhook_id for d in overdue})
        entries = [
            Enqueue(
                stored_attempt(d),
                due=d.next_attempt_at or d.created_at,
                limit=limits.get(d.webhook_id, self.settings.webhook_max_in_flight),
            )
            for d in overdue
        ]
        return requeued + await self.lanes.add(entries, only_if_absent=True)

    async def _limits(self, webhook_ids: set[ObjectId]) -> dict[ObjectId, int]:
        if not webhook_ids:
            return {}
        found = await self.webhooks.get_many(list(webhook_ids))
        return {i: w.in_flight_limit(self.settings.webhook_max_in_flight) for i, w in found.items()}


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
