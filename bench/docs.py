"""Delivery-shaped documents for the benchmark's own inserts (P1's store ceiling, P6's dataset), made by the
service's ``delivery_doc``: a delivery that succeeded on its first attempt, that attempt embedded, as the
engine writes it."""

from __future__ import annotations

from datetime import datetime, timedelta

from bson import ObjectId

from webhooks.db import Doc
from webhooks.models import Attempt, AttemptTrigger, Delivery, DeliveryStatus
from webhooks.repositories.deliveries import delivery_doc

EVENT = "job_application_created"
REQUEST_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "HatchBeacon-Webhooks/1.0",
    "X-Webhook-Event": EVENT,
    "X-Webhook-Signature": "[redacted]",
    "X-Webhook-Timestamp": "1705746600",
}
RESPONSE_HEADERS = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": "2"}


def succeeded_doc(
    account_id: ObjectId,
    webhook_id: ObjectId,
    at: datetime,
    retention: timedelta,
    delivery_id: ObjectId | None = None,
) -> Doc:
    """One SUCCEEDED delivery with its first (and only) attempt embedded, made at ``at``."""
    delivery = Delivery(
        id=delivery_id or ObjectId(),
        account_id=account_id,
        webhook_id=webhook_id,
        event_id=ObjectId(),
        event=EVENT,
        status=DeliveryStatus.SUCCEEDED,
        test=False,
        attempt_count=1,
        next_attempt_at=None,
        created_at=at,
        updated_at=at,
    )
    attempt = Attempt(
        id=ObjectId(),
        delivery_id=delivery.id,
        account_id=account_id,
        webhook_id=webhook_id,
        event=EVENT,
        number=1,
        trigger=AttemptTrigger.AUTOMATIC,
        started_at=at,
        duration_ms=3,
        status_code=200,
        response_headers=RESPONSE_HEADERS,
        response_body="OK",
        error_class=None,
        error=None,
        delivery_status=DeliveryStatus.SUCCEEDED,
        next_attempt_at=None,
        request_headers=REQUEST_HEADERS,
        scheduled_at=at,
        late_reason=None,
    )
    return delivery_doc(delivery, expires_at=at + retention, attempts=[attempt])
