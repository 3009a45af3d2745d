"""Domain records, as read from MongoDB documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from bson import ObjectId

from webhooks.custom_headers import CustomHeader
from webhooks.db import Doc
from webhooks.filters import body_passes


class Scope(Enum):
    MANAGE_WEBHOOKS = "webhooks:manage"
    PUBLISH_EVENTS = "events:publish"


class DeliveryStatus(Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    HELD = "HELD"  # recorded while the webhook was disabled: not sent, recoverable


class Ordering(Enum):
    """How a webhook's deliveries are sequenced (``WebhookOrdering``)."""

    NONE = "NONE"
    PER_RESOURCE = "PER_RESOURCE"  # one at a time per data.log.resourceId, in publish order


class AttemptTrigger(Enum):
    AUTOMATIC = "AUTOMATIC"
    MANUAL = "MANUAL"
    TEST = "TEST"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an account and what its API key may do."""

    account_id: ObjectId
    scopes: frozenset[Scope]
    key_id: ObjectId
    # Set for a portal session (a short-lived token): it stops working at this time.
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PreviousSecret:
    """A replaced signing secret (encrypted) that keeps signing until ``expires_at``."""

    secret_enc: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Webhook:
    id: ObjectId
    account_id: ObjectId
    name: str
    url: str
    events: tuple[str, ...]
    enabled: bool
    secret_enc: str
    consecutive_failures: int
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    previous_secrets: tuple[PreviousSecret, ...] = ()
    max_in_flight: int | None = None  # None: the setting's default (WEBHOOKS_WEBHOOK_MAX_IN_FLIGHT)
    filter_text: str | None = None  # a validated payload filter, compact JSON (webhooks.filters)
    headers: tuple[CustomHeader, ...] = ()  # custom request headers, values encrypted
    ordering: Ordering = Ordering.NONE

    @classmethod
    def from_doc(cls, doc: Doc) -> Webhook:
        return cls(
            id=doc["_id"],
            account_id=doc["account_id"],
            name=doc["name"],
            url=doc["url"],
            events=tuple(doc["events"]),
            enabled=doc["enabled"],
            secret_enc=doc["secret_enc"],
            consecutive_failures=doc.get("consecutive_failures", 0),
            disabled_reason=doc.get("disabled_reason"),
            disabled_at=doc.get("disabled_at"),
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            previous_secrets=tuple(
                PreviousSecret(p["secret_enc"], p["expires_at"]) for p in doc.get("previous_secrets") or ()
            ),
            max_in_flight=doc.get("max_in_flight"),
            filter_text=doc.get("filter"),
            headers=tuple(CustomHeader.from_doc(h) for h in doc.get("headers") or ()),
            ordering=Ordering(doc.get("ordering") or Ordering.NONE.value),
        )

    def in_flight_limit(self, default: int) -> int:
        return self.max_in_flight if self.max_in_flight is not None else default

    def accepts(self, body: bytes) -> bool:
        """Whether the payload filter lets this event body through (no filter: every event)."""
        return body_passes(self.filter_text, body)

    def signing_secrets_enc(self, now: datetime) -> list[str]:
        """The current secret first, then every previous one still inside its grace period."""
        return [self.secret_enc, *(p.secret_enc for p in self.previous_secrets if p.expires_at > now)]


@dataclass(frozen=True, slots=True)
class Planned:
    """One delivery an event must make: written to the event (the outbox) before anything is queued."""

    delivery_id: ObjectId
    webhook_id: ObjectId
    held: bool  # the webhook was disabled at publish time: recorded HELD, not sent
    # PER_RESOURCE ordering: data.log.resourceId and this delivery's X-Webhook-Sequence (None: unordered)
    resource: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxRef:
    """The outbox document that keeps an event open until its planned deliveries are written: a batch's
    outbox document, listing ``size`` events (``webhooks.repositories.events``), or the event itself."""

    id: ObjectId
    size: int  # events it lists
    batch: bool  # a batch's outbox document (deleted when closed), not the event itself (its flag unset)


@dataclass(frozen=True, slots=True)
class Event:
    id: ObjectId
    account_id: ObjectId
    event: str
    body: bytes
    created_at: datetime
    planned: tuple[Planned, ...] = ()
    test: bool = False
    batch: OutboxRef | None = None  # the batch outbox document listing it (None: the event is its own)

    @property
    def outbox(self) -> OutboxRef:
        """What keeps this event open (closed once all of its events' planned deliveries are written)."""
        return self.batch or OutboxRef(self.id, 1, batch=False)

    @classmethod
    def from_doc(cls, doc: Doc) -> Event:
        batch = doc.get("outbox")
        return cls(
            id=doc["_id"],
            account_id=doc["account_id"],
            event=doc["event"],
            body=bytes(doc["body"]),
            created_at=doc["created_at"],
            planned=tuple(
                Planned(
                    p["delivery_id"], p["webhook_id"], bool(p.get("held")), p.get("resource"), p.get("seq")
                )
                for p in doc.get("planned") or ()
            ),
            test=bool(doc.get("test")),
            batch=OutboxRef(batch["id"], int(batch["n"]), batch=True) if batch else None,
        )

    def pending_delivery(self, planned: Planned) -> Delivery:
        """A planned delivery not yet written: PENDING, its first attempt due at the event's creation."""
        return Delivery(
            id=planned.delivery_id,
            account_id=self.account_id,
            webhook_id=planned.webhook_id,
            event_id=self.id,
            event=self.event,
            status=DeliveryStatus.HELD if planned.held else DeliveryStatus.PENDING,
            test=self.test,
            attempt_count=0,
            next_attempt_at=None if planned.held else self.created_at,
            created_at=self.created_at,
            updated_at=self.created_at,
            resource=planned.resource,
            seq=planned.seq,
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    id: ObjectId
    account_id: ObjectId
    webhook_id: ObjectId
    event_id: ObjectId
    event: str
    status: DeliveryStatus
    test: bool
    attempt_count: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    run_start: int = 1  # the first attempt number of the current run (a manual retry starts a new run)
    run_trigger: AttemptTrigger = AttemptTrigger.AUTOMATIC
    run_from: DeliveryStatus | None = None  # a manual run: the status it started from
    resource: str | None = None  # PER_RESOURCE ordering (see ``Planned``)
    seq: int | None = None

    @property
    def ordered(self) -> bool:
        """Sent one at a time per (webhook, resource), in ``seq`` order (``webhooks.lanes`` gates)."""
        return self.resource is not None and self.seq is not None

    @classmethod
    def from_doc(cls, doc: Doc) -> Delivery:
        return cls(
            id=doc["_id"],
            account_id=doc["account_id"],
            webhook_id=doc["webhook_id"],
            event_id=doc["event_id"],
            event=doc["event"],
            status=DeliveryStatus(doc["status"]),
            test=doc.get("test", False),
            attempt_count=doc.get("attempt_count", 0),
            next_attempt_at=doc.get("next_attempt_at"),
            created_at=doc["created_at"],
            updated_at=doc.get("updated_at") or doc["created_at"],
            run_start=int(doc.get("run_start", 1)),
            run_trigger=AttemptTrigger(doc.get("run_trigger", AttemptTrigger.AUTOMATIC.value)),
            run_from=DeliveryStatus(doc["run_from"]) if doc.get("run_from") else None,
            resource=doc.get("resource"),
            seq=doc.get("seq"),
        )

    def trigger_of(self, number: int) -> AttemptTrigger:
        """What started attempt ``number``: a test, a manual retry (first of its run), or the schedule."""
        if self.test:
            return AttemptTrigger.TEST
        if number == self.run_start and self.run_trigger is AttemptTrigger.MANUAL:
            return AttemptTrigger.MANUAL
        return AttemptTrigger.AUTOMATIC

    def attempt_in_run(self, number: int) -> int:
        return number - self.run_start + 1

    @property
    def recovering(self) -> bool:
        """In a manual run started from FAILED or HELD: its success is a recovery (``delivery.recovered``);
        a delivery resent after it had succeeded recovers nothing."""
        return self.run_trigger is AttemptTrigger.MANUAL and self.run_from in (
            DeliveryStatus.FAILED,
            DeliveryStatus.HELD,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    id: ObjectId
    delivery_id: ObjectId
    account_id: ObjectId
    webhook_id: ObjectId
    event: str
    number: int
    trigger: AttemptTrigger
    started_at: datetime
    duration_ms: int | None
    status_code: int | None
    response_headers: dict[str, str]
    response_body: str | None
    error_class: str | None
    error: str | None
    delivery_status: DeliveryStatus
    next_attempt_at: datetime | None
    request_headers: dict[str, str] = field(default_factory=dict)  # as sent, signatures redacted
    scheduled_at: datetime | None = None  # when it was due
    late_reason: str | None = None  # why it started late (``webhooks.lanes.LateReason``), None if on time

    @classmethod
    def from_doc(cls, doc: Doc, delivery: Doc) -> Attempt:
        """An attempt embedded in its delivery document (``delivery``)."""
        return cls(
            id=doc["_id"],
            delivery_id=delivery["_id"],
            account_id=delivery["account_id"],
            webhook_id=delivery["webhook_id"],
            event=delivery["event"],
            number=doc["number"],
            trigger=AttemptTrigger(doc["trigger"]),
            started_at=doc["started_at"],
            duration_ms=doc.get("duration_ms"),
            status_code=doc.get("status_code"),
            response_headers=_header_names_read(doc.get("response_headers")),
            response_body=doc.get("response_body"),
            error_class=doc.get("error_class"),
            error=doc.get("error"),
            delivery_status=DeliveryStatus(doc["delivery_status"]),
            next_attempt_at=doc.get("next_attempt_at"),
            request_headers=_header_names_read(doc.get("request_headers")),
            scheduled_at=doc.get("scheduled_at"),
            late_reason=doc.get("late_reason"),
        )

    def to_doc(self) -> Doc:
        """As embedded in its delivery document (which holds the ids it shares)."""
        return {
            "_id": self.id,
            "number": self.number,
            "trigger": self.trigger.value,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "status_code": self.status_code,
            "response_headers": _header_names_stored(self.response_headers),
            "response_body": self.response_body,
            "error_class": self.error_class,
            "error": self.error,
            "delivery_status": self.delivery_status.value,
            "next_attempt_at": self.next_attempt_at,
            "request_headers": _header_names_stored(self.request_headers),
            "scheduled_at": self.scheduled_at,
            "late_reason": self.late_reason,
        }


# Header names become field names when stored. A name is an HTTP token, which may hold "$" and "." (a
# receiver's "$version" or "X.Trace" header, a customer's custom header). MongoDB restricts such field
# names ("$" starts an operator, "." a path; updates such as a retry's $push of its attempt are the
# strictest), and a refused write would fail the whole record batch, other accounts' attempts with it. They
# are stored with the full-width forms of the two characters, which no token can contain, and read back as
# sent.
_STORED_NAME = str.maketrans({"$": "\uff04", ".": "\uff0e"})
_SENT_NAME = str.maketrans({"\uff04": "$", "\uff0e": "."})


def _header_names_stored(headers: dict[str, str]) -> dict[str, str]:
    return {str(name).translate(_STORED_NAME): value for name, value in headers.items()}


def _header_names_read(stored: dict[str, str] | None) -> dict[str, str]:
    return {name.translate(_SENT_NAME): value for name, value in (stored or {}).items()}
