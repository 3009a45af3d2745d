"""The GraphQL schema: queries, mutations and subscriptions wired to thin resolvers."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig

from graphql_api.context import Info
from graphql_api.extensions import schema_extensions
from graphql_api.mutations import deliveries as delivery_mutations
from graphql_api.mutations import portal as portal_mutations
from graphql_api.mutations import secrets as secret_mutations
from graphql_api.mutations import webhooks as webhook_mutations
from graphql_api.security import RateLimit
from graphql_api.subscriptions import Subscription
from graphql_api.types import (
    Delivery,
    DeliveryConnection,
    DeliveryStatusEnum,
    EventType,
    Webhook,
    WebhookConnection,
)
from webhooks.errors import ErrorCode, UserErrors
from webhooks.models import Scope
from webhooks.pagination import DEFAULT_PAGE_SIZE
from webhooks.ratelimit import Action


def bad_input(exc: UserErrors) -> GraphQLError:
    return GraphQLError(str(exc), extensions={"code": "BAD_USER_INPUT"})


@strawberry.type
class Query:
    @strawberry.field(description="The catalog of subscribable events, with an example payload each.")
    async def event_types(self, info: Info) -> list[EventType]:
        await info.context.require(Scope.MANAGE_WEBHOOKS)
        return EventType.all()

    @strawberry.field(description="The account's webhooks, newest first.")
    async def webhooks(
        self, info: Info, first: int | None = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> WebhookConnection:
        who = await info.context.require(Scope.MANAGE_WEBHOOKS)
        try:
            page = await info.context.core.webhooks.page(who, first, after)
        except UserErrors as exc:
            raise bad_input(exc) from exc
        return WebhookConnection.from_page(page)

    @strawberry.field(description="One webhook of the account; null when there is none with this id.")
    async def webhook(self, info: Info, id: strawberry.ID) -> Webhook | None:
        who = await info.context.require(Scope.MANAGE_WEBHOOKS)
        try:
            record = await info.context.core.webhooks.get(who, str(id))
        except UserErrors as exc:
            if exc.errors[0].code is ErrorCode.INVALID_ID:
                raise bad_input(exc) from exc
            return None
        return Webhook.from_record(record)

    @strawberry.field(description="The delivery log, newest first; filter by webhook, status or event.")
    async def deliveries(
        self,
        info: Info,
        webhook_id: strawberry.ID | None = None,
        status: DeliveryStatusEnum | None = None,
        event: str | None = None,
        first: int | None = DEFAULT_PAGE_SIZE,
        after: str | None = None,
    ) -> DeliveryConnection:
        who = await info.context.require(Scope.MANAGE_WEBHOOKS)
        try:
            page = await info.context.core.deliveries.page(
                who,
                webhook_id=str(webhook_id) if webhook_id is not None else None,
                status=status,
                event=event,
                first=first,
                after=after,
            )
        except UserErrors as exc:
            raise bad_input(exc) from exc
        return DeliveryConnection.from_page(page)

    @strawberry.field(description="One delivery of the account, with its attempts; null when there is none.")
    async def delivery(self, info: Info, id: strawberry.ID) -> Delivery | None:
        who = await info.context.require(Scope.MANAGE_WEBHOOKS)
        try:
            record = await info.context.core.deliveries.get(who, str(id))
        except UserErrors as exc:
            raise bad_input(exc) from exc
        return Delivery.from_record(record) if record else None

    portal_session = strawberry.field(
        resolver=portal_mutations.portal_session,
        description="The calling customer portal session; null when the caller uses an API key.",
    )


@strawberry.type
class Mutation:
    create_webhook = strawberry.mutation(resolver=webhook_mutations.create_webhook)
    update_webhook = strawberry.mutation(resolver=webhook_mutations.update_webhook)
    delete_webhook = strawberry.mutation(resolver=webhook_mutations.delete_webhook)
    test_webhook = strawberry.mutation(
        resolver=delivery_mutations.test_webhook,
        extensions=[
            RateLimit(Action.TEST_WEBHOOK, Scope.MANAGE_WEBHOOKS, delivery_mutations.TestWebhookPayload)
        ],
    )
    publish_event = strawberry.mutation(
        resolver=delivery_mutations.publish_event,
        extensions=[
            RateLimit(Action.PUBLISH_EVENT, Scope.PUBLISH_EVENTS, delivery_mutations.PublishEventPayload)
        ],
    )
    retry_delivery = strawberry.mutation(resolver=delivery_mutations.retry_delivery)
    recover_deliveries = strawberry.mutation(resolver=delivery_mutations.recover_deliveries)
    rotate_webhook_secret = strawberry.mutation(
        resolver=secret_mutations.rotate_webhook_secret,
        description="Replace the signing secret; the previous one keeps signing during the grace period.",
    )
    create_portal_session = strawberry.mutation(
        resolver=portal_mutations.create_portal_session,
        description="A short-lived customer portal session (webhooks:manage only); needs an API key.",
    )
    revoke_portal_session = strawberry.mutation(
        resolver=portal_mutations.revoke_portal_session,
        description="End a portal session now (by id, or the calling one).",
    )


def build_schema() -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=schema_extensions(),
        config=StrawberryConfig(disable_field_suggestions=True),
    )


schema = build_schema()
