"""The live feed of one API process: ONE Redis pub/sub connection, fanned out to bounded queues.

Workers publish every finished attempt on ``webhooks:attempts`` and every webhook status change on
``webhooks:webhook-status`` (``webhooks.pubsub``).  Each API process runs one :class:`Feed`: a reader
task holding a single ``redis.asyncio`` PubSub connection, subscribed to both channels, that

- decodes each message once (orjson) and turns it into its GraphQL value once (the channel's
  :data:`Parser`), shared by every subscriber that receives it;
- looks up the subscribers of the message's account in an index ``channel → account id →
  subscribers``, so fan-out costs O(subscribers of that account), and another account's
  subscribers are never even looked at (filtering by account happens before anything is queued);
- offers the value to each matching subscriber's bounded ``asyncio.Queue`` (``QUEUE_SIZE``) without
  waiting.  A subscriber whose queue is full is dropped on the spot: it leaves the index, its queue is
  emptied, and its next read raises :class:`SubscriberTooSlow` ("subscriber too slow; re-query
  deliveries to catch up"), which ends that one GraphQL subscription with an error.  Nobody else waits.

Redis restarts and network failures: the reader reconnects with exponential backoff (0.1 s doubling to
5 s, with jitter) and resubscribes; subscriptions stay open meanwhile.  Messages published while the
reader was disconnected are lost to the live feed (Redis pub/sub keeps nothing): MongoDB remains the
source of truth, and clients that need every attempt re-query ``deliveries`` after a gap (the
``connected`` event and the ``reconnects`` counter show when one happened).  Live-feed delivery is
at-most-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError

from webhooks import pubsub
from webhooks.redis_conn import RedisTarget

log = logging.getLogger(__name__)

# Bound of each subscription's queue.  Module-level so tests can shrink it (read at subscribe time).
QUEUE_SIZE = 1000
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
# Seconds between PINGs on an idle subscriber connection; no answer for two of them means it is dead.
HEALTH_CHECK_INTERVAL = 15.0
LIVENESS_PING = "webhooks-feed-alive"  # our own PING's payload (redis-py swallows the PONG of its own)
# Seconds the API lifespan waits for the first subscription before serving anyway.
READY_TIMEOUT = 5.0

TOO_SLOW: Final = "subscriber too slow; re-query deliveries to catch up"
INTERRUPTED: Final = "the live feed was interrupted; re-query deliveries to catch up, and subscribe again"

# Turns one decoded message into the value handed to subscribers (built once per message).
Parser = Callable[[dict[str, Any]], Any]


class SubscriberTooSlow(Exception):
    """The subscriber's queue overflowed: it was dropped from the feed."""

    def __init__(self) -> None:
        super().__init__(TOO_SLOW)


class FeedClosed(Exception):
    """The feed was stopped (the API is shutting down)."""


class FeedInterrupted(Exception):
    """The feed lost Redis and is back: what was published meanwhile never reached this subscriber."""

    def __init__(self) -> None:
        super().__init__(INTERRUPTED)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded message: its routing keys and the parsed value."""

    account_id: str
    webhook_id: str | None
    value: Any


class _Signal:
    """A queue item that ends a subscription (dropped, or feed closed)."""

    __slots__ = ("exc",)

    def __init__(self, exc: Callable[[], Exception]) -> None:
        self.exc = exc


_DROPPED = _Signal(SubscriberTooSlow)
_CLOSED = _Signal(FeedClosed)
_INTERRUPTED = _Signal(FeedInterrupted)


class Subscriber:
    """One open subscription: a bounded queue filled by the feed's reader."""

    __slots__ = ("account_id", "channel", "dropped", "queue", "webhook_id")

    def __init__(self, channel: str, account_id: str, webhook_id: str | None, maxsize: int) -> None:
        self.channel = channel
        self.account_id = account_id
        self.webhook_id = webhook_id
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.dropped = False

    def wants(self, envelope: Envelope) -> bool:
        return self.webhook_id is None or self.webhook_id == envelope.webhook_id

    async def get(self) -> Any:
        """The next value; raises :class:`SubscriberTooSlow` once dropped, :class:`FeedClosed` on stop."""
        item = await self.queue.get()
        if isinstance(item, _Signal):
            self.queue.put_nowait(item)  # keep raising if called again
            raise item.exc()
        return item

    def _end(self, signal: _Signal) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(signal)


@dataclass
class FeedStats:
    received: int = 0  # messages read from Redis
    delivered: int = 0  # values queued to subscribers
    dropped: int = 0  # subscribers dropped for being too slow
    malformed: int = 0  # messages that could not be decoded or parsed
    reconnects: int = 0  # successful (re)subscriptions after the first


@dataclass
class Feed:
    """Redis pub/sub → per-subscription queues, indexed by channel and account."""

    redis: RedisTarget | str  # a plain URL is shorthand for RedisTarget(url)
    parsers: Mapping[str, Parser]
    health_check_interval: float = HEALTH_CHECK_INTERVAL
    stats: FeedStats = field(default_factory=FeedStats)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _index: dict[str, dict[str, set[Subscriber]]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _closed: bool = False

    def __post_init__(self) -> None:
        self._index = {channel: {} for channel in self.parsers}

    # ---------------------------------------------------------------------------------- lifecycle

    async def start(self, ready_timeout: float = READY_TIMEOUT) -> None:
        """Start the reader; wait up to ``ready_timeout`` for the first subscription (never fails)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="graphql-live-feed")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ready_timeout):
                await self.connected.wait()
        if not self.connected.is_set():
            log.warning("live feed: not subscribed to Redis yet; still trying in the background")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for by_account in self._index.values():
            for subscribers in by_account.values():
                for sub in subscribers:
                    sub._end(_CLOSED)
            by_account.clear()

    async def __aenter__(self) -> Feed:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -------------------------------------------------------------------------------- subscribers

    @contextlib.contextmanager
    def subscribe(
        self, channel: str, account_id: str, webhook_id: str | None = None, maxsize: int | None = None
    ) -> Iterator[Subscriber]:
        """Register a subscriber for ``account_id`` (and optionally one webhook) while in the block."""
        if channel not in self._index:
            raise ValueError(f"unknown channel {channel!r}")
        if self._closed:
            raise FeedClosed()
        sub = Subscriber(channel, account_id, webhook_id, maxsize or QUEUE_SIZE)
        by_account = self._index[channel]
        by_account.setdefault(account_id, set()).add(sub)
        try:
            yield sub
        finally:
            self._remove(sub)

    def _remove(self, sub: Subscriber) -> None:
        by_account = self._index[sub.channel]
        subscribers = by_account.get(sub.account_id)
        if subscribers is not None:
            subscribers.discard(sub)
            if not subscribers:
                del by_account[sub.account_id]

    def subscriber_count(self, channel: str | None = None, account_id: str | None = None) -> int:
        channels = [channel] if channel is not None else list(self._index)
        total = 0
        for name in channels:
            by_account = self._index[name]
            if account_id is not None:
                total += len(by_account.get(account_id, ()))
            else:
                total += sum(len(s) for s in by_account.values())
        return total

    # ------------------------------------------------------------------------------------ fan-out

    def dispatch(self, channel: str, data: bytes | str) -> None:
        """Decode one message once and offer it to the subscribers of its account."""
        self.stats.received += 1
        by_account = self._index.get(channel)
        if by_account is None:
            return
        try:
            message = pubsub.decode(data)
            account_id = message["accountId"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self.stats.malformed += 1
            log.warning("live feed: malformed message on %s ignored", channel)
            return
        subscribers = by_account.get(account_id)
        if not subscribers:
            return  # nobody of this account listens here: don't even parse
        try:
            envelope = Envelope(account_id, message.get("webhookId"), self.parsers[channel](message))
        except Exception:
            self.stats.malformed += 1
            log.exception("live feed: message on %s could not be parsed", channel)
            return
        dropped: list[Subscriber] = []
        for sub in subscribers:
            if not sub.wants(envelope):
                continue
            try:
                sub.queue.put_nowait(envelope)
            except asyncio.QueueFull:
                dropped.append(sub)
            else:
                self.stats.delivered += 1
        for sub in dropped:
            self._drop(sub)

    def _interrupt_subscribers(self) -> int:
        """End every subscription with ``FeedInterrupted``: each may have missed messages, and a feed that
        went on as if nothing happened left clients showing stale state with no sign of the gap."""
        ended = 0
        for by_account in self._index.values():
            for subscribers in by_account.values():
                for sub in subscribers:
                    sub._end(_INTERRUPTED)
                    ended += 1
            by_account.clear()
        return ended

    def _drop(self, sub: Subscriber) -> None:
        self._remove(sub)
        sub.dropped = True
        sub._end(_DROPPED)
        self.stats.dropped += 1
        log.warning("live feed: dropped a slow %s subscriber of account %s", sub.channel, sub.account_id)

    # ------------------------------------------------------------------------------------- reader

    async def _run(self) -> None:
        backoff = EqualJitterBackoff(cap=BACKOFF_MAX, base=BACKOFF_MIN)  # redis-py's, with jitter
        failures = 0
        first = True
        while True:
            delay = backoff.compute(failures)
            try:
                await self._listen(first)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning(
                    "live feed: Redis connection lost (%s: %s); reconnecting in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
            except Exception:
                log.exception("live feed: reader failed; restarting in %.1fs", delay)
            if self.connected.is_set():
                self.connected.clear()
                first = False
                failures, delay = 0, backoff.compute(0)
            await asyncio.sleep(delay)
            failures += 1

    async def _listen(self, first: bool) -> None:
        target = RedisTarget(self.redis) if isinstance(self.redis, str) else self.redis
        redis: Redis = target.client(
            health_check_interval=self.health_check_interval,
            socket_connect_timeout=5,
            socket_keepalive=True,
        )
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*self._index)
            if not first:
                self.stats.reconnects += 1
                ended = self._interrupt_subscribers()
                log.warning(
                    "live feed: resubscribed to Redis; messages published during the gap were not delivered: "
                    "%d subscriptions ended so that their clients re-query `deliveries`",
                    ended,
                )
            self.connected.set()
            await _pump(
                pubsub.get_message,
                self.dispatch,
                self.health_check_interval,
                ping=lambda: pubsub.ping(LIVENESS_PING),
            )
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await redis.aclose()


async def _pump(
    get_message: Callable[..., Awaitable[dict[str, Any] | None]],
    dispatch: Callable[[str, bytes | str], None],
    idle_timeout: float,
    ping: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Hand every message to ``dispatch``. With ``ping``: an idle connection is pinged every ``idle_timeout``
    seconds, and one that has not answered anything for two of them raises ``TimeoutError`` (the caller
    reconnects). redis-py's own health check sends a PING but never waits for the PONG, so a Redis that
    stopped answering (a partition, a hung host) left the feed subscribed to nothing for as long as TCP took
    to give up: many minutes in which every subscriber of this process silently got nothing."""
    heard = time.monotonic()
    while True:
        message = await get_message(ignore_subscribe_messages=True, timeout=idle_timeout)
        now = time.monotonic()
        if message is not None:
            heard = now
        elif ping is not None:
            if now - heard > 2 * idle_timeout:
                raise TimeoutError(f"no answer from Redis for {now - heard:.0f} s")
            async with asyncio.timeout(idle_timeout):
                await ping()
        if message is None or message.get("type") != "message":
            continue
        channel = message["channel"]
        dispatch(channel.decode() if isinstance(channel, bytes) else channel, message["data"])
        # Let subscribers drain their queues between messages of a burst already buffered here.
        await asyncio.sleep(0)
