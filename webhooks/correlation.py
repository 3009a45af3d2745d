"""The request (correlation) id: set per HTTP request / WebSocket connection, read by logs and masked errors."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

HEADER = "X-Request-ID"

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_id() -> str:
    """A fresh id (32 hex characters)."""
    return uuid.uuid4().hex


def accept(value: str | None) -> str:
    """The caller's id if it is short and plain (safe to log and echo), else a new one."""
    if value and _ACCEPTABLE.fullmatch(value):
        return value
    return new_id()


def current() -> str | None:
    return request_id.get()
