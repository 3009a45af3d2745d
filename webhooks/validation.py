"""Small pure checks of client text and dates, shared by the services and the GraphQL layer.

Every check answers with a ``UserErrors`` that names the field, so schema-valid but unusable input (a lone
surrogate, an invisible name, a date MongoDB cannot store) is a user error rather than an unexpected one.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

from webhooks.errors import ErrorCode, UserError, UserErrors
from webhooks.ids import FIRST_ID_TIME

# Control (Cc), format (Cf: zero-width and bidi controls), surrogate (Cs), private-use (Co), unassigned (Cn),
# and line/paragraph separators: never part of a name a person reads.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# What BSON datetimes (milliseconds since 1970 in a signed 64-bit integer) and Python both represent; the
# ObjectId time range (1970 to 2106) is narrower still.
EARLIEST = FIRST_ID_TIME
LATEST_OBJECT_ID_TIME = datetime(2106, 2, 7, tzinfo=UTC)
ANY_TIME = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))


def surrogate_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (a lone surrogate is not Unicode text), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate (U+{ord(text[exc.start]):04X}) at position {exc.start}"
    return None


def check_text(field: str, value: str | None) -> None:
    """Refuse free text (an idempotency key, a filter) that cannot be encoded as UTF-8."""
    if value is not None and (problem := surrogate_problem(value)):
        raise UserErrors.one(field, ErrorCode.INVALID, f"{field} {problem}, which is not valid Unicode text")


def clean_name(field: str, raw: str, max_length: int, errors: list[UserError]) -> str:
    """A display name: NFC-normalised and trimmed, visible, without control or format characters."""
    if problem := surrogate_problem(raw):
        errors.append(UserError(field, ErrorCode.INVALID, f"{field} {problem}, which is not valid text"))
        return raw
    name = unicodedata.normalize("NFC", raw).strip()
    bad = next((c for c in name if unicodedata.category(c) in _FORBIDDEN_CATEGORIES), None)
    if not name:
        errors.append(UserError(field, ErrorCode.REQUIRED, f"{field} must not be empty"))
    elif bad is not None:
        errors.append(
            UserError(
                field,
                ErrorCode.INVALID,
                f"{field} must not contain control or invisible formatting characters (U+{ord(bad):04X})",
            )
        )
    elif len(name) > max_length:
        errors.append(
            UserError(field, ErrorCode.TOO_LONG, f"{field} must be at most {max_length} characters")
        )
    return name


def url_text_problem(raw: str) -> str | None:
    """Why a URL's text is unusable before parsing it (non-ASCII spaces, invisible characters), or None."""
    if problem := surrogate_problem(raw):
        return problem
    for c in raw.strip():
        category = unicodedata.category(c)
        if category in _FORBIDDEN_CATEGORIES or category == "Zs":
            return f"must not contain spaces, control or invisible characters (U+{ord(c):04X})"
    return None


def utc_in_range(field: str, value: datetime, earliest: datetime, latest: datetime) -> datetime:
    """``value`` in UTC (naive means UTC), or a user error naming ``field`` when outside the range."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not earliest <= utc < latest:
        raise UserErrors.one(
            field,
            ErrorCode.INVALID,
            f"{field} must be between {earliest.date().isoformat()} and {latest.date().isoformat()} (UTC)",
        )
    return utc


def check_replay(stored_event: str, requested_event: str) -> None:
    """A reused idempotency key must name the event it was first used with."""
    if stored_event != requested_event:
        raise UserErrors.one(
            "idempotencyKey",
            ErrorCode.CONFLICT,
            f"idempotencyKey was already used for a {stored_event} event; use a new key for this one",
        )
