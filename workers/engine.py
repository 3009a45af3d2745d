"""The delivery engine: run a batch of attempts, record them in bulk, schedule retries, disable webhooks.

Flow for ``(delivery id, attempt number)`` items: load (deliveries, webhooks, event bodies) → sign and POST
concurrently → one ``insert_many`` of attempts and one ``bulk_write`` of delivery states → failure counters /
auto-disable → retries queued → live feed. Loads and records are coalesced across concurrent jobs
(``workers.coalesce``), so a burst costs a few large writes rather than many small ones.
An item whose delivery has moved on (another run already made that attempt) is skipped, so duplicate jobs
are harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId
from pymongo import UpdateMany, UpdateOne

from webhooks import metrics
from webhooks.coalesce import Coalescer
from webhooks.crypto import SecretBox
from webhooks.db import Doc
from webhooks.models import Attempt, AttemptTrigger, DeliveryStatus, Webhook
from webhooks.pubsub import Publisher
from webhooks.queue import DeliveryQueue, Item
from webhooks.repositories.deliveries import DeliveryRepository
from webhooks.repositories.events import EventRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.settings import Settings
from webhooks.timeutil import utcnow
from workers.policy import count_failures, next_delay, parse_retry_after, should_disable
from workers.sender import Sender, SendResult
from workers.signing import redacted, signature_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Planned:
    """One attempt about to be made."""

    doc: Doc
    number: int
    webhook: Webhook
    body: bytes

    @property
    def delivery_id(self) -> ObjectId:
        oid: ObjectId = self.doc["_id"]
        return oid

    @property
    def is_test(self) -> bool:
        return bool(self.doc.get("test"))

    @property
    def trigger(self) -> AttemptTrigger:
        if self.is_test:
            return AttemptTrigger.TEST
        if (
            self.number == self.doc.get("run_start", 1)
            and self.doc.get("run_trigger") == AttemptTrigger.MANUAL.value
        ):
            return AttemptTrigger.MANUAL
        return AttemptTrigger.AUTOMATIC

    @property
    def attempt_in_run(self) -> int:
        return self.number - int(self.doc.get("run_start", 1)) + 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt made, waiting to be recorded."""

    planned: Planned
    started: datetime
    request_headers: dict[str, str]  # signatures redacted
    result: SendResult


class DeliveryEngine:
    def __init__(
        self,
        *,
        settings: Settings,
        deliveries: DeliveryRepository,
        events: EventRepository,
        webhooks: WebhookRepository,
        box: SecretBox,
        queue: DeliveryQueue,
        publisher: Publisher,
        sender: Sender,
    ) -> None:
        self._settings = settings
        self._deliveries = deliveries
        self._events = events
        self._webhooks = webhooks
        self._box = box
        self._queue = queue
        self._publisher = publisher
        self._sender = sender
        self._in_flight: set[ObjectId] = set()
        self._slots = asyncio.Semaphore(sender.max_connections)
        self._loader: Coalescer[tuple[ObjectId, int], Planned | None] = Coalescer(self._load)
        self._recorder: Coalescer[Outcome, None] = Coalescer(self._record)

    async def run(self, items: list[Item]) -> int:
        """Make every due attempt among ``items``; return how many were made.

        Loads and records go through coalescers, so concurrent jobs share their database round trips.
        """
        loaded = await asyncio.gather(*(self._loader.call((ObjectId(d), int(n))) for d, n in items))
        planned = [p for p in loaded if p is not None]
        try:
            await asyncio.gather(*(self._attempt_and_record(p) for p in planned))
        finally:
            self._in_flight.difference_update(p.delivery_id for p in planned)
        return len(planned)

    async def _attempt_and_record(self, p: Planned) -> None:
        # An attempt's clock (and its 10 s deadline) starts when it gets a connection slot, not while it
        # waits for one behind a burst.
        async with self._slots:
            outcome = await self._attempt(p)
        await self._recorder.call(outcome)

    async def _load(self, items: list[tuple[ObjectId, int]]) -> list[Planned | None]:
        """One batch of loads: deliveries, their webhooks and bodies, in three queries."""
        wanted: dict[ObjectId, int] = {}
        for delivery_id, number in items:
            if delivery_id not in self._in_flight:  # the same attempt queued twice: make it once
                wanted.setdefault(delivery_id, number)
        docs = await self._deliveries.docs_by_ids(list(wanted)) if wanted else []
        current = [
            d
            for d in docs
            if d["status"] == DeliveryStatus.PENDING.value and d["attempt_count"] == wanted[d["_id"]] - 1
        ]
        by_id: dict[ObjectId, Planned] = {}
        if current:
            webhooks = await self._webhooks.get_many(list({d["webhook_id"] for d in current}))
            bodies = await self._events.get_many(list({d["event_id"] for d in current}))
            now = utcnow()
            stopped: list[UpdateOne] = []
            for doc in current:
                webhook = webhooks.get(doc["webhook_id"])
                event = bodies.get(doc["event_id"])
                if webhook is None or event is None:  # webhook deleted or event expired
                    stopped.append(_finish(doc, DeliveryStatus.FAILED, now))
                    metrics.delivery_finished(DeliveryStatus.FAILED.value, doc["event"])
                elif not webhook.enabled and not doc.get("test"):  # recoverable after re-enabling
                    stopped.append(_finish(doc, DeliveryStatus.HELD, now))
                    metrics.delivery_finished(DeliveryStatus.HELD.value, doc["event"])
                else:
                    by_id[doc["_id"]] = Planned(doc, wanted[doc["_id"]], webhook, event.body)
            if stopped:
                await self._deliveries.record_attempts([], stopped)
        self._in_flight.update(by_id)
        answers: list[Planned | None] = []
        for delivery_id, _ in items:
            answers.append(by_id.pop(delivery_id, None))  # a duplicate item in the batch gets None
        return answers

    async def _attempt(self, p: Planned) -> Outcome:
        started = utcnow()
        scheduled = p.doc.get("next_attempt_at") or p.doc.get("created_at")
        if isinstance(scheduled, datetime):
            metrics.dispatch_delay((started - scheduled).total_seconds())
        secrets = [self._box.decrypt(enc) for enc in p.webhook.signing_secrets_enc(started)]
        headers = signature_headers(
            secrets,
            msg_id=str(p.delivery_id),
            timestamp=int(time.time()),
            body=p.body,
            event=p.doc["event"],
            user_agent=self._settings.user_agent,
        )
        result = await self._sender.send(p.webhook.url, p.body, headers)
        return Outcome(p, started, redacted(headers), result)

    async def _record(self, outcomes: list[Outcome]) -> list[None]:
        """One batch of outcomes: one insert of attempts, one bulk write of states, then retries and feed."""
        now = utcnow()
        schedule = self._settings.retry_schedule
        attempts: list[Attempt] = []
        moved: dict[tuple[DeliveryStatus, int, datetime | None], list[ObjectId]] = defaultdict(list)
        retries: list[tuple[ObjectId, int, datetime]] = []
        finals: dict[ObjectId, list[bool]] = defaultdict(list)
        for outcome in outcomes:
            p, started, result = outcome.planned, outcome.started, outcome.result
            delay = None
            if not result.ok and not p.is_test:
                delay = next_delay(
                    schedule,
                    p.attempt_in_run,
                    status=result.status_code,
                    retry_after=parse_retry_after(result.response_headers.get("Retry-After")),
                    retry_after_cap=self._settings.retry_after_cap,
                )
            if result.ok:
                status, next_at = DeliveryStatus.SUCCEEDED, None
            elif delay is None:
                status, next_at = DeliveryStatus.FAILED, None
            else:
                status, next_at = DeliveryStatus.PENDING, now + timedelta(seconds=delay)
                retries.append((p.delivery_id, p.number + 1, next_at))
            if status is not DeliveryStatus.PENDING and not p.is_test:
                finals[p.webhook.id].append(status is DeliveryStatus.SUCCEEDED)
            _observe(p, result, status)
            attempts.append(
                Attempt(
                    id=ObjectId(),
                    delivery_id=p.delivery_id,
                    account_id=p.doc["account_id"],
                    webhook_id=p.webhook.id,
                    event=p.doc["event"],
                    number=p.number,
                    trigger=p.trigger,
                    started_at=started,
                    duration_ms=result.duration_ms,
                    status_code=result.status_code,
                    response_headers=result.response_headers,
                    response_body=result.response_body,
                    error_class=None if result.ok else result.outcome.value,
                    error=result.error,
                    delivery_status=status,
                    next_attempt_at=next_at,
                    request_headers=outcome.request_headers,
                )
            )
            moved[(status, p.number, next_at)].append(p.delivery_id)
        # Deliveries that moved the same way share one update_many (far fewer write commands in a burst);
        # the attempt_count condition keeps a stale duplicate run from moving a delivery twice.
        updates = [
            UpdateMany(
                {"_id": {"$in": ids}, "attempt_count": number - 1},
                {
                    "$set": {
                        "status": status.value,
                        "attempt_count": number,
                        "next_attempt_at": next_at,
                        "updated_at": now,
                    }
                },
            )
            for (status, number, next_at), ids in moved.items()
        ]
        retention = timedelta(days=self._settings.delivery_retention_days)
        docs = [{**a.to_doc(), "expires_at": now + retention} for a in attempts]
        await self._deliveries.record_attempts(docs, updates)
        # MongoDB now holds the outcome; everything after it is Redis and must not undo it: counting comes
        # first (it is never redone), a retry that fails to queue is re-queued by the sweeper, and the live
        # feed is best effort.
        await self._count(finals)
        await self._queue_retries(retries)
        try:
            await self._publisher.attempts(attempts)
        except Exception:
            log.exception("could not publish %d attempts to the live feed", len(attempts))
        return [None] * len(outcomes)

    async def _queue_retries(self, retries: list[tuple[ObjectId, int, datetime]]) -> None:
        queued = await asyncio.gather(
            *(self._queue.enqueue_attempt(d, n, at) for d, n, at in retries), return_exceptions=True
        )
        failed = sum(isinstance(q, BaseException) for q in queued)
        if failed:
            log.warning("could not queue %d retries; the sweeper will", failed)

    async def _count(self, finals: dict[ObjectId, list[bool]]) -> None:
        threshold = self._settings.disable_after_failures
        await self._webhooks.reset_failures([w for w, o in finals.items() if count_failures(o).reset])
        for webhook_id, outcomes in finals.items():
            change = count_failures(outcomes)
            if change.add:
                count = await self._webhooks.add_failures(webhook_id, change.add)
                if count is None or not should_disable(count, threshold):
                    continue
                disabled = await self._webhooks.disable_once(webhook_id, threshold)
                if disabled is not None:
                    metrics.webhook_disabled()
                    log.warning(
                        "webhook %s disabled after %d consecutive failed deliveries", webhook_id, threshold
                    )
                    try:
                        await self._publisher.webhook_status(disabled)
                    except Exception:
                        log.exception("could not publish the status change of webhook %s", webhook_id)


def _observe(p: Planned, result: SendResult, status: DeliveryStatus) -> None:
    """Metrics and one log line per attempt (ids, outcome, status code, duration; never URLs or headers)."""
    metrics.attempt_made(result.outcome.value, result.status_code, result.duration_ms)
    if status is not DeliveryStatus.PENDING:
        metrics.delivery_finished(status.value, p.doc["event"])
    outcome = metrics.attempt_outcome(result.outcome.value, result.status_code)
    log.log(
        logging.INFO if result.ok else logging.WARNING,
        "attempt %d of delivery %s to webhook %s: %s in %d ms -> %s",
        p.number,
        p.delivery_id,
        p.webhook.id,
        outcome,
        result.duration_ms,
        status.value.lower(),
        extra={
            "fields": {
                "delivery_id": str(p.delivery_id),
                "webhook_id": str(p.webhook.id),
                "event": p.doc["event"],
                "attempt": p.number,
                "trigger": p.trigger.value.lower(),
                "outcome": outcome,
                "status_code": result.status_code,
                "duration_ms": result.duration_ms,
                "delivery_status": status.value.lower(),
            }
        },
    )


def _finish(doc: Doc, status: DeliveryStatus, now: datetime) -> UpdateOne:
    return UpdateOne(
        {"_id": doc["_id"], "attempt_count": doc["attempt_count"], "status": DeliveryStatus.PENDING.value},
        {"$set": {"status": status.value, "next_attempt_at": None, "updated_at": now}},
    )
