"""Live feed over Redis pub/sub: workers publish finished attempts and webhook status changes."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from webhooks.models import Attempt, Webhook
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
    value: dict[str, Any] = orjson.loads(message)
    return value
