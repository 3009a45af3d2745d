"""GraphQL object types: thin views over domain records.

Connections are Relay-shaped but not ``strawberry.relay``: its ``Node`` ids are base64 global ids where the
contract promises 24-hex ObjectIds, and its ``ListConnection`` pages by offset where ours are keyset cursors.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Generic, Protocol, TypeVar, cast

import strawberry
from bson import ObjectId
from strawberry.scalars import JSON

from graphql_api.endpoint_controls import WebhookHeader, WebhookOrdering, filter_json
from webhooks import errors as core_errors
from webhooks.event_schemas import payload_schema
from webhooks.events import CATALOG, EventName
from webhooks.lanes import BreakerState, LaneState, LateReason
from webhooks.models import Attempt as AttemptRecord
from webhooks.models import AttemptTrigger, DeliveryStatus, Scope
from webhooks.models import Delivery as DeliveryRecord
from webhooks.models import Webhook as WebhookRecord
from webhooks.pagination import Page, encode_cursor

# The domain enums, registered with their GraphQL names (strawberry.enum returns the same class).
strawberry.enum(EventName, name="WebhookEvent", description="Subscribable events (wire names).")
strawberry.enum(core_errors.ErrorCode, name="UserErrorCode")
strawberry.enum(DeliveryStatus, name="DeliveryStatus")
strawberry.enum(AttemptTrigger, name="AttemptTrigger")
strawberry.enum(
    BreakerState,
    name="BreakerState",
    description="CLOSED: attempts go out up to maxInFlight at once. OPEN: consecutive timeouts or connection "
    "failures tripped it; the next attempt is a probe. HALF_OPEN: a probe is in flight; others wait for it.",
)
strawberry.enum(
    LateReason,
    name="AttemptLateReason",
    description="Why an attempt started later than scheduled.",
)
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
    schema: JSON = strawberry.field(
        description="The JSON Schema (draft 2020-12) of the payload: data.log as publishEvent enforces it, "
        "data.details as the spec shows it."
    )

    @classmethod
    def all(cls) -> list[EventType]:
        return [
            cls(
                value=s.name,
                name=s.name.value,
                description=s.description,
                example=cast(JSON, s.example()),
                schema=cast(JSON, payload_schema(s.name)),
            )
            for s in CATALOG.values()
        ]


@strawberry.type(description="A webhook's circuit breaker and the attempts it has in flight and waiting.")
class WebhookBreaker:
    state: BreakerState
    since: datetime | None = strawberry.field(description="When the breaker opened (null while CLOSED).")
    unreachable_streak: int = strawberry.field(
        description="Consecutive attempts that timed out or could not connect."
    )
    in_flight: int = strawberry.field(description="Attempts being made now.")
    waiting: int = strawberry.field(description="Attempts waiting for their turn (due now or later).")

    @classmethod
    def from_state(cls, s: LaneState) -> WebhookBreaker:
        return cls(
            state=s.breaker,
            since=s.breaker_since,
            unreachable_streak=s.unreachable_streak,
            in_flight=s.in_flight,
            waiting=s.waiting,
        )


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
        default=0, description="Failed deliveries in a row (10 disable the webhook; any success resets it)."
    )
    record: strawberry.Private[WebhookRecord | None] = None

    @strawberry.field(description="At most this many attempts to this webhook are in flight at once.")
    def max_in_flight(self, info: strawberry.Info) -> int:
        default: int = info.context.core.settings.webhook_max_in_flight
        return self.record.in_flight_limit(default) if self.record is not None else default

    @strawberry.field(
        description="The circuit breaker: open after consecutive timeouts or connection failures."
    )
    async def breaker(self, info: strawberry.Info) -> WebhookBreaker:
        state: LaneState = await info.context.lane_states_loader.load(str(self.id))
        return WebhookBreaker.from_state(state)

    ordering: WebhookOrdering = WebhookOrdering.NONE
    filter: JSON | None = strawberry.field(default=None, description="The payload filter, null for none.")
    headers: list[WebhookHeader] = strawberry.field(
        default_factory=list, description="Custom request headers, values masked."
    )

    @classmethod
    def from_record(cls, w: WebhookRecord) -> Webhook:
        return cls(
            consecutive_failures=w.consecutive_failures,
            record=w,
            id=strawberry.ID(str(w.id)),
            name=w.name,
            url=w.url,
            events=[EventName(e) for e in w.events if e in EventName._value2member_map_],
            enabled=w.enabled,
            disabled_reason=w.disabled_reason,
            disabled_at=w.disabled_at,
            created_at=w.created_at,
            updated_at=w.updated_at,
            ordering=w.ordering,
            filter=filter_json(w.filter_text),
            headers=[WebhookHeader.from_record(h) for h in w.headers],
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
    response_headers: JSON | None = strawberry.field(
        description="The response headers: up to 50, each name and value cut to 1 KiB, 8 KiB in all."
    )
    response_body: str | None = strawberry.field(description="The first 4 KiB of the response body.")
    error_class: str | None
    error: str | None
    delivery_status: DeliveryStatusEnum
    next_attempt_at: datetime | None
    request_headers: JSON | None = strawberry.field(
        default=None, description="The request headers as sent, with signature values redacted."
    )
    scheduled_at: datetime | None = strawberry.field(default=None, description="When the attempt was due.")
    late_reason: LateReason | None = strawberry.field(
        default=None,
        description="Why it started late (null when on time): an attempt to a webhook at its in-flight limit "
        "or behind an open breaker waits for its turn.",
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
            scheduled_at=a.scheduled_at,
            late_reason=LateReason(a.late_reason) if a.late_reason else None,
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

    @strawberry.field(description="Every attempt, oldest first (needs webhooks:manage).")
    async def attempts(self, info: strawberry.Info) -> list[DeliveryAttempt]:
        # A delivery is also reachable from publishEvent's payload, which a publish-only key may read: what
        # the receivers answered belongs to the delivery log, which needs webhooks:manage.
        await info.context.require(Scope.MANAGE_WEBHOOKS)
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
