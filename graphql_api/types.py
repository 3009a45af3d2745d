"""GraphQL object types: thin views over domain records."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Generic, TypeVar

import strawberry
from strawberry.scalars import JSON

from webhooks import errors as core_errors
from webhooks.events import CATALOG, EventName
from webhooks.models import Webhook as WebhookRecord
from webhooks.pagination import Page, encode_cursor

WebhookEvent = strawberry.enum(
    EventName, name="WebhookEvent", description="Subscribable events (wire names)."
)
UserErrorCode = strawberry.enum(core_errors.ErrorCode, name="UserErrorCode")


@strawberry.type
class UserError:
    field: str | None
    code: UserErrorCode
    message: str

    @classmethod
    def from_core(cls, err: core_errors.UserError) -> UserError:
        return cls(field=err.field, code=err.code, message=err.message)


def user_errors(exc: core_errors.UserErrors) -> list[UserError]:
    return [UserError.from_core(e) for e in exc.errors]


@strawberry.type
class EventType:
    value: WebhookEvent
    name: str = strawberry.field(description="The wire name, as sent in the payload's `event` field.")
    description: str
    example: JSON

    @classmethod
    def all(cls) -> list[EventType]:
        return [
            cls(value=s.name, name=s.name.value, description=s.description, example=s.example())
            for s in CATALOG.values()
        ]


@strawberry.type
class Webhook:
    id: strawberry.ID
    name: str
    url: str
    events: list[WebhookEvent]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, w: WebhookRecord) -> Webhook:
        return cls(
            id=strawberry.ID(str(w.id)),
            name=w.name,
            url=w.url,
            events=[EventName(e) for e in w.events if e in EventName._value2member_map_],
            enabled=w.enabled,
            disabled_reason=w.disabled_reason,
            disabled_at=w.disabled_at,
            created_at=w.created_at,
            updated_at=w.updated_at,
        )


N = TypeVar("N")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[N]):
    cursor: str
    node: N


@strawberry.type
class WebhookConnection:
    edges: list[Edge[Webhook]]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: Page[WebhookRecord]) -> WebhookConnection:
        edges = [Edge(cursor=encode_cursor(w.id), node=Webhook.from_record(w)) for w in page.items]
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
            ),
        )


def enum_value(value: Enum) -> str:
    return str(value.value)
