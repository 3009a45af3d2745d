"""Publishing events and working with deliveries: publish, test, retry, recover, the delivery log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId

from webhooks.coalesce import Coalescer
from webhooks.db import Doc
from webhooks.errors import ErrorCode, UserErrors
from webhooks.events import TEST_EVENT, EventName
from webhooks.ids import parse_id
from webhooks.models import Attempt, Delivery, DeliveryStatus, Principal
from webhooks.pagination import Page, check_page_size, decode_cursor
from webhooks.payloads import AuditLog, build_event_body, build_test_body
from webhooks.queue import DeliveryQueue
from webhooks.repositories.deliveries import DeliveryRepository, delivery_doc
from webhooks.repositories.events import EventRepository, event_doc
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.webhooks import not_found
from webhooks.settings import Settings
from webhooks.timeutil import as_utc, utcnow
from webhooks.validation import check_replay

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 200
MAX_RECOVER = 10_000


@dataclass(frozen=True, slots=True)
class Published:
    event_id: ObjectId
    deliveries: list[Delivery]  # as just written; on a replay, as they are now
    replayed: bool


class DeliveryService:
    def __init__(
        self,
        settings: Settings,
        webhooks: WebhookRepository,
        events: EventRepository,
        deliveries: DeliveryRepository,
        queue: DeliveryQueue,
    ) -> None:
        self._settings = settings
        self._webhooks = webhooks
        self._events = events
        self._deliveries = deliveries
        self._queue = queue
        self._store: Coalescer[tuple[Doc, list[Doc]], bool] = Coalescer(self._store_batch)

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
        """Store the event once, one delivery per subscribed webhook, then queue the first attempts."""
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
        if idempotency_key is not None:
            window_start = now - timedelta(hours=self._settings.idempotency_window_hours)
            earlier = await self._events.by_idempotency_key(who.account_id, idempotency_key, window_start)
            if earlier is not None:
                return await self._replay(earlier, event.value)
            await self._events.release_idempotency_key(who.account_id, idempotency_key, window_start)
        targets = await self._webhooks.subscribed(who.account_id, event.value)
        stored = event_doc(
            account_id=who.account_id,
            event=event.value,
            body=body,
            now=now,
            retention=self._retention,
            idempotency_key=idempotency_key,
            planned=[(ObjectId(), w.id, not w.enabled) for w in targets],
        )
        deliveries = self._delivery_docs(stored)
        if not await self._store.call((stored, deliveries)):
            # lost a race for the same idempotency key: answer with the winner
            assert idempotency_key is not None
            earlier = await self._events.by_idempotency_key(
                who.account_id,
                idempotency_key,
                now - timedelta(hours=self._settings.idempotency_window_hours),
            )
            if earlier is None:
                raise UserErrors.one(
                    "idempotencyKey", ErrorCode.CONFLICT, "idempotencyKey is in use, try again"
                )
            return await self._replay(earlier, event.value)
        pending = [d["_id"] for d in deliveries if d["status"] == DeliveryStatus.PENDING.value]
        await self._enqueue(self._queue.enqueue_first_attempts(stored["_id"], pending))
        return Published(stored["_id"], [Delivery.from_doc(d) for d in deliveries], replayed=False)

    async def _store_batch(self, items: list[tuple[Doc, list[Doc]]]) -> list[bool]:
        """Events and their deliveries of concurrent publishes, in two writes (deliveries after events)."""
        stored = await self._events.insert_many([event for event, _ in items])
        await self._deliveries.insert_many(
            [d for (_, deliveries), ok in zip(items, stored, strict=True) if ok for d in deliveries]
        )
        return stored

    def _delivery_docs(self, event: Doc) -> list[Doc]:
        return [
            delivery_doc(
                delivery_id=p["delivery_id"],
                account_id=event["account_id"],
                webhook_id=p["webhook_id"],
                event_id=event["_id"],
                event=event["event"],
                now=event["created_at"],
                retention=self._retention,
                held=p["held"],
            )
            for p in event["planned"]
        ]

    async def _replay(self, event: Doc, requested: str) -> Published:
        """A repeated idempotency key: complete a fan-out that was cut short; send nothing new.

        (A pending delivery that was written but never queued is picked up by the sweeper.) The key
        answers only for the event it was first used with: another event name is a CONFLICT.
        """
        check_replay(event["event"], requested)
        docs = self._delivery_docs(event)
        await self._deliveries.insert_many(docs)
        return Published(event["_id"], await self._by_ids([d["_id"] for d in docs]), replayed=True)

    @staticmethod
    async def _enqueue(*jobs: Awaitable[bool]) -> None:
        """Queue after the MongoDB write. The write is the commitment: if Redis fails here, the client still
        gets its answer (a retry would duplicate the event) and the sweeper queues the delivery later."""
        queued = await asyncio.gather(*jobs, return_exceptions=True)
        failed = [q for q in queued if isinstance(q, BaseException)]
        if failed:
            log.warning(
                "could not queue %d jobs (%s); the sweeper will", len(failed), type(failed[0]).__name__
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
        delivery_id = ObjectId()
        event = event_doc(
            account_id=who.account_id,
            event=TEST_EVENT,
            body=body,
            now=now,
            retention=self._retention,
            idempotency_key=None,
            planned=[(delivery_id, webhook.id, False)],
        )
        doc = delivery_doc(
            delivery_id=delivery_id,
            account_id=who.account_id,
            webhook_id=webhook.id,
            event_id=event["_id"],
            event=TEST_EVENT,
            now=now,
            retention=self._retention,
            test=True,
        )
        await self._store.call((event, [doc]))
        await self._enqueue(self._queue.enqueue_attempt(delivery_id, 1))
        return Delivery.from_doc(doc)

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
        restarted = await self._restart(who, [oid], [delivery.status])
        if not restarted:
            raise UserErrors.one("id", ErrorCode.CONFLICT, "this delivery changed meanwhile; try again")
        refreshed = await self._deliveries.get(who.account_id, oid)
        assert refreshed is not None
        return refreshed

    async def recover(
        self, who: Principal, webhook_id: str, since: datetime, until: datetime | None, dry_run: bool
    ) -> int:
        """Re-send every failed or held delivery of one webhook created in ``[since, until)``."""
        oid = parse_id(webhook_id, "webhookId")
        if await self._webhooks.get(who.account_id, oid) is None:
            raise not_found("webhook", webhook_id, "webhookId")
        since, until = as_utc(since), as_utc(until) if until else utcnow()  # naive means UTC
        if since >= until:
            raise UserErrors.one("since", ErrorCode.INVALID, "since must be earlier than until")
        statuses = [DeliveryStatus.FAILED, DeliveryStatus.HELD]
        ids = await self._deliveries.ids_in_window(who.account_id, oid, statuses, since, until, MAX_RECOVER)
        if dry_run:
            return len(ids)
        return len(await self._restart(who, ids, statuses))

    async def _restart(
        self, who: Principal, ids: list[ObjectId], statuses: list[DeliveryStatus]
    ) -> list[Doc]:
        docs = await self._deliveries.restart(who.account_id, ids, statuses, utcnow())
        await self._enqueue(*(self._queue.enqueue_attempt(d["_id"], d["attempt_count"] + 1) for d in docs))
        return docs

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

    async def _by_ids(self, ids: list[ObjectId]) -> list[Delivery]:
        docs = {d["_id"]: d for d in await self._deliveries.docs_by_ids(ids)}
        return [Delivery.from_doc(docs[i]) for i in ids if i in docs]

    async def attempts(self, deliveries: list[Delivery]) -> list[list[Attempt]]:
        """Attempts of each delivery (already scoped: the caller holds deliveries of its own account)."""
        found = await self._deliveries.attempts_of([d.id for d in deliveries])
        return [found[d.id] for d in deliveries]
