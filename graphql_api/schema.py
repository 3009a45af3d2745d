"""The GraphQL schema: queries, mutations and subscriptions wired to thin resolvers.

The schema is built by the app (``graphql_api.app.create_app``) from its settings: the operation limits are
given to the extensions' constructors.
"""

from __future__ import annotations

import re
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from graphql_api.context import Info
from graphql_api.extensions import schema_extensions
from graphql_api.mutations import deliveries as delivery_mutations
from graphql_api.mutations import portal as portal_mutations
from graphql_api.mutations import secrets as secret_mutations
from graphql_api.mutations import webhooks as webhook_mutations
from graphql_api.permissions import scoped_query
from graphql_api.security import REQUEST_ERRORS, Limits, is_client_error
from graphql_api.subscriptions import Subscription
from graphql_api.types import (
    Delivery,
    DeliveryConnection,
    DeliveryStatusEnum,
    EventType,
    Webhook,
    WebhookConnection,
)
from webhooks.models import Scope
from webhooks.pagination import DEFAULT_PAGE_SIZE
from webhooks.settings import Settings
from webhooks.validation import check_text


async def event_types(info: Info) -> list[EventType]:
    return EventType.all()


async def webhooks(
    info: Info, first: int | None = DEFAULT_PAGE_SIZE, after: str | None = None
) -> WebhookConnection:
    ctx = info.context
    return WebhookConnection.from_page(await ctx.core.webhooks.page(ctx.caller, first, after))


async def webhook(info: Info, id: strawberry.ID) -> Webhook | None:
    ctx = info.context
    record = await ctx.core.webhooks.get(ctx.caller, str(id))
    return Webhook.from_record(record) if record else None


async def deliveries(
    info: Info,
    webhook_id: strawberry.ID | None = None,
    status: DeliveryStatusEnum | None = None,
    event: str | None = None,
    first: int | None = DEFAULT_PAGE_SIZE,
    after: str | None = None,
) -> DeliveryConnection:
    ctx = info.context
    check_text("event", event)
    page = await ctx.core.deliveries.page(
        ctx.caller,
        webhook_id=str(webhook_id) if webhook_id is not None else None,
        status=status,
        event=event,
        first=first,
        after=after,
    )
    return DeliveryConnection.from_page(page)


async def delivery(info: Info, id: strawberry.ID) -> Delivery | None:
    ctx = info.context
    record = await ctx.core.deliveries.get(ctx.caller, str(id))
    return Delivery.from_record(record) if record else None


MANAGE = Scope.MANAGE_WEBHOOKS


@strawberry.type
class Query:
    event_types = scoped_query(
        event_types,
        scope=MANAGE,
        description="The catalog of subscribable events, with an example payload each.",
    )
    webhooks = scoped_query(webhooks, scope=MANAGE, description="The account's webhooks, newest first.")
    webhook = scoped_query(
        webhook, scope=MANAGE, description="One webhook of the account; null when there is none with this id."
    )
    deliveries = scoped_query(
        deliveries,
        scope=MANAGE,
        description="The delivery log, newest first; filter by webhook, status or event.",
    )
    delivery = scoped_query(
        delivery,
        scope=MANAGE,
        description="One delivery of the account, with its attempts; null when there is none.",
    )

    portal_session = strawberry.field(
        resolver=portal_mutations.portal_session,
        description="The calling customer portal session; null when the caller uses an API key.",
    )


@strawberry.type
class Mutation:
    create_webhook = webhook_mutations.MUTATIONS["create_webhook"]
    update_webhook = webhook_mutations.MUTATIONS["update_webhook"]
    delete_webhook = webhook_mutations.MUTATIONS["delete_webhook"]
    test_webhook = delivery_mutations.MUTATIONS["test_webhook"]
    publish_event = delivery_mutations.MUTATIONS["publish_event"]
    retry_delivery = delivery_mutations.MUTATIONS["retry_delivery"]
    recover_deliveries = delivery_mutations.MUTATIONS["recover_deliveries"]
    rotate_webhook_secret = secret_mutations.MUTATIONS["rotate_webhook_secret"]
    create_portal_session = strawberry.mutation(
        resolver=portal_mutations.create_portal_session,
        description="A short-lived customer portal session (webhooks:manage only); needs an API key.",
    )
    revoke_portal_session = strawberry.mutation(
        resolver=portal_mutations.revoke_portal_session,
        description="End a portal session now (by id, or the calling one).",
    )


# graphql-core's errors about a variable's value, as opposed to its validation errors about the variables in
# the document ("is never used", "is not defined", "used in position expecting ..."); both come before
# execution.
_VARIABLE_VALUE = re.compile(
    r"Variable '\$[^']*' (?:(?:has|got) invalid value|of (?:required|non-null) type .* "
    r"(?:was not provided|must not be null))"
)

# graphql-core's suggestions: " Did you mean 'X'?", " Did you mean the enum value 'X'?", "... or 'Z'?"
_SUGGESTION = re.compile(r" Did you mean .*\?$", re.DOTALL)


class Schema(strawberry.Schema):
    """Errors are reported, not logged here: the operation's one log line (``graphql_api.observability``)
    carries its error codes, and the masked unexpected errors are logged with their traceback. Strawberry's
    default logs every client error at ERROR level with the query text around it: customer data.

    Client errors get a ``code``; with introspection off, no message suggests names from the schema.
    """

    def __init__(self, *args: Any, introspection: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.introspection = introspection

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        before_execution = (execution_context.pre_execution_errors or []) if execution_context else []
        for error in errors:
            if not self.introspection:
                error.message = _SUGGESTION.sub("", error.message)
            if is_client_error(error) and not (error.extensions or {}).get("code"):
                error.extensions = {
                    **(error.extensions or {}),
                    "code": _client_error_code(error, before_execution),
                }


def _client_error_code(error: GraphQLError, before_execution: list[GraphQLError]) -> str:
    if error.message.startswith("Syntax Error"):
        return "GRAPHQL_PARSE_FAILED"
    if isinstance(error.original_error, REQUEST_ERRORS):
        return "GRAPHQL_VALIDATION_FAILED"  # e.g. 'Unknown operation named "X".' over a WebSocket
    if _VARIABLE_VALUE.match(error.message):
        return "BAD_USER_INPUT"  # variables whose values do not fit their types
    if any(error is e for e in before_execution):
        return "GRAPHQL_VALIDATION_FAILED"  # variables never used or not defined are the document's fault
    return "BAD_USER_INPUT"


def build_schema(settings: Settings) -> Schema:
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=schema_extensions(Limits.of(settings)),
        config=StrawberryConfig(disable_field_suggestions=True),
        introspection=settings.introspection,
    )
