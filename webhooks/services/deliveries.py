"""Publishing events and working with deliveries: publish, test, retry, recover, the delivery log."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from bson import ObjectId

from webhooks import metrics
from webhooks.coalesce import Coalescer
from webhooks.errors import ErrorCode, UserErrors
from webhooks.events import DELIVERED_NAMES, TEST_EVENT, EventName
from webhooks.handoff import EventHandoff
from webhooks.ids import parse_id
from webhooks.lanes import Enqueue, Kind, LaneItem, Lanes
from webhooks.models import Attempt, Delivery, DeliveryStatus, Event, Ordering, Planned, Principal, Webhook
from webhooks.operational import recipients
from webhooks.pagination import Page, check_page_size, decode_cursor
from webhooks.payloads import AuditLog, build_event_body, build_test_body, same_content
from webhooks.repositories.deliveries import DeliveryRepository
from webhooks.repositories.events import EventRepository
from webhooks.repositories.sequences import SequenceRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.webhook_cache import WebhookCache
from webhooks.services.webhooks import not_found
from webhooks.settings import Settings
from webhooks.timeutil import as_utc, utcnow
from webhooks.validation import check_replay

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 200
MAX_RECOVER = 10_000  # deliveries one recoverDeliveries call restarts


@dataclass(frozen=True, slots=True)
class Recovery:
    """What one recovery restarted (or would restart), and whether more deliveries matched than it took."""

    count: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class Published:
    event_id: ObjectId
    event: str  # the stored event's name (on a replay, the first request's)
    deliveries: list[Delivery]  # as just planned; on a replay, as they are now
    replayed: bool


@dataclass(frozen=True, slots=True)
class Storing:
    """One event to store, and the first attempts to queue once it is stored."""

    event: Event
    idempotency_key: str | None
    queue: list[Enqueue]


class DeliveryService:
    def __init__(
        self,
        settings: Settings,
        webhooks: WebhookRepository,
        webhook_cache: WebhookCache,
        events: EventRepository,
        deliveries: DeliveryRepository,
        lanes: Lanes,
        sequences: SequenceRepository | None = None,
        handoff: EventHandoff | None = None,
    ) -> None:
        self._settings = settings
        self._handoff = handoff
        self._sequences = sequences
        self._webhooks = webhooks
        self._webhook_cache = webhook_cache
        self._events = events
        self._deliveries = deliveries
        self._lanes = lanes
        self._store: Coalescer[Storing, bool] = Coalescer(
            self._store_batch, on_batch=metrics.batch_observer("publish")
        )

    @property
    def _retention(self) -> timedelta:
        return timedelta(days=self._settings.delivery_retention_days)

    # -- publishing --------------------------------------------------------------------------------

    async def publish(
        self,
        who: Principal,
        event: EventName,
        log: AuditLog,
        details: object,
        idempotency_key: str | None = None,
    ) -> Published:
        """Store the event with its planned fan-out (the outbox), then put the first attempts in the
        webhooks' lanes. No delivery document is written until its first attempt finishes."""
        if idempotency_key is not None:
            idempotency_key = idempotency_key.strip()
            if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
                raise UserErrors.one(
                    "idempotencyKey",
                    ErrorCode.INVALID,
                    f"idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                )
        now = utcnow()
        body = build_event_body(
            event.value, log, details, now=now, max_bytes=self._settings.max_payload_bytes
        )
        window_start = now - timedelta(hours=self._settings.idempotency_window_hours)
        if idempotency_key is not None:
            earlier = await self._events.by_idempotency_key(who.account_id, idempotency_key, window_start)
            if earlier is not None:
                return await self._replay(earlier, event.value, body, log.timestamp is not None)
        targets = await self._webhook_cache.subscribed(who.account_id, event.value)
        targets = [w for w in targets if w.accepts(body)]  # payload filters (webhooks.filters)
        planned = await self._plan(targets, body)
        stored = Event(ObjectId(), who.account_id, event.value, body, now, tuple(planned))
        if not await self._store_event(stored, idempotency_key, self._first_attempts(stored, targets)):
            # lost a race for the same idempotency key: answer with the winner
            assert idempotency_key is not None
            earlier = await self._events.by_idempotency_key(who.account_id, idempotency_key, window_start)
            if earlier is None:
                raise UserErrors.one(
                    "idempotencyKey", ErrorCode.CONFLICT, "idempotencyKey is in use, try again"
                )
            return await self._replay(earlier, event.value, body, log.timestamp is not None)
        return Published(
            stored.id, stored.event, [stored.pending_delivery(p) for p in planned], replayed=False
        )

    async def publish_system(
        self, account_id: ObjectId, event: EventName, body: bytes, about: ObjectId
    ) -> int:
        """Emit an operational event (``webhooks.operational``) built by HatchBeacon itself: stored and
        queued like a published one, to the account's webhooks that get it (never ``about`` itself).
        How many deliveries it planned."""
        subscribed = await self._webhook_cache.subscribed(account_id, event.value)
        targets = recipients(subscribed, event, body, about)
        if not targets:
            return 0
        planned = await self._plan(targets, body)
        stored = Event(ObjectId(), account_id, event.value, body, utcnow(), tuple(planned))
        await self._store_event(stored, None, self._first_attempts(stored, targets))
        return len(planned)

    async def _plan(self, targets: list[Webhook], body: bytes) -> list[Planned]:
        """One planned delivery per target; PER_RESOURCE webhooks get the next number of the resource."""
        resource = None
        if self._sequences is not None and any(w.ordering is Ordering.PER_RESOURCE for w in targets):
            resource = _resource_of(body)
        seqs: dict[ObjectId, int] = {}
        for w in targets:
            if resource is not None and w.ordering is Ordering.PER_RESOURCE:
                assert self._sequences is not None
                seqs[w.id] = await self._sequences.next(w.id, resource)
        # The ids are minted together, with no await in between, just before the event's own id: an event
        # is found from one of its deliveries by time (``EventRepository.planning``), with no index on them.
        return [
            Planned(ObjectId(), w.id, not w.enabled, resource, seqs[w.id])
            if w.id in seqs
            else Planned(ObjectId(), w.id, held=not w.enabled)
            for w in targets
        ]

    def _first_attempts(self, stored: Event, targets: list[Webhook]) -> list[Enqueue]:
        limits = {w.id: w.in_flight_limit(self._settings.webhook_max_in_flight) for w in targets}
        return [
            Enqueue(
                _first_attempt(stored, p),
                due=stored.created_at,
                limit=limits[p.webhook_id],
                resource=p.resource,
                seq=p.seq,
            )
            for p in stored.planned
            if not p.held
        ]

    async def _store_event(self, event: Event, idempotency_key: str | None, queue: list[Enqueue]) -> bool:
        """Write the event and its HELD deliveries, then queue ``queue`` (coalesced with concurrent
        publishes); False if another publish holds the idempotency key (nothing is queued then)."""
        return await self._store.call(Storing(event, idempotency_key, queue))

    async def _store_batch(self, items: list[Storing]) -> list[bool]:
        """Concurrent publishes: their events and held deliveries in at most two writes, then one Redis
        hand-off and one enqueue for all of them (in sequence order, for ordered webhooks' gates), side by
        side: a publish waits for one Redis round trip, not two (an attempt claimed before its event's copy
        lands reads the event from MongoDB, as on any hand-off miss)."""
        stored = await self._events.insert_events(
            [(i.event, i.idempotency_key) for i in items], self._retention
        )
        kept = [(i, e) for i, e in zip(items, stored, strict=True) if e is not None]
        await self._deliveries.insert_unsent([d for _, e in kept for d in _held(e)], self._retention)
        queue = self._enqueue(sorted((q for i, _ in kept for q in i.queue), key=lambda q: q.seq or 0))
        if self._handoff is None:
            await queue
        else:  # both are stored in MongoDB already: neither depends on the other
            await asyncio.gather(self._handoff.put([e for _, e in kept]), queue)
        return [e is not None for e in stored]

    async def _replay(self, event: Event, requested: str, body: bytes, log_time_given: bool) -> Published:
        """A repeated idempotency key: complete a fan-out that was cut short; send nothing new.

        (A first attempt that was planned but never queued is put back in its lane by the sweeper.) The
        key answers only for the event it was first used with: another event name, or another log or
        details (a caller reusing a key by mistake, not retrying), is a CONFLICT, as Stripe's keys do.
        """
        check_replay(event.event, requested)
        if not same_content(event.body, body, log_time_given=log_time_given):
            raise UserErrors.one(
                "idempotencyKey",
                ErrorCode.CONFLICT,
                "idempotencyKey was already used for an event with another log or details; "
                "use a new key for this one",
            )
        await self._deliveries.insert_unsent(_held(event), self._retention)
        ids = [p.delivery_id for p in event.planned]
        stored = await self._deliveries.stored_by_ids(ids)
        deliveries = [stored.get(p.delivery_id) or event.pending_delivery(p) for p in event.planned]
        return Published(event.id, event.event, deliveries, replayed=True)

    async def _enqueue(self, entries: list[Enqueue]) -> None:
        """Queue after the MongoDB write. The write is the commitment: if Redis fails here, the client still
        gets its answer (a retry would duplicate the event) and the sweeper queues the attempts later."""
        try:
            await self._lanes.add(entries)
        except Exception as exc:
            log.warning(
                "could not queue %d attempts (%s); the sweeper will", len(entries), type(exc).__name__
            )

    # -- test, retry, recover ----------------------------------------------------------------------

    async def test(self, who: Principal, webhook_id: str) -> Delivery:
        """Send ``webhook.test`` once, through the same signing path; also to a disabled webhook."""
        oid = parse_id(webhook_id)
        webhook = await self._webhooks.get(who.account_id, oid)
        if webhook is None:
            raise not_found("webhook", webhook_id)
        now = utcnow()
        body = build_test_body(str(webhook.id), webhook.name, now=now)
        planned = Planned(ObjectId(), webhook.id, held=False)
        event = Event(ObjectId(), who.account_id, TEST_EVENT, body, now, (planned,), test=True)
        limit = webhook.in_flight_limit(self._settings.webhook_max_in_flight)
        await self._store_event(event, None, [Enqueue(_first_attempt(event, planned), due=now, limit=limit)])
        return event.pending_delivery(planned)

    async def retry(self, who: Principal, delivery_id: str) -> Delivery:
        """A fresh manual attempt of one delivery that is not already pending."""
        oid = parse_id(delivery_id)
        delivery = await self._deliveries.get(who.account_id, oid)
        if delivery is None:
            raise not_found("delivery", delivery_id)
        if delivery.status is DeliveryStatus.PENDING:
            raise UserErrors.one(
                "id", ErrorCode.CONFLICT, "this delivery is already pending; wait for it to finish"
            )
        webhook = await self._webhooks.get(who.account_id, delivery.webhook_id)
        if webhook is None:
            raise UserErrors.one("id", ErrorCode.CONFLICT, "the webhook of this delivery was deleted")
        if not webhook.enabled and not delivery.test:  # the worker would only hold it again
            raise UserErrors.one(
                "id", ErrorCode.CONFLICT, "the webhook of this delivery is disabled; enable it, then retry"
            )
        restarted = await self._restart(who, webhook, [oid], [delivery.status])
        if not restarted:
            raise UserErrors.one("id", ErrorCode.CONFLICT, "this delivery changed meanwhile; try again")
        return restarted[0]

    async def recover(
        self, who: Principal, webhook_id: str, since: datetime, until: datetime | None, dry_run: bool
    ) -> Recovery:
        """Re-send the failed or held deliveries of one webhook created in ``[since, until)``: the newest
        ``MAX_RECOVER`` of them (the ones it restarts are pending, so the next call goes on with the rest). An
        enabled webhook only: a disabled one's would be held again (a dry run counts them all the same)."""
        oid = parse_id(webhook_id, "webhookId")
        webhook = await self._webhooks.get(who.account_id, oid)
        if webhook is None:
            raise not_found("webhook", webhook_id, "webhookId")
        since, until = as_utc(since), as_utc(until) if until else utcnow()  # naive means UTC
        if since >= until:
            raise UserErrors.one("since", ErrorCode.INVALID, "since must be earlier than until")
        statuses = [DeliveryStatus.FAILED, DeliveryStatus.HELD]
        cap = MAX_RECOVER
        ids = await self._deliveries.ids_in_window(who.account_id, oid, statuses, since, until, cap + 1)
        more, ids = len(ids) > cap, ids[:cap]
        if dry_run:
            return Recovery(len(ids), more)
        if not webhook.enabled:  # the worker would only hold them again
            raise UserErrors.one(
                "webhookId", ErrorCode.CONFLICT, "the webhook is disabled; enable it, then recover"
            )
        return Recovery(len(await self._restart(who, webhook, ids, statuses)), more)

    async def _restart(
        self, who: Principal, webhook: Webhook, ids: list[ObjectId], statuses: list[DeliveryStatus]
    ) -> list[Delivery]:
        now = utcnow()
        restarted = await self._deliveries.restart(who.account_id, ids, statuses, now)
        limit = webhook.in_flight_limit(self._settings.webhook_max_in_flight)
        await self._enqueue([Enqueue(stored_attempt(d), due=now, limit=limit) for d in restarted])
        return restarted

    # -- the delivery log --------------------------------------------------------------------------

    async def page(
        self,
        who: Principal,
        *,
        webhook_id: str | None,
        status: DeliveryStatus | None,
        event: str | None,
        first: int | None,
        after: str | None,
    ) -> Page[Delivery]:
        oid = parse_id(webhook_id, "webhookId") if webhook_id is not None else None
        if event is not None and event not in DELIVERED_NAMES:  # the enum's spelling, a typo: say so
            raise UserErrors.one(
                "event",
                ErrorCode.INVALID,
                f"event {event[:100]!r} is not an event name; use a wire name, such as "
                f"job_application_created or {TEST_EVENT} (eventTypes lists them)",
            )
        oldest = utcnow() - self._retention - timedelta(days=1)
        return await self._deliveries.page(
            who.account_id,
            webhook_id=oid,
            status=status,
            event=event,
            first=check_page_size(first),
            after=decode_cursor(after),
            oldest=oldest,
        )

    async def get(self, who: Principal, delivery_id: str) -> Delivery | None:
        oid = parse_id(delivery_id)
        return await self._deliveries.get(who.account_id, oid)

    async def attempts(self, deliveries: list[Delivery]) -> list[list[Attempt]]:
        """Attempts of each delivery (already scoped: the caller holds deliveries of its own account)."""
        found = await self._deliveries.attempts_of([d.id for d in deliveries])
        return [found[d.id] for d in deliveries]


def _resource_of(body: bytes) -> str | None:
    """``data.log.resourceId`` of an event body (operational events have none)."""
    data = orjson.loads(body).get("data")
    log_part = data.get("log") if isinstance(data, dict) else None
    resource = log_part.get("resourceId") if isinstance(log_part, dict) else None
    return resource if isinstance(resource, str) and resource else None


def _first_attempt(event: Event, planned: Planned) -> LaneItem:
    return LaneItem(str(planned.webhook_id), str(planned.delivery_id), 1, str(event.id), Kind.NEW)


def stored_attempt(delivery: Delivery) -> LaneItem:
    """The next attempt of a written delivery."""
    return LaneItem(
        str(delivery.webhook_id),
        str(delivery.id),
        delivery.attempt_count + 1,
        str(delivery.event_id),
        Kind.STORED,
    )


def _held(event: Event) -> list[Delivery]:
    """The event's deliveries recorded HELD at once (their webhook was disabled when it was published)."""
    return [event.pending_delivery(p) for p in event.planned if p.held]
