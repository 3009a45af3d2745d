"""Opaque cursors for newest-first lists keyed by ObjectId."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from bson import ObjectId

from webhooks.errors import ErrorCode, UserErrors
from webhooks.ids import is_object_id

T = TypeVar("T")
MAX_PAGE_SIZE = 100


def encode_cursor(oid: ObjectId) -> str:
    return base64.urlsafe_b64encode(f"v1:{oid}".encode()).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None) -> ObjectId | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    version, _, hex_id = raw.partition(":")
    # Every real cursor names an id this service made: from its first year to now (plus clock skew).
    if version != "v1" or not is_object_id(hex_id) or not _plausible(ObjectId(hex_id)):
        raise UserErrors.one("after", ErrorCode.INVALID, "after is not a cursor returned by this API")
    return ObjectId(hex_id)


_FIRST_ID_TIME = datetime(2020, 1, 1, tzinfo=UTC)
_MAX_SKEW = timedelta(days=1)


def _plausible(oid: ObjectId) -> bool:
    return _FIRST_ID_TIME <= oid.generation_time <= datetime.now(UTC) + _MAX_SKEW


DEFAULT_PAGE_SIZE = 20


def check_page_size(first: int | None) -> int:
    """``first``, or the default when the client sent null."""
    if first is None:
        return DEFAULT_PAGE_SIZE
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise UserErrors.one("first", ErrorCode.INVALID, f"first must be between 1 and {MAX_PAGE_SIZE}")
    return first


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_next_page: bool
