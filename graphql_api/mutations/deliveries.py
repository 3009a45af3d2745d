"""Event publishing and delivery mutations: publishEvent, testWebhook, retryDelivery, recoverDeliveries."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from graphql_api.context import Info
from graphql_api.permissions import SelectionNeeds, scoped_mutation
from graphql_api.security import RateLimit
from graphql_api.types import Delivery, UserError, WebhookEvent
from webhooks.models import Scope
from webhooks.payloads import AuditLog
from webhooks.ratelimit import Action
from webhooks.validation import ANY_TIME, EARLIEST, LATEST_OBJECT_ID_TIME, check_text, utc_in_range


@strawberry.input(
    description="The audit-log entry of the action that caused the event (the payload's data.log)."
)
class AuditLogInput:
    action: str
    resource_type: str
    resource_id: strawberry.ID
    user_id: strawberry.ID
    user_name: str
    user_email: str
    timestamp: datetime | None = None


@strawberry.input
class PublishEventInput:
    event: WebhookEvent
    log: AuditLogInput
    details: JSON | None = None
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="The same key within 24 hours returns the first event and delivers nothing new; with "
        "another event, log or details (times the service filled in aside) it is a CONFLICT error.",
    )


@strawberry.type
class PublishedEvent:
    id: strawberry.ID
    event: str
    deliveries: list[Delivery]
    replayed: bool = strawberry.field(description="True when the idempotency key had been used already.")


@strawberry.type
class PublishEventPayload:
    event: PublishedEvent | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class TestWebhookPayload:
    delivery: Delivery | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class RetryDeliveryPayload:
    delivery: Delivery | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class RecoverDeliveriesPayload:
    count: int = 0
    dry_run: bool = False
    has_more: bool = strawberry.field(
        default=False,
        description="More deliveries matched than one call restarts (10,000, newest first): call again to "
        "recover the rest (a dry run counts the same first 10,000 each time).",
    )
    errors: list[UserError] = strawberry.field(default_factory=list)


async def publish_event(info: Info, input: PublishEventInput) -> PublishEventPayload:
    ctx = info.context
    log = input.log
    check_text("idempotencyKey", input.idempotency_key)
    audit = AuditLog(
        action=log.action,
        resource_type=log.resource_type,
        resource_id=str(log.resource_id),
        user_id=str(log.user_id),
        user_name=log.user_name,
        user_email=log.user_email,
        timestamp=utc_in_range("log.timestamp", log.timestamp, *ANY_TIME) if log.timestamp else None,
    )
    published = await ctx.core.deliveries.publish(
        ctx.caller, input.event, audit, input.details, input.idempotency_key
    )
    deliveries = [Delivery.from_record(d) for d in published.deliveries]
    return PublishEventPayload(
        event=PublishedEvent(
            id=strawberry.ID(str(published.event_id)),
            event=input.event.value,  # a replay with another event name is refused (CONFLICT)
            deliveries=deliveries,
            replayed=published.replayed,
        )
    )


async def test_webhook(info: Info, id: strawberry.ID) -> TestWebhookPayload:
    ctx = info.context
    delivery = await ctx.core.deliveries.test(ctx.caller, str(id))
    return TestWebhookPayload(delivery=Delivery.from_record(delivery))


async def retry_delivery(info: Info, id: strawberry.ID) -> RetryDeliveryPayload:
    ctx = info.context
    delivery = await ctx.core.deliveries.retry(ctx.caller, str(id))
    return RetryDeliveryPayload(delivery=Delivery.from_record(delivery))


async def recover_deliveries(
    info: Info,
    webhook_id: strawberry.ID,
    since: datetime,
    until: datetime | None = None,
    dry_run: bool = False,
) -> RecoverDeliveriesPayload:
    ctx = info.context
    # deliveries are found by their ids' time, which spans 1970 to 2106
    since = utc_in_range("since", since, EARLIEST, LATEST_OBJECT_ID_TIME)
    if until is not None:
        until = utc_in_range("until", until, EARLIEST, LATEST_OBJECT_ID_TIME)
    done = await ctx.core.deliveries.recover(ctx.caller, str(webhook_id), since, until, dry_run)
    return RecoverDeliveriesPayload(count=done.count, dry_run=dry_run, has_more=done.has_more)


MUTATIONS = {
    "test_webhook": scoped_mutation(
        test_webhook,
        scope=Scope.MANAGE_WEBHOOKS,
        payload=TestWebhookPayload,
        extensions=[RateLimit(Action.TEST_WEBHOOK)],
    ),
    "publish_event": scoped_mutation(
        publish_event,
        scope=Scope.PUBLISH_EVENTS,
        payload=PublishEventPayload,
        # the last extension runs first: a publish refused for its selection is not counted
        extensions=[RateLimit(Action.PUBLISH_EVENT), SelectionNeeds("attempts", Scope.MANAGE_WEBHOOKS)],
    ),
    "retry_delivery": scoped_mutation(
        retry_delivery, scope=Scope.MANAGE_WEBHOOKS, payload=RetryDeliveryPayload
    ),
    "recover_deliveries": scoped_mutation(
        recover_deliveries, scope=Scope.MANAGE_WEBHOOKS, payload=RecoverDeliveriesPayload
    ),
}
