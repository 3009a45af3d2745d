"""The delivery engine: make one claimed attempt, free its webhook's slot, record it, schedule what follows.

Each attempt runs on its own (``run``): no attempt waits for another webhook's receiver. Loads, slot
releases and records go through coalescers, so concurrent attempts share their round trips: a burst costs
a few large writes, not many small ones. A first attempt whose event came with its claim and whose webhook
is cached needs no load (``_ready``), so it never waits behind another webhook's reads either. Write
budget: a first attempt writes its delivery document once (with the attempt in it); a later attempt appends
to it.

Order after an attempt: the webhook's slot is released, MongoDB records the outcome, then the work that
must not undo it (failure counters, retries, the feed). That last part runs beside the next batch's
records, one batch after the other: the store's writes follow each other without waiting for Redis round
trips (bench P8 "huge": the backlogged webhook ~15 % faster, and the other account's latency lower too).

A webhook may have up to ``RECORD_AHEAD`` times its in-flight limit of attempts waiting to be recorded in a
worker; past that, an attempt keeps its slot until it is recorded. So when the store is slow, a webhook with
a huge backlog cannot pile up the worker's attempts (``worker_max_in_flight``) behind its records and hold
up other webhooks' claims (measured in bench P8 "huge": another account's deliveries waited about 1 s
whenever the store stalled, while the worker's 500 attempts waited to be recorded), and while it is fast,
sending overlaps recording. Eight times: with four, one attempt in nine of a huge backlog (bench P8 "huge")
kept its slot for a whole record (~30 ms, against a slot cycle of ~8 ms), one in thirty with eight.

An attempt whose delivery has moved on (another run made it already) is skipped, so duplicates are
harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from bson import ObjectId

from webhooks import metrics, operational
from webhooks.cache import SizedLRU, read_through
from webhooks.coalesce import Coalescer
from webhooks.crypto import SecretBox
from webhooks.custom_headers import decrypted_headers
from webhooks.events import EventName
from webhooks.handoff import EventHandoff
from webhooks.lanes import Claimed, ClaimRequest, Enqueue, Finished, Kind, LaneItem, Lanes, LateReason
from webhooks.lanes import Outcome as BreakerOutcome
from webhooks.models import Attempt, Delivery, DeliveryStatus, Event, OutboxRef, Webhook
from webhooks.outcomes import UNREACHABLE
from webhooks.pubsub import Publisher
from webhooks.repositories.deliveries import DeliveryRepository, Recorded, Unsent
from webhooks.repositories.events import EventRepository
from webhooks.repositories.webhooks import WebhookRepository
from webhooks.services.deliveries import stored_attempt
from webhooks.services.webhook_cache import WebhookCache
from webhooks.settings import Settings
from webhooks.timeutil import utcnow
from workers.policy import count_failures, next_delay, parse_retry_after, should_disable
from workers.sender import Sender, SendResult
from workers.signing import redacted, signature_headers

log = logging.getLogger(__name__)

# Emits an operational event: (account, event, body, the webhook it is about) -> deliveries planned
# (``DeliveryService.publish_system``).
SystemPublish = Callable[[ObjectId, EventName, bytes, ObjectId], Awaitable[int]]
SEQUENCE_HEADER = "X-Webhook-Sequence"

EVENT_CACHE_BYTES = 32 * 1024 * 1024  # event bodies are immutable: kept while memory allows
# ... and while the garbage collector's full passes stay short (``webhooks.heap``): an event is about ten
# tracked objects. The cache serves a fan-out's siblings (claimed within milliseconds) and early retries;
# a first attempt's claim brings its event's Redis copy anyway, and a later one reads it in its batch's load.
EVENT_CACHE_ENTRIES = 4_096
# Store batches stay this small: one huge write holds the store (one core, for SecantusDB) for every other
# account's publish behind it, while batches of 100 already cost about 0.01 round trips per delivery.
STORE_BATCH = 100
MAX_TRACKED_EVENTS = 100_000  # events with some, not all, deliveries written (for closing them)
RECORD_AHEAD = 8  # × its in-flight limit: a webhook's attempts waiting to be recorded in a worker
# A load that finds a first attempt's event neither cached nor come with its claim also reads the events of
# the next attempts waiting in that webhook's lane, up to this many (four rounds of the default limit)...
READ_AHEAD = 40
# ... and up to this many per load batch: the batch's own attempts, and any other load after it, wait for
# these reads too (eight reads of 25; a twentieth of the event cache's entries)
READ_AHEAD_BATCH = 200
LATE_AFTER_MS = 500.0  # an attempt that starts later than this after its due time says why

WAIT_LABELS = {
    None: "none",
    LateReason.WORKER_BUSY: "worker",
    LateReason.WEBHOOK_LIMIT: "webhook_limit",
    LateReason.BREAKER_OPEN: "breaker",
}


@dataclass(frozen=True, slots=True)
class Planned:
    """One attempt about to be made."""

    claimed: Claimed
    delivery: Delivery  # as it is before this attempt
    webhook: Webhook
    body: bytes
    scheduled_at: datetime
    stored: bool  # the delivery document exists

    @property
    def number(self) -> int:
        return self.claimed.item.number


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt made, waiting to be recorded."""

    planned: Planned
    started: datetime
    late: LateReason | None
    request_headers: dict[str, str]  # signatures redacted
    result: SendResult


@dataclass(slots=True)
class AfterRecord:
    """What a recorded batch leaves to do once MongoDB holds it (``DeliveryEngine._settle``)."""

    items: list[LaneItem]  # every attempt of the batch: their recording marks
    now: datetime
    attempts: list[Attempt] = field(default_factory=list)  # those that took effect: the live feed
    retries: list[Enqueue] = field(default_factory=list)
    finals: dict[ObjectId, list[bool]] = field(default_factory=lambda: defaultdict(list))  # per webhook
    hooks: dict[ObjectId, Webhook] = field(default_factory=dict)
    done: list[Delivery] = field(default_factory=list)  # final now: their gates move on
    notices: list[tuple[EventName, Planned]] = field(default_factory=list)


class DeliveryEngine:
    def __init__(
        self,
        *,
        settings: Settings,
        deliveries: DeliveryRepository,
        events: EventRepository,
        webhooks: WebhookRepository,
        webhook_cache: WebhookCache,
        box: SecretBox,
        lanes: Lanes,
        handoff: EventHandoff,
        publisher: Publisher,
        sender: Sender,
        publish_system: SystemPublish | None = None,
    ) -> None:
        self._settings = settings
        self._deliveries = deliveries
        self._events = events
        self._webhooks = webhooks
        self._webhook_cache = webhook_cache
        self._box = box
        self._lanes = lanes
        self._handoff = handoff
        self._publisher = publisher
        self._sender = sender
        self._publish_system = publish_system
        self._retention = timedelta(days=settings.delivery_retention_days)
        self._in_flight: set[tuple[str, int]] = set()
        self._recording: Counter[ObjectId] = Counter()  # per webhook: attempts made, not yet recorded
        self._event_cache: SizedLRU[ObjectId, Event] = SizedLRU(
            EVENT_CACHE_BYTES, lambda e: len(e.body) + 256, EVENT_CACHE_ENTRIES
        )
        # first deliveries written per event (by this worker), until all of its planned ones are
        self._written: OrderedDict[ObjectId, set[ObjectId]] = OrderedDict()
        self._outbox_done: OrderedDict[ObjectId, int] = OrderedDict()  # per batch outbox: its events done
        self._loader: Coalescer[Claimed, Planned | None] = Coalescer(
            self._load, max_batch=STORE_BATCH, on_batch=metrics.batch_observer("load")
        )
        self._releaser: Coalescer[Finished, bool] = Coalescer(
            self._release, on_batch=metrics.batch_observer("release")
        )
        self._recorder: Coalescer[Outcome, asyncio.Task[None]] = Coalescer(
            self._record, max_batch=STORE_BATCH, on_batch=metrics.batch_observer("record")
        )
        self._settling: asyncio.Task[None] | None = None  # the last recorded batch's work after MongoDB
        # called when a slot is freed before its attempt is recorded: the dispatcher may claim again at
        # once, without waiting for the wake token that the release left in Redis
        self.on_release: Callable[[], None] = lambda: None
        # the dispatcher's room for a claim made in the same call as a release (``Dispatcher.reserve``), and
        # where what it took goes (``Dispatcher.adopt``): a freed slot is taken again with no round trip
        self.reserve: Callable[[], ClaimRequest | None] = lambda: None
        self.adopt: Callable[[ClaimRequest, list[Claimed]], None] = lambda request, claimed: None

    async def run(self, claimed: Claimed) -> None:
        """Make one claimed attempt. Its slot is always released: after the attempt, or given back to the
        lane if the worker stops first (a cancelled attempt is made again later)."""
        key = (claimed.item.delivery_id, claimed.item.number)
        released = False
        planned: Planned | None = None
        try:
            planned = self._ready(claimed) or await self._loader.call(claimed)
            if planned is None:
                released = True
                await self._releaser.call(Finished(claimed.item, BreakerOutcome.SKIPPED))
                return
            early = (claimed.due - utcnow()).total_seconds()
            if (
                early > 0
            ):  # claimed ahead of its due time (``workers.dispatcher.LOOKAHEAD``): never send early
                await asyncio.sleep(early)
            outcome = await self._attempt(planned)
            finished = Finished(claimed.item, _breaker_outcome(outcome.result))
            hook = planned.webhook.id
            ahead = RECORD_AHEAD * planned.webhook.in_flight_limit(self._settings.webhook_max_in_flight)
            if self._recording[hook] < ahead:  # the slot goes now: its next attempt overlaps this record
                released = True
                if not await self._releaser.call(finished):  # (not claimed again with the release)
                    self.on_release()
            self._recording[hook] += 1
            try:
                settled = await self._recorder.call(outcome)
                await asyncio.shield(settled)
            finally:  # recorded (or given up on: the sweeper puts it back)
                self._recording[hook] -= 1
                if not self._recording[hook]:
                    del self._recording[hook]
                if not released:
                    released = True
                    await self._releaser.call(finished)
        except asyncio.CancelledError:
            if not released:
                with contextlib.suppress(Exception):
                    back = Finished(claimed.item, BreakerOutcome.RETURNED, due=claimed.due)
                    await self._lanes.release([back], utcnow(), open_after=self._settings.breaker_open_after)
            raise
        finally:
            if planned is not None:  # this run marked the attempt as in flight (not a duplicate's run)
                self._in_flight.discard(key)

    # -- load ------------------------------------------------------------------------------------------

    def _ready(self, c: Claimed) -> Planned | None:
        """A first attempt that needs nothing read: its event came with its claim (or is cached) and its
        webhook is cached and enabled. Planned at once, so it never waits for a load batch, which may be
        reading another webhook's events from a busy store (a backlog whose hand-off copies expired). Any
        other attempt (a later one, a duplicate, a webhook not cached, deleted or disabled) goes through
        ``_load``, which decides the same way with what it reads."""
        item = c.item
        if item.kind is not Kind.NEW or (item.delivery_id, item.number) in self._in_flight:
            return None
        event = self._event_at_hand(c)
        webhook = self._webhook_cache.cached(ObjectId(item.webhook_id))
        if event is None or webhook is None or not webhook.enabled:
            return None
        delivery = _delivery_of(item, event, {})
        if delivery is None or delivery.webhook_id != webhook.id:
            return None
        return self._planned(c, delivery, webhook, event.body)

    def _event_at_hand(self, c: Claimed) -> Event | None:
        """The claimed attempt's event if it is cached or came with the claim (then cached), else None."""
        event_id = ObjectId(c.item.event_id)
        event = self._event_cache.get(event_id)
        if event is None and c.attached is not None:
            event = self._handoff.decode(c.attached)
            self._event_cache.put(event_id, event)
        return event

    def _planned(self, c: Claimed, delivery: Delivery, webhook: Webhook, body: bytes) -> Planned:
        """The attempt to make, marked as in flight in this worker."""
        self._in_flight.add((c.item.delivery_id, c.item.number))
        scheduled = delivery.next_attempt_at or delivery.created_at
        return Planned(c, delivery, webhook, body, scheduled, stored=c.item.kind is Kind.STORED)

    async def _load(self, batch: list[Claimed]) -> list[Planned | None]:
        """One batch of loads: written deliveries, event bodies and webhooks (both cached)."""
        stored = await self._deliveries.stored_by_ids(
            [ObjectId(c.item.delivery_id) for c in batch if c.item.kind is Kind.STORED]
        )
        behind: set[str] = set()  # webhooks whose next attempts' events must be read too
        for c in batch:  # read by the claim, with no round trip of its own
            if self._event_at_hand(c) is None and c.item.kind is Kind.NEW:
                behind.add(c.item.webhook_id)
        wanted = {ObjectId(c.item.event_id) for c in batch}
        events = await read_through(
            self._event_cache, wanted | await self._read_ahead(behind, wanted), self._fetch_events
        )
        webhooks = await self._webhook_cache.get_many({ObjectId(c.item.webhook_id) for c in batch})
        now = utcnow()
        unsent: list[Unsent] = []
        gone: set[str] = set()  # webhooks deleted: their lane state goes too
        answers: list[Planned | None] = []
        for c in batch:
            item = c.item
            key = (item.delivery_id, item.number)
            event = events.get(ObjectId(item.event_id))
            delivery = _delivery_of(item, event, stored)
            if key in self._in_flight or delivery is None:  # a duplicate, or moved on meanwhile
                answers.append(None)
                continue
            webhook = webhooks.get(delivery.webhook_id)
            if webhook is None or event is None:  # webhook deleted, or event past its retention
                if webhook is None:
                    gone.add(item.webhook_id)
                unsent.append(Unsent(delivery, DeliveryStatus.FAILED, stored=item.kind is Kind.STORED))
                answers.append(None)
            elif not webhook.enabled and not delivery.test:  # recoverable after re-enabling
                unsent.append(Unsent(delivery, DeliveryStatus.HELD, stored=item.kind is Kind.STORED))
                answers.append(None)
            else:
                answers.append(self._planned(c, delivery, webhook, event.body))
        await self._forget(gone)
        if unsent:
            try:
                written = await self._deliveries.record_unsent(unsent, now, self._retention)
            except Exception:
                # The attempts planned above are marked in flight and go ahead: failing them with this write
                # would leave their marks behind (their next claims read as duplicates of themselves). The
                # unsent ones stay as they were, a first attempt in its open outbox or a later one overdue,
                # and the sweeper queues them again.
                log.warning(
                    "could not record %d unsent deliveries; the sweeper retries them",
                    len(unsent),
                    exc_info=True,
                )
                return answers
            for u in unsent:
                metrics.delivery_finished(u.status.value, u.delivery.event)
            await self._close_events([u.delivery for u in unsent if u.delivery.id in written])
            await self._advance([u.delivery for u in unsent])
        return answers

    async def _forget(self, webhook_ids: set[str]) -> None:
        """Drop the lane state (in-flight limit, breaker) of deleted webhooks. The deletion dropped it once,
        but an attempt in flight then wrote it again (a retry's enqueue writes its limit, an unreachable
        attempt its breaker): every later attempt of a deleted webhook comes here, so the last one leaves
        nothing behind. Best effort: a breaker left expires within a day."""
        for webhook_id in sorted(webhook_ids):
            try:
                await self._lanes.forget(webhook_id)
            except Exception:
                log.warning("could not drop the lane state of deleted webhook %s", webhook_id, exc_info=True)

    async def _read_ahead(self, webhook_ids: set[str], wanted: set[ObjectId]) -> set[ObjectId]:
        """The events of the first attempts waiting next in these webhooks' lanes that are not cached: read
        with this batch's, their claims find them at hand (``_ready``). A webhook reaches this when a claim
        brought no hand-off copy: a backlog older than the copies, whose every claim would otherwise wait
        for a store read of its own (bench P8 "huge" at full size)."""
        if not webhook_ids:
            return set()
        try:
            upcoming = await self._lanes.upcoming(sorted(webhook_ids), READ_AHEAD)
        except Exception:  # only saves round trips: the claims read what they need anyway
            log.warning("could not look ahead in %d lanes", len(webhook_ids), exc_info=True)
            return set()
        ahead: set[ObjectId] = set()
        for item in upcoming:
            event_id = ObjectId(item.event_id)
            if item.kind is Kind.NEW and event_id not in wanted and self._event_cache.get(event_id) is None:
                ahead.add(event_id)
                if len(ahead) >= READ_AHEAD_BATCH:
                    break
        return ahead

    async def _fetch_events(self, ids: list[ObjectId]) -> dict[ObjectId, Event]:
        """Handed off in Redis by the API (new events; most come with their claim already), else from
        MongoDB."""
        found = await self._handoff.get_many(ids)
        missing = [i for i in ids if i not in found]
        return found | (await self._events.get_many(missing) if missing else {})

    # -- attempt ---------------------------------------------------------------------------------------

    async def _attempt(self, p: Planned) -> Outcome:
        started = utcnow()
        late = p.claimed.late_reason(started, LATE_AFTER_MS)
        metrics.dispatch_delay((started - p.scheduled_at).total_seconds(), WAIT_LABELS[late])
        secrets = [self._box.decrypt(enc) for enc in p.webhook.signing_secrets_enc(started)]
        headers = signature_headers(
            secrets,
            msg_id=str(p.delivery.id),
            timestamp=int(time.time()),
            body=p.body,
            event=p.delivery.event,
            user_agent=self._settings.user_agent,
        )
        if p.delivery.seq is not None:
            headers[SEQUENCE_HEADER] = str(p.delivery.seq)
        # the webhook's custom headers never replace ours (reserved names are refused on input anyway)
        ours = {name.lower() for name in headers}
        for name, value in decrypted_headers(p.webhook, self._box).items():
            if name.lower() not in ours:
                headers[name] = value
        result = await self._sender.send(p.webhook.url, p.body, headers)
        return Outcome(p, started, late, redacted(headers), result)

    # -- after the attempt -----------------------------------------------------------------------------

    async def _release(self, finished: list[Finished]) -> list[bool]:
        """Free the slots; and, if the dispatcher has room, claim again in the same call. Whether it did."""
        now, open_after = utcnow(), self._settings.breaker_open_after
        request = self.reserve()
        if request is None:
            changes = await self._lanes.release(finished, now, open_after=open_after)
        else:
            claimed: list[Claimed] = []
            try:
                changes, claimed = await self._lanes.release_then_claim(
                    finished, now, open_after=open_after, claim=request
                )
            finally:
                self.adopt(request, claimed)
        found = await self._webhook_cache.get_many({ObjectId(c.webhook_id) for c in changes})
        for change in changes:
            metrics.breaker_changed(change.opened)
            webhook = found.get(ObjectId(change.webhook_id))
            log.log(
                logging.WARNING if change.opened else logging.INFO,
                "breaker of webhook %s %s",
                change.webhook_id,
                f"opened after {change.failures} consecutive unreachable attempts"
                if change.opened
                else "closed",
            )
            if webhook is not None:
                try:
                    await self._publisher.webhook_status(webhook)
                except Exception:
                    log.exception("could not publish the breaker change of webhook %s", change.webhook_id)
        return [request is not None] * len(finished)

    async def _record(self, outcomes: list[Outcome]) -> list[asyncio.Task[None]]:
        """One batch of outcomes: one insert of new deliveries, one bulk write of the others; then, in a task
        that the next batch's writes do not wait for, the failure counters, retries and the live feed (the
        tasks run one after the other, in the order of their batches). Each caller gets that task.

        An outcome that did not take effect (a duplicate attempt: the delivery holds another one's) counts
        no failure, queues no retry and sends no notice, so a re-run attempt cannot count twice."""
        now = utcnow()
        recorded = [self._recorded(outcome, now) for outcome in outcomes]
        took = await self._deliveries.record_outcomes(recorded, self._retention)
        # only what this batch wrote: a duplicate first attempt (written before, by this worker or another)
        # counted again would close a batch outbox while some of its events are still unwritten
        await self._close_events([r.delivery for r, ok in zip(recorded, took, strict=True) if r.first and ok])
        after = AfterRecord(items=[o.planned.claimed.item for o in outcomes], now=now)
        for outcome, r, effective in zip(outcomes, recorded, took, strict=True):
            p, status = outcome.planned, r.status
            _observe(p, outcome.result, status, effective)
            if not effective:
                continue
            if r.next_attempt_at is not None:
                limit = p.webhook.in_flight_limit(self._settings.webhook_max_in_flight)
                retry = stored_attempt(_with_attempts(r.delivery, p.number))
                after.retries.append(Enqueue(retry, due=r.next_attempt_at, limit=limit))
            else:
                after.done.append(r.delivery)
            # Deliveries of operational (and test) events neither count towards a webhook's consecutive
            # failures nor cause operational events themselves: two failing endpoints subscribed to each
            # other's notices cannot feed each other.
            if status is not DeliveryStatus.PENDING and operational.notifies_about_delivery(r.delivery.event):
                after.finals[p.webhook.id].append(status is DeliveryStatus.SUCCEEDED)
                after.hooks[p.webhook.id] = p.webhook
                if status is DeliveryStatus.FAILED:
                    after.notices.append((EventName.DELIVERY_EXHAUSTED, p))
                elif r.delivery.recovering:
                    after.notices.append((EventName.DELIVERY_RECOVERED, p))
        after.attempts.extend(r.attempt for r, ok in zip(recorded, took, strict=True) if ok)
        settling = asyncio.create_task(self._settle(self._settling, after))
        self._settling = settling
        return [settling] * len(outcomes)

    def _recorded(self, outcome: Outcome, now: datetime) -> Recorded:
        """The attempt as it is stored, and the state it moves its delivery to."""
        p, result = outcome.planned, outcome.result
        delivery = p.delivery
        delay = None
        if not result.ok and not delivery.test:
            delay = next_delay(
                self._settings.retry_schedule,
                delivery.attempt_in_run(p.number),
                status=result.status_code,
                retry_after=parse_retry_after(result.retry_after, now),
                retry_after_cap=self._settings.retry_after_cap,
            )
        if result.ok:
            status, next_at = DeliveryStatus.SUCCEEDED, None
        elif delay is None:
            status, next_at = DeliveryStatus.FAILED, None
        else:
            status, next_at = DeliveryStatus.PENDING, now + timedelta(seconds=delay)
        attempt = Attempt(
            id=ObjectId(),
            delivery_id=delivery.id,
            account_id=delivery.account_id,
            webhook_id=delivery.webhook_id,
            event=delivery.event,
            number=p.number,
            trigger=delivery.trigger_of(p.number),
            started_at=outcome.started,
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            response_headers=result.response_headers,
            response_body=result.response_body,
            error_class=None if result.ok else result.outcome.value,
            error=result.error,
            delivery_status=status,
            next_attempt_at=next_at,
            request_headers=outcome.request_headers,
            scheduled_at=p.scheduled_at,
            late_reason=outcome.late.value if outcome.late else None,
        )
        return Recorded(delivery, attempt, status, next_at, now, first=not p.stored)

    async def _settle(self, previous: asyncio.Task[None] | None, after: AfterRecord) -> None:
        """What follows a batch's record. MongoDB holds the outcome; what comes after must not undo it:
        counting comes first (it is never redone), a retry that fails to queue is re-queued by the sweeper,
        and the live feed is best effort. After the previous batch's, so failure counts add up in order."""
        if previous is not None:
            await asyncio.wait([previous])
        await self._count(after.finals, after.hooks)
        try:
            await self._lanes.recorded(after.items, after.now)
        except Exception:
            log.warning("could not clear %d recording marks; they expire", len(after.items), exc_info=True)
        await self._advance(after.done)
        try:  # the wake-up lets a sleeping dispatcher time the retry itself
            await self._lanes.add(await self._with_current_limits(after.retries))
        except Exception:
            log.warning("could not queue %d retries; the sweeper will", len(after.retries), exc_info=True)
        try:
            await self._publisher.attempts(after.attempts)
        except Exception:
            log.exception("could not publish %d attempts to the live feed", len(after.attempts))
        # concurrently: their stores coalesce, and a burst of failures is not emitted one by one
        await asyncio.gather(
            *(
                self._emit(p.webhook, event, _delivery_notice(event, p, after.now))
                for event, p in after.notices
            )
        )

    async def _with_current_limits(self, retries: list[Enqueue]) -> list[Enqueue]:
        """Retries with their webhooks' in-flight limits as they are now. An enqueue writes its webhook's
        limit in the lanes, and the one an attempt was planned with may predate a ``maxInFlight`` update
        made while it was in flight: written back, it would undo the update until the next publish. A
        webhook deleted meanwhile keeps the planned limit (its retry is failed when claimed)."""
        if not retries:
            return retries
        try:
            current = await self._webhook_cache.get_many({ObjectId(e.item.webhook_id) for e in retries})
        except Exception:
            log.warning("could not read the limits of %d retries", len(retries), exc_info=True)
            return retries
        default = self._settings.webhook_max_in_flight
        return [
            replace(e, limit=webhook.in_flight_limit(default))
            if (webhook := current.get(ObjectId(e.item.webhook_id))) is not None
            else e
            for e in retries
        ]

    async def _reset_failures(self, webhook_ids: list[ObjectId]) -> None:
        """A success ends its webhook's streak of failures. Only webhooks that have one are written: the
        cache is dropped everywhere when a streak starts (``_count``) and when one ends, so a webhook it holds
        with no failures has none (a write per recorded batch was ~8 % of the store in bench P8 "huge")."""
        if not webhook_ids:
            return
        current = await self._webhook_cache.get_many(set(webhook_ids))
        failing = [w for w in webhook_ids if w in current and current[w].consecutive_failures]
        if failing and await self._webhooks.reset_failures(failing):
            for webhook_id in failing:
                await self._webhook_cache.changed(webhook_id, current[webhook_id].account_id)

    async def _close_events(self, written: list[Delivery]) -> None:
        """Close the outboxes whose events' planned deliveries this worker has now all written (one write, no
        read). Events whose deliveries were written by several workers are closed by the sweeper instead."""
        complete: list[OutboxRef] = []
        for delivery in written:
            event = self._event_cache.get(delivery.event_id)
            if event is None:
                continue
            seen = self._written.setdefault(event.id, set())
            seen.add(delivery.id)
            if seen < {p.delivery_id for p in event.planned if not p.held}:
                continue
            del self._written[event.id]
            outbox = event.outbox
            done = self._outbox_done[outbox.id] = self._outbox_done.get(outbox.id, 0) + 1
            if done >= outbox.size:
                complete.append(outbox)
                del self._outbox_done[outbox.id]
        for tracked in (self._written, self._outbox_done):
            while len(tracked) > MAX_TRACKED_EVENTS:
                tracked.popitem(last=False)
        if complete:
            try:
                await self._events.close(complete)
            except Exception:
                log.warning("could not close %d outboxes; the sweeper will", len(complete), exc_info=True)

    async def _advance(self, finals: list[Delivery]) -> None:
        """Final deliveries of ordered webhooks: the next delivery of their resource may go (after MongoDB
        holds the outcome; a lost call is repaired by the sweeper)."""
        gated = [(str(d.webhook_id), d.resource, str(d.id)) for d in finals if d.resource and d.seq]
        if not gated:
            return
        try:
            await self._lanes.advance(gated, utcnow())
        except Exception:
            log.warning("could not advance %d ordering gates; the sweeper will", len(gated), exc_info=True)

    async def _emit(self, about: Webhook, event: EventName, body: bytes) -> None:
        """Publish an operational event about ``about`` (best effort: the outcome is stored already)."""
        if self._publish_system is None:
            return
        try:
            await self._publish_system(about.account_id, event, body, about.id)
        except Exception:
            log.exception("could not emit %s about webhook %s", event.value, about.id)

    async def _count(self, finals: dict[ObjectId, list[bool]], hooks: dict[ObjectId, Webhook]) -> None:
        """Each webhook's final outcomes of a batch, counted towards auto-disable. A store error loses that
        webhook's count only (logged): the rest of the batch, other webhooks and other accounts included, is
        counted, and what follows it in ``_settle`` (retries, the live feed) still runs."""
        resets = [w for w, o in finals.items() if count_failures(o).reset]
        try:
            await self._reset_failures(resets)
        except Exception:
            log.warning("could not reset the failure counts of %d webhooks", len(resets), exc_info=True)
        for webhook_id, outcomes in finals.items():
            added = count_failures(outcomes).add
            if not added:
                continue
            try:
                await self._add_failures(hooks[webhook_id], added)
            except Exception:
                log.warning(
                    "could not count %d failed deliveries of webhook %s", added, webhook_id, exc_info=True
                )

    async def _add_failures(self, webhook: Webhook, added: int) -> None:
        threshold, webhook_id = self._settings.disable_after_failures, webhook.id
        count = await self._webhooks.add_failures(webhook_id, added)
        if count is None:
            return
        if count == added:  # a streak starts: no cache may go on saying it has no failures
            await self._webhook_cache.changed(webhook_id, webhook.account_id)
        # a batch may cross a warning level by more than one: the notice tells the count, not the level
        if operational.failing_warning_due(count - added, count, threshold) is not None:
            log.warning("webhook %s has %d consecutive failed deliveries", webhook_id, count)
            body = operational.webhook_failing_body(webhook.id, webhook.name, count, threshold, now=utcnow())
            await self._emit(webhook, EventName.WEBHOOK_FAILING, body)
            try:
                await self._publisher.webhook_status(webhook)
            except Exception:
                log.exception("could not publish the status change of webhook %s", webhook_id)
        if not should_disable(count, threshold):
            return
        disabled = await self._webhooks.disable_once(webhook_id, threshold)
        if disabled is None:
            return
        await self._webhook_cache.changed(webhook_id, disabled.account_id)
        metrics.webhook_disabled()
        log.warning("webhook %s disabled after %d consecutive failed deliveries", webhook_id, threshold)
        try:
            await self._publisher.webhook_status(disabled)
        except Exception:
            log.exception("could not publish the status change of webhook %s", webhook_id)
        body = operational.webhook_disabled_body(
            disabled.id, disabled.name, disabled.disabled_reason or "", count, now=utcnow()
        )
        await self._emit(disabled, EventName.WEBHOOK_DISABLED, body)


def _delivery_of(item: LaneItem, event: Event | None, stored: dict[ObjectId, Delivery]) -> Delivery | None:
    """The delivery an item attempts, if that attempt is still the next one to make."""
    if item.kind is Kind.NEW:
        if event is None or item.number != 1:
            return None
        delivery_id = ObjectId(item.delivery_id)
        planned = next((p for p in event.planned if p.delivery_id == delivery_id), None)
        return event.pending_delivery(planned) if planned is not None and not planned.held else None
    delivery = stored.get(ObjectId(item.delivery_id))
    if delivery is None or delivery.status is not DeliveryStatus.PENDING:
        return None
    return delivery if delivery.attempt_count == item.number - 1 else None


def _delivery_notice(event: EventName, p: Planned, now: datetime) -> bytes:
    """The body of ``delivery.exhausted`` / ``delivery.recovered`` about attempt ``p``'s delivery."""
    maker = (
        operational.delivery_exhausted_body
        if event is EventName.DELIVERY_EXHAUSTED
        else operational.delivery_recovered_body
    )
    return maker(p.delivery.id, p.webhook.id, p.webhook.name, p.delivery.event, p.number, now=now)


def _with_attempts(delivery: Delivery, attempts: int) -> Delivery:
    return replace(delivery, attempt_count=attempts)


def _breaker_outcome(result: SendResult) -> BreakerOutcome:
    if result.ok:
        return BreakerOutcome.OK
    return BreakerOutcome.UNREACHABLE if result.outcome in UNREACHABLE else BreakerOutcome.ANSWERED


def _observe(p: Planned, result: SendResult, status: DeliveryStatus, effective: bool) -> None:
    """Metrics and one log line per attempt (ids, outcome, status code, duration; never URLs or headers).
    A duplicate attempt (not ``effective``) is logged as one; its delivery finished with the other."""
    metrics.attempt_made(result.outcome.value, result.status_code, result.duration_ms)
    if status is not DeliveryStatus.PENDING and effective:
        metrics.delivery_finished(status.value, p.delivery.event)
    outcome = metrics.attempt_outcome(result.outcome.value, result.status_code)
    log.log(
        logging.INFO if result.ok else logging.WARNING,
        "attempt %d of delivery %s to webhook %s: %s in %d ms -> %s",
        p.number,
        p.delivery.id,
        p.webhook.id,
        outcome,
        result.duration_ms,
        status.value.lower() if effective else "duplicate, not recorded",
        extra={
            "fields": {
                "delivery_id": str(p.delivery.id),
                "webhook_id": str(p.webhook.id),
                "event": p.delivery.event,
                "attempt": p.number,
                "trigger": p.delivery.trigger_of(p.number).value.lower(),
                "outcome": outcome,
                "status_code": result.status_code,
                "duration_ms": result.duration_ms,
                "delivery_status": status.value.lower(),
                "duplicate": not effective,
            }
        },
    )
