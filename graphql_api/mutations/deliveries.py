"""Event publishing and delivery mutations: publishEvent, testWebhook, retryDelivery, recoverDeliveries."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from graphql_api.context import Info
from graphql_api.types import Delivery, UserError, WebhookEvent, user_errors
from webhooks.errors import UserErrors
from webhooks.models import Scope
from webhooks.payloads import AuditLog


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
        description="The same key within 24 hours returns the first event and delivers nothing new.",
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
    errors: list[UserError] = strawberry.field(default_factory=list)


async def publish_event(info: Info, input: PublishEventInput) -> PublishEventPayload:
    ctx = info.context
    who = await ctx.require(Scope.PUBLISH_EVENTS)
    log = input.log
    audit = AuditLog(
        action=log.action,
        resource_type=log.resource_type,
        resource_id=str(log.resource_id),
        user_id=str(log.user_id),
        user_name=log.user_name,
        user_email=log.user_email,
        timestamp=log.timestamp,
    )
    try:
        published = await ctx.core.deliveries.publish(
            who, input.event, audit, input.details, input.idempotency_key
        )
    except UserErrors as exc:
        return PublishEventPayload(errors=user_errors(exc))
    deliveries = [Delivery.from_record(d) for d in published.deliveries]
    return PublishEventPayload(
        event=PublishedEvent(
            id=strawberry.ID(str(published.event_id)),
            event=input.event.value,
            deliveries=deliveries,
            replayed=published.replayed,
        )
    )


async def test_webhook(info: Info, id: strawberry.ID) -> TestWebhookPayload:
    ctx = info.context
    who = await ctx.require(Scope.MANAGE_WEBHOOKS)
    try:
        delivery = await ctx.core.deliveries.test(who, str(id))
    except UserErrors as exc:
        return TestWebhookPayload(errors=user_errors(exc))
    return TestWebhookPayload(delivery=Delivery.from_record(delivery))


async def retry_delivery(info: Info, id: strawberry.ID) -> RetryDeliveryPayload:
    ctx = info.context
    who = await ctx.require(Scope.MANAGE_WEBHOOKS)
    try:
        delivery = await ctx.core.deliveries.retry(who, str(id))
    except UserErrors as exc:
        return RetryDeliveryPayload(errors=user_errors(exc))
    return RetryDeliveryPayload(delivery=Delivery.from_record(delivery))


async def recover_deliveries(
    info: Info,
    webhook_id: strawberry.ID,
    since: datetime,
    until: datetime | None = None,
    dry_run: bool = False,
) -> RecoverDeliveriesPayload:
    ctx = info.context
    who = await ctx.require(Scope.MANAGE_WEBHOOKS)
    try:
        count = await ctx.core.deliveries.recover(who, str(webhook_id), since, until, dry_run)
    except UserErrors as exc:
        return RecoverDeliveriesPayload(errors=user_errors(exc))
    return RecoverDeliveriesPayload(count=count, dry_run=dry_run)
