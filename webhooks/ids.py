"""Ids are MongoDB ObjectIds, shown to clients as 24-hex strings."""

from __future__ import annotations

import re

from bson import ObjectId

from webhooks.errors import ErrorCode, UserErrors

_HEX24 = re.compile(r"[0-9a-f]{24}")


def is_object_id(value: object) -> bool:
    return isinstance(value, str) and _HEX24.fullmatch(value) is not None


def parse_id(value: str, field: str = "id") -> ObjectId:
    """Parse a client-supplied id, or refuse it with a clear error."""
    if not is_object_id(value):
        raise UserErrors.one(field, ErrorCode.INVALID_ID, f"{field} must be a 24-character lowercase hex id")
    return ObjectId(value)


def try_parse_id(value: str) -> ObjectId | None:
    """Parse an id for a lookup: a malformed id simply matches nothing."""
    return ObjectId(value) if is_object_id(value) else None
