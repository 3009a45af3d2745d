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
    # not strftime("%Y"): glibc does not pad a year below 1000 to four digits ("999-03-04T..."), which is
    # no ISO-8601 timestamp
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )
