"""rotateWebhookSecret: a new signing secret, with the old one still signing during a grace period."""

from __future__ import annotations

from typing import Annotated

import strawberry

from graphql_api.context import Info
from graphql_api.permissions import scoped_mutation
from graphql_api.types import UserError, Webhook
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
    rotated = await ctx.core.webhooks.rotate_secret(ctx.caller, str(id), grace_period_hours)
    return RotateWebhookSecretPayload(webhook=Webhook.from_record(rotated.webhook), secret=rotated.secret)


MUTATIONS = {
    "rotate_webhook_secret": scoped_mutation(
        rotate_webhook_secret,
        scope=Scope.MANAGE_WEBHOOKS,
        payload=RotateWebhookSecretPayload,
        description="Replace the signing secret; the previous one keeps signing during the grace period.",
    ),
}
