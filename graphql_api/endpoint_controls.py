"""GraphQL types of the endpoint controls: payload filter, custom headers, ordering."""

from __future__ import annotations

from typing import cast

import orjson
import strawberry
from strawberry.scalars import JSON
from strawberry.types.unset import UnsetType

from webhooks.custom_headers import CustomHeader, HeaderInput
from webhooks.endpoint_controls import KEEP, EndpointControls
from webhooks.models import Ordering

strawberry.enum(
    Ordering,
    name="WebhookOrdering",
    description=(
        "NONE: deliveries are sent as soon as they can be. PER_RESOURCE: deliveries that share "
        "data.log.resourceId are sent one at a time, in publish order."
    ),
)
WebhookOrdering = Ordering


@strawberry.input(description="A custom request header: sent on every attempt, redacted in the log.")
class WebhookHeaderInput:
    name: str = strawberry.field(description="A valid header name; reserved ones are refused.")
    value: str = strawberry.field(description="Write-only: stored encrypted and shown masked.")


@strawberry.type(description="A custom request header; its value is never shown in full.")
class WebhookHeader:
    name: str
    masked_value: str

    @classmethod
    def from_record(cls, header: CustomHeader) -> WebhookHeader:
        return cls(name=header.name, masked_value=header.masked_value)


FILTER_DESCRIPTION = (
    'A payload filter: {"path": "details.x", "eq": v}, {"path": ..., "in": [..]}, '
    '{"path": ..., "exists": true}, {"all": [..]}, {"any": [..]}; paths start at log. or details.'
)


def filter_json(text: str | None) -> JSON | None:
    return None if text is None else cast(JSON, orjson.loads(text))


def controls(
    filter: object, headers: list[WebhookHeaderInput] | None, ordering: Ordering | None
) -> EndpointControls:
    """The controls given in a create/update input (an absent ``filter`` is UNSET: kept)."""
    return EndpointControls(
        filter=KEEP if isinstance(filter, UnsetType) else filter,
        headers=None if headers is None else [HeaderInput(h.name, h.value) for h in headers],
        ordering=ordering,
    )
