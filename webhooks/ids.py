"""Ids are MongoDB ObjectIds, shown to clients as 24-hex strings.

The one rule for what an id looks like: exactly 24 ASCII hex digits, either case (``ObjectId`` reads both and
the API always answers in lowercase). Used for the API's own ids and for the ids inside event payloads.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TypeGuard

from bson import ObjectId

from webhooks.errors import ErrorCode, UserErrors

HEX24 = re.compile(r"[0-9a-fA-F]{24}", re.ASCII)
# What an ObjectId's 4-byte timestamp can hold.
FIRST_ID_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LAST_ID_TIME = datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC)


def is_object_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and HEX24.fullmatch(value) is not None


def parse_id(value: str, field: str = "id") -> ObjectId:
    """Parse a client-supplied id, or refuse it with a clear error."""
    if not is_object_id(value):
        raise UserErrors.one(field, ErrorCode.INVALID_ID, f"{field} must be a 24-character hex id")
    return ObjectId(value)


def id_at(moment: datetime) -> ObjectId:
    """The smallest ObjectId of ``moment``'s second, for an ``_id`` range: a moment outside what an ObjectId
    can hold is clamped to it (``ObjectId.from_datetime`` would raise)."""
    return ObjectId.from_datetime(min(max(moment, FIRST_ID_TIME), LAST_ID_TIME))
