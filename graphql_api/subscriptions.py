"""GraphQL subscriptions: the live delivery feed and webhook status changes.

Both read from the process's :class:`graphql_api.feed.Feed` (one Redis pub/sub connection per API
process), registered under the caller's account id: another account's messages are never queued for
it, whatever arguments it passes.  A ``webhookId`` argument is checked first, scoped to the caller's
account: another account's id gets exactly the error an unknown id gets (``NOT_FOUND``), a malformed
one ``BAD_USER_INPUT``.  Those errors end the subscription before it starts (an ``error`` message in
graphql-transport-ws).

``deliveryAttempts`` values are built once per message from the worker's pub/sub message, which
carries every field of ``DeliveryAttempt`` (including ``responseHeaders`` and the first 4 KiB of
``responseBody``), so a live attempt equals the one ``delivery(id) { attempts }`` returns.
``webhookStatusChanged`` re-reads the webhook from MongoDB (account-scoped) for each change, so it
always shows the current state; a webhook deleted in between is skipped.

A subscriber that cannot keep up (its queue of ``feed.QUEUE_SIZE`` values is full) is dropped: its
subscription ends with the error "subscriber too slow; re-query deliveries to catch up"
(``extensions.code`` ``SUBSCRIBER_TOO_SLOW``).  The live feed is at-most-once (a Redis restart loses
what was published meanwhile); ``deliveries`` is the complete record.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import strawberry
from graphql import GraphQLError

from graphql_api.context import Info
from graphql_api.feed import INTERRUPTED, Feed, FeedClosed, FeedInterrupted, SubscriberTooSlow
from graphql_api.shared_subscriptions import IN_SHARED_STREAM
from graphql_api.types import DeliveryAttempt, Webhook
from webhooks import metrics, pubsub
from webhooks.models import Principal, Scope
from webhooks.pubsub import ATTEMPTS_CHANNEL, STATUS_CHANNEL

TOO_SLOW_CODE = "SUBSCRIBER_TOO_SLOW"
INTERRUPTED_CODE = "FEED_INTERRUPTED"


def attempt_from_message(message: dict[str, Any]) -> DeliveryAttempt:
    """A ``DeliveryAttempt`` from a ``webhooks:attempts`` message (format: ``webhooks.pubsub``)."""
    return DeliveryAttempt.from_record(pubsub.attempt_from_message(message))


PARSERS = {ATTEMPTS_CHANNEL: attempt_from_message, STATUS_CHANNEL: pubsub.status_webhook_id}


def feed_of(info: Info) -> Feed:
    feed: Feed | None = getattr(info.context.request.app.state, "feed", None)
    if feed is None:
        raise GraphQLError("The live feed is not available", extensions={"code": "UNAVAILABLE"})
    return feed


def _too_slow() -> GraphQLError:
    return GraphQLError(SubscriberTooSlow().args[0], extensions={"code": TOO_SLOW_CODE})


async def _envelopes(
    feed: Feed, channel: str, account_id: str, webhook_id: str | None
) -> AsyncGenerator[Any, None]:
    """The values published for one subscriber, until the feed closes; a too-slow subscriber is ended."""
    counted = not IN_SHARED_STREAM.get()  # a shared stream's members are counted one by one
    if counted:
        metrics.subscription_opened()
    try:
        with feed.subscribe(channel, account_id, webhook_id) as sub:
            while True:
                try:
                    envelope = await sub.get()
                except SubscriberTooSlow:
                    raise _too_slow() from None
                except FeedInterrupted:
                    raise GraphQLError(INTERRUPTED, extensions={"code": INTERRUPTED_CODE}) from None
                except FeedClosed:
                    return
                yield envelope.value
    finally:
        if counted:
            metrics.subscription_closed()


async def _attempts(
    feed: Feed, account_id: str, webhook_id: str | None
) -> AsyncGenerator[DeliveryAttempt, None]:
    async with contextlib.aclosing(_envelopes(feed, ATTEMPTS_CHANNEL, account_id, webhook_id)) as values:
        async for attempt in values:
            yield attempt


async def _statuses(
    info: Info, feed: Feed, who: Principal, webhook_id: str | None
) -> AsyncGenerator[Webhook, None]:
    repo = info.context.core.webhook_repo
    async with contextlib.aclosing(_envelopes(feed, STATUS_CHANNEL, str(who.account_id), webhook_id)) as ids:
        async for changed in ids:
            record = await repo.get(who.account_id, changed)
            if record is not None:
                yield Webhook.from_record(record)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every attempt of the account's deliveries as it finishes (or of one webhook). "
        "Live only: after a gap (reconnect, `SUBSCRIBER_TOO_SLOW`, `FEED_INTERRUPTED`), re-query "
        "`deliveries`."
    )
    async def delivery_attempts(
        self, info: Info, webhook_id: strawberry.ID | None = None
    ) -> AsyncIterator[DeliveryAttempt]:
        who = await info.context.require(Scope.MANAGE_WEBHOOKS)
        oid = await info.context.webhook_filter(who, webhook_id)
        return _attempts(feed_of(info), str(who.account_id), str(oid) if oid else None)

    @strawberry.subscription(
        description="The webhook, as stored now, each time it is disabled (automatically after "
        "consecutive failed deliveries, or by a user) or re-enabled, when it starts failing "
        "(webhook.failing), and when its circuit breaker opens or closes."
    )
    async def webhook_status_changed(
        self, info: Info, webhook_id: strawberry.ID | None = None
    ) -> AsyncIterator[Webhook]:
        who = await info.context.require(Scope.MANAGE_WEBHOOKS)
        oid = await info.context.webhook_filter(who, webhook_id)
        return _statuses(info, feed_of(info), who, str(oid) if oid else None)
