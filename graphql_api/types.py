"""GraphQL object types: thin views over domain records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Generic, Protocol, TypeVar, cast

import strawberry
from bson import ObjectId
from strawberry.scalars import JSON

from webhooks import errors as core_errors
from webhooks.events import CATALOG, EventName
from webhooks.models import Attempt as AttemptRecord
from webhooks.models import AttemptTrigger, DeliveryStatus
from webhooks.models import Delivery as DeliveryRecord
from webhooks.models import Webhook as WebhookRecord
from webhooks.pagination import Page, encode_cursor

# The domain enums, registered with their GraphQL names (strawberry.enum returns the same class).
strawberry.enum(EventName, name="WebhookEvent", description="Subscribable events (wire names).")
strawberry.enum(core_errors.ErrorCode, name="UserErrorCode")
strawberry.enum(DeliveryStatus, name="DeliveryStatus")
strawberry.enum(AttemptTrigger, name="AttemptTrigger")
WebhookEvent = EventName
UserErrorCode = core_errors.ErrorCode
DeliveryStatusEnum = DeliveryStatus
AttemptTriggerEnum = AttemptTrigger


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
            cls(value=s.name, name=s.name.value, description=s.description, example=cast(JSON, s.example()))
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
    consecutive_failures: int = strawberry.field(
        default=0, description="Failed deliveries in a row (reset by a success); at the limit it is disabled."
    )

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
            consecutive_failures=w.consecutive_failures,
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


class _HasId(Protocol):
    @property
    def id(self) -> ObjectId: ...


R = TypeVar("R", bound=_HasId)


def relay_page(page: Page[R], node: Callable[[R], N]) -> tuple[list[Edge[N]], PageInfo]:
    """Relay edges (cursor = the record's id) and page info for one page of records."""
    edges = [Edge(cursor=encode_cursor(r.id), node=node(r)) for r in page.items]
    info = PageInfo(has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None)
    return edges, info


@strawberry.type
class WebhookConnection:
    edges: list[Edge[Webhook]]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: Page[WebhookRecord]) -> WebhookConnection:
        edges, info = relay_page(page, Webhook.from_record)
        return cls(edges=edges, page_info=info)


@strawberry.type
class DeliveryAttempt:
    id: strawberry.ID
    delivery_id: strawberry.ID
    webhook_id: strawberry.ID
    event: str
    number: int
    trigger: AttemptTriggerEnum
    started_at: datetime
    duration_ms: int | None
    status_code: int | None
    response_headers: JSON | None = strawberry.field(description="The response headers (up to 50).")
    response_body: str | None = strawberry.field(description="The first 4 KiB of the response body.")
    error_class: str | None
    error: str | None
    delivery_status: DeliveryStatusEnum
    next_attempt_at: datetime | None
    request_headers: JSON | None = strawberry.field(
        default=None, description="The request headers as sent, with signature values redacted."
    )

    @classmethod
    def from_record(cls, a: AttemptRecord) -> DeliveryAttempt:
        return cls(
            id=strawberry.ID(str(a.id)),
            delivery_id=strawberry.ID(str(a.delivery_id)),
            webhook_id=strawberry.ID(str(a.webhook_id)),
            event=a.event,
            number=a.number,
            trigger=a.trigger,
            started_at=a.started_at,
            duration_ms=a.duration_ms,
            status_code=a.status_code,
            response_headers=cast(JSON, dict(a.response_headers)),
            request_headers=cast(JSON, dict(a.request_headers)),
            response_body=a.response_body,
            error_class=a.error_class,
            error=a.error,
            delivery_status=a.delivery_status,
            next_attempt_at=a.next_attempt_at,
        )


@strawberry.type
class Delivery:
    id: strawberry.ID
    webhook_id: strawberry.ID
    event_id: strawberry.ID
    event: str
    status: DeliveryStatusEnum
    created_at: datetime
    next_attempt_at: datetime | None
    attempt_count: int
    record: strawberry.Private[DeliveryRecord]

    @strawberry.field(description="Every attempt, oldest first.")
    async def attempts(self, info: strawberry.Info) -> list[DeliveryAttempt]:
        records = await info.context.attempts_loader.load(self.record)
        return [DeliveryAttempt.from_record(a) for a in records]

    @classmethod
    def from_record(cls, d: DeliveryRecord) -> Delivery:
        return cls(
            id=strawberry.ID(str(d.id)),
            webhook_id=strawberry.ID(str(d.webhook_id)),
            event_id=strawberry.ID(str(d.event_id)),
            event=d.event,
            status=d.status,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at,
            attempt_count=d.attempt_count,
            record=d,
        )


@strawberry.type
class DeliveryConnection:
    edges: list[Edge[Delivery]]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: Page[DeliveryRecord]) -> DeliveryConnection:
        edges, info = relay_page(page, Delivery.from_record)
        return cls(edges=edges, page_info=info)
