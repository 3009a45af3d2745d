"""What an attempt's outcome means: the one place that classifies an HTTP answer or a transport failure.

Used by the sender (success or not), the engine (what the breaker counts), the retry policy and the
metrics (a bounded label).
"""

from __future__ import annotations

from enum import Enum


class OutcomeClass(Enum):
    SUCCESS = "success"
    HTTP_STATUS = "http_status"  # a non-2xx, non-3xx answer
    REDIRECT = "redirect"  # 3xx: never followed
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    TLS_ERROR = "tls_error"
    BLOCKED_DESTINATION = "blocked_destination"


# The endpoint could not be reached at all: these open a webhook's breaker (webhooks.lanes).
UNREACHABLE = frozenset(
    {
        OutcomeClass.TIMEOUT,
        OutcomeClass.CONNECTION_ERROR,
        OutcomeClass.TLS_ERROR,
        OutcomeClass.BLOCKED_DESTINATION,
    }
)
_LABELS = {
    OutcomeClass.TIMEOUT: "timeout",
    OutcomeClass.CONNECTION_ERROR: "connection_error",
    OutcomeClass.TLS_ERROR: "tls_error",
    OutcomeClass.BLOCKED_DESTINATION: "blocked",
}


def classify_status(status: int) -> OutcomeClass:
    if 200 <= status < 300:
        return OutcomeClass.SUCCESS
    if 300 <= status < 400:
        return OutcomeClass.REDIRECT
    return OutcomeClass.HTTP_STATUS


def label(outcome: OutcomeClass, status_code: int | None) -> str:
    """A bounded label: 2xx, 3xx, 4xx, 5xx, timeout, connection_error, tls_error or blocked."""
    if outcome in _LABELS or status_code is None:
        return _LABELS.get(outcome, "connection_error")
    if 200 <= status_code < 300:
        return "2xx"
    if 300 <= status_code < 400:
        return "3xx"
    return "5xx" if status_code >= 500 else "4xx"
