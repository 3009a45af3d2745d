"""Domain records, as read from MongoDB documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from bson import ObjectId

from webhooks.db import Doc


class Scope(Enum):
    MANAGE_WEBHOOKS = "webhooks:manage"
    PUBLISH_EVENTS = "events:publish"


class DeliveryStatus(Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    HELD = "HELD"  # recorded while the webhook was disabled: not sent, recoverable


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
        )

    def signing_secrets_enc(self, now: datetime) -> list[str]:
        """The current secret first, then every previous one still inside its grace period."""
        return [self.secret_enc, *(p.secret_enc for p in self.previous_secrets if p.expires_at > now)]


@dataclass(frozen=True, slots=True)
class Event:
    id: ObjectId
    account_id: ObjectId
    event: str
    body: bytes
    created_at: datetime

    @classmethod
    def from_doc(cls, doc: Doc) -> Event:
        return cls(doc["_id"], doc["account_id"], doc["event"], bytes(doc["body"]), doc["created_at"])


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

    @classmethod
    def from_doc(cls, doc: Doc) -> Attempt:
        return cls(
            id=doc["_id"],
            delivery_id=doc["delivery_id"],
            account_id=doc["account_id"],
            webhook_id=doc["webhook_id"],
            event=doc["event"],
            number=doc["number"],
            trigger=AttemptTrigger(doc["trigger"]),
            started_at=doc["started_at"],
            duration_ms=doc.get("duration_ms"),
            status_code=doc.get("status_code"),
            response_headers=dict(doc.get("response_headers") or {}),
            response_body=doc.get("response_body"),
            error_class=doc.get("error_class"),
            error=doc.get("error"),
            delivery_status=DeliveryStatus(doc["delivery_status"]),
            next_attempt_at=doc.get("next_attempt_at"),
            request_headers=dict(doc.get("request_headers") or {}),
        )

    def to_doc(self) -> Doc:
        return {
            "_id": self.id,
            "delivery_id": self.delivery_id,
            "account_id": self.account_id,
            "webhook_id": self.webhook_id,
            "event": self.event,
            "number": self.number,
            "trigger": self.trigger.value,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "status_code": self.status_code,
            "response_headers": self.response_headers,
            "response_body": self.response_body,
            "error_class": self.error_class,
            "error": self.error,
            "delivery_status": self.delivery_status.value,
            "next_attempt_at": self.next_attempt_at,
            "request_headers": self.request_headers,
        }
