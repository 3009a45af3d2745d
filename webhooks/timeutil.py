"""UTC time helpers: one clock and one wire format (ISO-8601, milliseconds, ``Z``)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, truncated to milliseconds (what MongoDB stores), timezone-aware."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def as_utc(value: datetime) -> datetime:
    """A naive datetime (as a client or pymongo may give it) is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def iso_ms(value: datetime) -> str:
    """``2024-01-20T10:30:00.000Z``: the timestamp format of every payload."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
