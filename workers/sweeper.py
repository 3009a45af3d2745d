"""The sweeper: rebuilds the lanes from MongoDB, so a Redis flush, a killed worker or a lost enqueue loses
nothing. It runs as an arq cron job (one worker per tick, arq's ``unique`` cron jobs).

Two bounded scans, each putting back what is in no lane and no slot (``Lanes.add(only_if_absent=True)``):
- open events (the outbox) older than the grace period: their planned deliveries not yet written; an
  event whose deliveries are all written is closed. The scan pages through the outbox from where the
  last one stopped, so a large backlog is covered a page per tick.
- written deliveries still PENDING whose next attempt is overdue by the grace period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId

from webhooks.lanes import Enqueue, Kind, LaneItem, Lanes
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
            if not p.held
        }
        # Redis first, then MongoDB: an attempt absent from Redis has either been recorded already (the
        # engine writes MongoDB before it clears its recording mark) or is lost. The other order would
        # re-queue an attempt recorded between the two reads, and send it twice.
        absent = await self.lanes.absent(list(planned), utcnow())
        written = await self.deliveries.existing([ObjectId(i.delivery_id) for i in planned])
        unwritten = {e.id for i, e in planned.items() if ObjectId(i.delivery_id) not in written}
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
        return await self.lanes.add(entries, only_if_absent=True)

    async def _overdue(self, before: datetime) -> int:
        overdue = await self.deliveries.overdue(before, SWEEP_BATCH)
        limits = await self._limits({d.webhook_id for d in overdue})
        entries = [
            Enqueue(
                stored_attempt(d),
                due=d.next_attempt_at or d.created_at,
                limit=limits.get(d.webhook_id, self.settings.webhook_max_in_flight),
            )
            for d in overdue
        ]
        return await self.lanes.add(entries, only_if_absent=True)

    async def _limits(self, webhook_ids: set[ObjectId]) -> dict[ObjectId, int]:
        if not webhook_ids:
            return {}
        found = await self.webhooks.get_many(list(webhook_ids))
        return {i: w.in_flight_limit(self.settings.webhook_max_in_flight) for i, w in found.items()}
