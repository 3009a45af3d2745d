"""Webhook management mutations. Errors are data; nothing is written when ``errors`` is non-empty.

Each resolver runs behind ``scoped_mutation`` (scope check, ``UserErrors`` as payload errors)."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from graphql_api.context import Info
from graphql_api.endpoint_controls import FILTER_DESCRIPTION, WebhookHeaderInput, WebhookOrdering, controls
from graphql_api.permissions import scoped_mutation
from graphql_api.types import UserError, Webhook, WebhookEvent
from webhooks.models import Scope


@strawberry.input
class CreateWebhookInput:
    name: str
    url: str
    events: list[WebhookEvent]
    max_in_flight: int | None = strawberry.field(
        default=None,
        description="At most this many attempts to this webhook at once, across all workers "
        "(default: the service's WEBHOOKS_WEBHOOK_MAX_IN_FLIGHT).",
    )
    filter: JSON | None = strawberry.field(default=None, description=FILTER_DESCRIPTION)
    headers: list[WebhookHeaderInput] | None = strawberry.field(
        default=None, description="Up to 10 custom request headers."
    )
    ordering: WebhookOrdering = WebhookOrdering.NONE


@strawberry.input
class UpdateWebhookInput:
    name: str | None = None
    url: str | None = None
    events: list[WebhookEvent] | None = None
    enabled: bool | None = None
    max_in_flight: int | None = strawberry.field(
        default=None, description="At most this many attempts to this webhook at once, across all workers."
    )
    filter: JSON | None = strawberry.field(
        default=strawberry.UNSET, description=FILTER_DESCRIPTION + " null removes it; absent keeps it."
    )
    headers: list[WebhookHeaderInput] | None = strawberry.field(
        default=None, description="Replaces all custom headers ([] removes them); absent keeps them."
    )
    ordering: WebhookOrdering | None = None


@strawberry.type
class CreateWebhookPayload:
    webhook: Webhook | None = None
    secret: str | None = strawberry.field(
        default=None, description="The signing secret, shown in full only here and on rotation."
    )
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class UpdateWebhookPayload:
    webhook: Webhook | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class DeleteWebhookPayload:
    deleted_id: strawberry.ID | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


async def create_webhook(info: Info, input: CreateWebhookInput) -> CreateWebhookPayload:
    ctx = info.context
    created = await ctx.core.webhooks.create(
        ctx.caller,
        input.name,
        input.url,
        list(input.events),
        controls(input.filter, input.headers, input.ordering),
        max_in_flight=input.max_in_flight,
    )
    return CreateWebhookPayload(webhook=Webhook.from_record(created.webhook), secret=created.secret)


async def update_webhook(info: Info, id: strawberry.ID, input: UpdateWebhookInput) -> UpdateWebhookPayload:
    ctx = info.context
    webhook = await ctx.core.webhooks.update(
        ctx.caller,
        str(id),
        name=input.name,
        url=input.url,
        events=list(input.events) if input.events is not None else None,
        enabled=input.enabled,
        max_in_flight=input.max_in_flight,
        controls=controls(input.filter, input.headers, input.ordering),
    )
    return UpdateWebhookPayload(webhook=Webhook.from_record(webhook))


async def delete_webhook(info: Info, id: strawberry.ID) -> DeleteWebhookPayload:
    ctx = info.context
    deleted = await ctx.core.webhooks.delete(ctx.caller, str(id))
    return DeleteWebhookPayload(deleted_id=strawberry.ID(str(deleted)))


MUTATIONS = {
    "create_webhook": scoped_mutation(
        create_webhook, scope=Scope.MANAGE_WEBHOOKS, payload=CreateWebhookPayload
    ),
    "update_webhook": scoped_mutation(
        update_webhook, scope=Scope.MANAGE_WEBHOOKS, payload=UpdateWebhookPayload
    ),
    "delete_webhook": scoped_mutation(
        delete_webhook, scope=Scope.MANAGE_WEBHOOKS, payload=DeleteWebhookPayload
    ),
}
