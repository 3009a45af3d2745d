"""Ids are MongoDB ObjectIds, shown to clients as 24-hex strings.

The one rule for what an id looks like: exactly 24 ASCII hex digits, either case (``ObjectId`` reads both and
the API always answers in lowercase). Used for the API's own ids and for the ids inside event payloads.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from bson import ObjectId

from webhooks.errors import ErrorCode, UserErrors

HEX24 = re.compile(r"[0-9a-fA-F]{24}", re.ASCII)


def is_object_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and HEX24.fullmatch(value) is not None


def parse_id(value: str, field: str = "id") -> ObjectId:
    """Parse a client-supplied id, or refuse it with a clear error."""
    if not is_object_id(value):
        raise UserErrors.one(field, ErrorCode.INVALID_ID, f"{field} must be a 24-character hex id")
    return ObjectId(value)
