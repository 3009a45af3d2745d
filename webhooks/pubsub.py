"""Live feed over Redis pub/sub: workers publish finished attempts and webhook status changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from bson import ObjectId
from redis.asyncio import Redis

from webhooks.models import Attempt, AttemptTrigger, DeliveryStatus, Webhook
from webhooks.timeutil import iso_ms

ATTEMPTS_CHANNEL = "webhooks:attempts"
STATUS_CHANNEL = "webhooks:webhook-status"


def attempt_message(attempt: Attempt) -> bytes:
    return orjson.dumps(
        {
            "id": str(attempt.id),
            "accountId": str(attempt.account_id),
            "deliveryId": str(attempt.delivery_id),
            "webhookId": str(attempt.webhook_id),
            "event": attempt.event,
            "number": attempt.number,
            "trigger": attempt.trigger.value,
            "startedAt": iso_ms(attempt.started_at),
            "durationMs": attempt.duration_ms,
            "statusCode": attempt.status_code,
            # Bounded by the sender (first 4 KiB of body), so the live feed shows what the log shows.
            # str(): aiohttp header names are `istr`, which orjson refuses as keys.
            "responseHeaders": {str(k): str(v) for k, v in attempt.response_headers.items()},
            "requestHeaders": attempt.request_headers,
            "responseBody": attempt.response_body,
            "error": attempt.error,
            "errorClass": attempt.error_class,
            "deliveryStatus": attempt.delivery_status.value,
            "nextAttemptAt": iso_ms(attempt.next_attempt_at) if attempt.next_attempt_at else None,
            "scheduledAt": iso_ms(attempt.scheduled_at) if attempt.scheduled_at else None,
            "lateReason": attempt.late_reason,
        }
    )


def status_message(webhook: Webhook) -> bytes:
    return orjson.dumps({"accountId": str(webhook.account_id), "webhookId": str(webhook.id)})


class Publisher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def attempts(self, attempts: list[Attempt]) -> None:
        if not attempts:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for attempt in attempts:
                pipe.publish(ATTEMPTS_CHANNEL, attempt_message(attempt))
            await pipe.execute()

    async def webhook_status(self, webhook: Webhook) -> None:
        await self._redis.publish(STATUS_CHANNEL, status_message(webhook))


def decode(message: bytes | str) -> dict[str, Any]:
    """A message of either channel, as a dict (its ``accountId`` says whose it is)."""
    value: dict[str, Any] = orjson.loads(message)
    return value


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def attempt_from_message(message: dict[str, Any]) -> Attempt:
    """The attempt that ``attempt_message`` wrote (the one place that reads the format back)."""
    started = _when(message["startedAt"])
    assert started is not None
    return Attempt(
        id=ObjectId(message["id"]),
        delivery_id=ObjectId(message["deliveryId"]),
        account_id=ObjectId(message["accountId"]),
        webhook_id=ObjectId(message["webhookId"]),
        event=message["event"],
        number=message["number"],
        trigger=AttemptTrigger(message["trigger"]),
        started_at=started,
        duration_ms=message.get("durationMs"),
        status_code=message.get("statusCode"),
        response_headers=message.get("responseHeaders") or {},
        response_body=message.get("responseBody"),
        error_class=message.get("errorClass"),
        error=message.get("error"),
        delivery_status=DeliveryStatus(message["deliveryStatus"]),
        next_attempt_at=_when(message.get("nextAttemptAt")),
        request_headers=message.get("requestHeaders") or {},
        scheduled_at=_when(message.get("scheduledAt")),
        late_reason=message.get("lateReason"),
    )


def status_webhook_id(message: dict[str, Any]) -> ObjectId:
    """The webhook whose status changed (``status_message``)."""
    return ObjectId(message["webhookId"])
