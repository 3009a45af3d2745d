"""Pure delivery rules: the retry schedule and the auto-disable rule (outcomes: ``webhooks.outcomes``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header, in either of its forms (RFC 9110): delay-seconds, or an
    HTTP-date (seconds from ``now`` to it; 0 once it has passed). None when missing or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return _seconds_until(value, now)
    return seconds if seconds >= 0 else None


def _seconds_until(value: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):  # a year or offset no datetime holds
        return None
    if when.tzinfo is None:  # "-0000": UTC as well
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_delay(
    schedule: Sequence[float],
    attempt_in_run: int,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    retry_after_cap: float = 60.0,
) -> float | None:
    """Seconds until the next attempt after attempt ``attempt_in_run`` (1-based) failed; None if none is left.

    ``schedule[0]`` is the delay of the first attempt (immediate); ``schedule[k]`` the wait after attempt k.
    ``Retry-After`` on 429/503 lengthens the wait, up to ``retry_after_cap``; it never shortens it.
    """
    if attempt_in_run >= len(schedule):
        return None
    delay = schedule[attempt_in_run]
    if retry_after is not None and status in (429, 503):
        delay = max(delay, min(retry_after, retry_after_cap))
    return delay


@dataclass(frozen=True, slots=True)
class FailureCount:
    """How a batch of final outcomes changes a webhook's consecutive-failure counter."""

    reset: bool  # a success happened: the counter restarts from zero
    add: int  # failures after the last success (or all of them, if none succeeded)


def count_failures(final_outcomes_in_order: Sequence[bool]) -> FailureCount:
    """``True`` = delivery succeeded, ``False`` = delivery failed (its last attempt failed)."""
    last_success = max((i for i, ok in enumerate(final_outcomes_in_order) if ok), default=-1)
    trailing = sum(1 for ok in final_outcomes_in_order[last_success + 1 :] if not ok)
    return FailureCount(reset=last_success >= 0, add=trailing)


def should_disable(consecutive_failures: int, threshold: int) -> bool:
    return consecutive_failures >= threshold
