"""Request signing: the spec's ``X-Webhook-Signature`` and the Standard Webhooks headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from webhooks.crypto import SIGNING_SECRET_PREFIX


def spec_signature(secret: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the body bytes, keyed with the secret string as the customer copied it."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>`` over ``id.timestamp.body``, keyed with the base64-decoded part after ``whsec_``."""
    raw = secret.removeprefix(SIGNING_SECRET_PREFIX)
    key = base64.b64decode(raw)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def signature_headers(
    secrets: Sequence[str], *, msg_id: str, timestamp: int, body: bytes, event: str, user_agent: str
) -> dict[str, str]:
    """All headers of one attempt.

    ``secrets[0]`` is the current secret; more are older ones still in their grace period.
    """
    return {
        "Content-Type": "application/json",
        "User-Agent": user_agent,
        "X-Webhook-Event": event,
        "X-Webhook-Delivery": msg_id,
        "X-Webhook-Signature": spec_signature(secrets[0], body),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(standard_signature(s, msg_id, timestamp, body) for s in secrets),
    }


REDACTED_HEADERS = frozenset({"x-webhook-signature", "webhook-signature"})
SHOWN_HEADERS = frozenset(
    {
        "content-type",
        "user-agent",
        "x-webhook-event",
        "x-webhook-delivery",
        "x-webhook-sequence",
        "webhook-id",
        "webhook-timestamp",
    }
)
"""Headers HatchBeacon sets whose values are safe to show in the delivery log. Every other value (the
signatures, and a webhook's custom headers, which often hold the receiver's own token) is redacted."""


def redacted(headers: dict[str, str]) -> dict[str, str]:
    return {k: (v if k.lower() in SHOWN_HEADERS else "[redacted]") for k, v in headers.items()}
