"""Operational events: their bodies, when they are due, and who receives them. Pure functions.

The delivery engine emits these (it knows when a delivery finally fails, succeeds again, or a webhook
is disabled); this module decides what they say and to whom:

* bodies in the same canonical form as every other event (``webhooks.payloads.dumps_js``):
  ``{"event", "timestamp", "data": {...}}`` with the fields flat in ``data``;
* :func:`failing_warning_due`: a warning when the consecutive failure count reaches 5 and 8 (below
  the disable threshold), even if it jumped past them at once;
* :func:`recipients`: the account's webhooks subscribed to the event and passing their filter, never
  the webhook the event is about (a disabled endpoint cannot hear that it was disabled through itself);
* :func:`notifies_about_delivery`: no operational event about the delivery of an operational event or
  of a test, so two failing endpoints can never feed each other an endless stream of notices.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TypeVar

from bson import ObjectId

from webhooks.events import OPERATIONAL_WIRE_NAMES, TEST_EVENT, EventName
from webhooks.models import Webhook
from webhooks.payloads import JsonValue, dumps_js
from webhooks.timeutil import as_utc, iso_ms

FAILING_WARNINGS = (5, 8)
"""Consecutive failed deliveries at which ``webhook.failing`` is sent (before the disable at 10)."""


def _body(event: EventName, data: dict[str, JsonValue], now: datetime) -> bytes:
    return dumps_js({"event": event.value, "timestamp": iso_ms(as_utc(now)), "data": data})


def webhook_failing_body(
    webhook_id: ObjectId, webhook_name: str, consecutive_failures: int, disable_after: int, *, now: datetime
) -> bytes:
    return _body(
        EventName.WEBHOOK_FAILING,
        {
            "webhookId": str(webhook_id),
            "webhookName": webhook_name,
            "consecutiveFailures": consecutive_failures,
            "disableAfter": disable_after,
        },
        now,
    )


def webhook_disabled_body(
    webhook_id: ObjectId, webhook_name: str, reason: str, consecutive_failures: int, *, now: datetime
) -> bytes:
    return _body(
        EventName.WEBHOOK_DISABLED,
        {
            "webhookId": str(webhook_id),
            "webhookName": webhook_name,
            "reason": reason,
            "consecutiveFailures": consecutive_failures,
        },
        now,
    )


def _delivery_body(
    event: EventName,
    delivery_id: ObjectId,
    webhook_id: ObjectId,
    webhook_name: str,
    delivered_event: str,
    attempts: int,
    now: datetime,
) -> bytes:
    return _body(
        event,
        {
            "deliveryId": str(delivery_id),
            "webhookId": str(webhook_id),
            "webhookName": webhook_name,
            "event": delivered_event,
            "attempts": attempts,
        },
        now,
    )


def delivery_exhausted_body(
    delivery_id: ObjectId,
    webhook_id: ObjectId,
    webhook_name: str,
    event: str,
    attempts: int,
    *,
    now: datetime,
) -> bytes:
    """A delivery finally FAILED after ``attempts`` attempts."""
    return _delivery_body(
        EventName.DELIVERY_EXHAUSTED, delivery_id, webhook_id, webhook_name, event, attempts, now
    )


def delivery_recovered_body(
    delivery_id: ObjectId,
    webhook_id: ObjectId,
    webhook_name: str,
    event: str,
    attempts: int,
    *,
    now: datetime,
) -> bytes:
    """A delivery that had FAILED (or was HELD) succeeded on a later, manual or recovery attempt."""
    return _delivery_body(
        EventName.DELIVERY_RECOVERED, delivery_id, webhook_id, webhook_name, event, attempts, now
    )


def failing_warning_due(before: int, after: int, disable_after: int) -> int | None:
    """The warning level (5 or 8) crossed when the consecutive count went from ``before`` to ``after``.

    None when no level was crossed, or when the webhook is being disabled by this same change (then
    ``webhook.disabled`` says it all). With several levels crossed at once, the highest one.
    """
    if after >= disable_after:
        return None
    crossed = [level for level in FAILING_WARNINGS if before < level <= after and level < disable_after]
    return crossed[-1] if crossed else None


def notifies_about_delivery(event: str) -> bool:
    """Whether a delivery of ``event`` may cause ``delivery.exhausted`` / ``delivery.recovered``."""
    return event != TEST_EVENT and event not in OPERATIONAL_WIRE_NAMES


W = TypeVar("W", bound=Webhook)


def recipients(webhooks: Iterable[W], event: EventName, body: bytes, about: ObjectId) -> list[W]:
    """The webhooks (of one account) that get ``event`` about webhook ``about``.

    Those subscribed to it whose filter passes (operational events have no ``log``; their ``data``
    fields are the filter's ``details``), except ``about`` itself. Disabled ones are included, as for
    published events: their delivery is recorded HELD.
    """
    return [w for w in webhooks if event.value in w.events and w.id != about and w.accepts(body)]
