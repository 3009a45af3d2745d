"""rotateWebhookSecret: a new signing secret, with the old one still signing during a grace period."""

from __future__ import annotations

from typing import Annotated

import strawberry

from graphql_api.context import Info
from graphql_api.types import UserError, Webhook, user_errors
from webhooks.errors import UserErrors
from webhooks.models import Scope

GRACE_DESCRIPTION = (
    "How long the previous secret keeps signing too (0 to 168 hours). Meanwhile webhook-signature "
    "carries both signatures, new first; X-Webhook-Signature only the new one."
)


@strawberry.type
class RotateWebhookSecretPayload:
    webhook: Webhook | None = None
    secret: str | None = strawberry.field(
        default=None, description="The new signing secret, shown in full only here."
    )
    errors: list[UserError] = strawberry.field(default_factory=list)


async def rotate_webhook_secret(
    info: Info,
    id: strawberry.ID,
    grace_period_hours: Annotated[int, strawberry.argument(description=GRACE_DESCRIPTION)] = 24,
) -> RotateWebhookSecretPayload:
    ctx = info.context
    who = await ctx.require(Scope.MANAGE_WEBHOOKS)
    try:
        rotated = await ctx.core.webhooks.rotate_secret(who, str(id), grace_period_hours)
    except UserErrors as exc:
        return RotateWebhookSecretPayload(errors=user_errors(exc))
    return RotateWebhookSecretPayload(webhook=Webhook.from_record(rotated.webhook), secret=rotated.secret)
