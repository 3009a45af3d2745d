"""Webhook bodies: validated once, serialized once, to the exact bytes every attempt sends and signs.

The spec's Node.js receiver verifies ``JSON.stringify(JSON.parse(body))``, so a body is only usable if
it survives that round trip byte for byte.  Strings (any valid Unicode, control characters) survive
orjson's compact output unchanged.  What does not survive as orjson writes it, checked against Node 20:

* integral floats: orjson writes ``1.0``, ``1e+16``; JavaScript writes ``1``, ``10000000000000000``;
* ``-0.0``: JavaScript writes ``0``;
* floats in ``[1e-6, 1e-5)``: orjson writes ``1.5e-6``, JavaScript writes ``0.0000015``;
* integers beyond ±(2**53 - 1): JSON.parse rounds them to the nearest double;
* objects with array-index keys (``"0"``, ``"42"``): JavaScript lists those keys first, ascending;
* lone surrogates: not valid UTF-8 at all (orjson refuses them).

So integers beyond the safe range and lone surrogates are refused, integral floats become ints, object
keys are put in JavaScript's order, and every other float is written exactly as JavaScript's
``Number.prototype.toString`` writes it (the shortest round-trip digits, which Python's ``repr`` gives,
laid out by the ECMAScript rules).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import orjson

from webhooks.errors import ErrorCode, UserError, UserErrors
from webhooks.events import OPERATIONAL_WIRE_NAMES, TEST_EVENT, TEST_MESSAGE, WIRE_NAMES
from webhooks.ids import is_object_id
from webhooks.timeutil import as_utc, iso_ms
from webhooks.validation import surrogate_problem

JsonValue: TypeAlias = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None

MAX_SAFE_INTEGER = 2**53 - 1
"""``Number.MAX_SAFE_INTEGER``: larger integers do not survive ``JSON.parse`` in JavaScript."""
MAX_DETAILS_DEPTH = 20
"""How deeply ``details`` may nest; ``details`` itself is level 1."""
MAX_TEXT_LENGTH = 200
MAX_EMAIL_LENGTH = 320
MAX_REPORTED_ERRORS = 50
"""A pathological ``details`` (say, 100 000 NaNs) is reported by its first problems only."""

_MAX_ARRAY_INDEX = 2**32 - 2
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}", re.ASCII)
_MAX_KEY_IN_PATH = 40


@dataclass(frozen=True)
class AuditLog:
    """The ``data.log`` part of an event body, as the publisher describes the action."""

    action: str
    resource_type: str
    resource_id: str
    user_id: str
    user_name: str
    user_email: str
    timestamp: datetime | None = None


# --- numbers and serialization ------------------------------------------------------------------


def js_number(value: float) -> str:
    """``value`` written exactly as JavaScript's ``String(value)`` / ``JSON.stringify`` writes it."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} has no JSON representation")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + js_number(-value)
    # repr gives the shortest digits that round-trip (as JavaScript does); only the layout differs.
    mantissa, _, exp_text = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    stripped = digits.rstrip("0")
    last_exponent = (int(exp_text) if exp_text else 0) - len(fraction) + (len(digits) - len(stripped))
    digits = stripped
    k = len(digits)  # number of significant digits
    n = k + last_exponent  # value == 0.<digits> * 10**n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    exponent = n - 1
    sign = "+" if exponent >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(exponent)}"


def dumps_js(value: JsonValue) -> bytes:
    """Compact UTF-8 JSON, byte for byte what ``JSON.stringify`` gives for a normalized value.

    ``value`` should come from :func:`normalize_json` (or hold only strings, safe ints, bools and
    None); floats are written in JavaScript's notation.
    """
    return orjson.dumps(_with_js_floats(value))


def _with_js_floats(value: JsonValue) -> object:
    if isinstance(value, float):
        return orjson.Fragment(js_number(value))
    if isinstance(value, dict):
        return {key: _with_js_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_js_floats(item) for item in value]
    return value


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) <= _MAX_ARRAY_INDEX


def js_key_order(keys: list[str]) -> list[str]:
    """Keys in the order a JavaScript object lists them: array indices ascending, then the rest."""
    indices = sorted((key for key in keys if _is_array_index(key)), key=int)
    if not indices:
        return keys
    return indices + [key for key in keys if not _is_array_index(key)]


# --- validation -----------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """``text`` made safe to show in a path or message (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _surrogate_problem(text: str) -> str | None:
    """validation's reason, with why it matters for a payload."""
    problem = surrogate_problem(text)
    return (
        None
        if problem is None
        else f"{problem}, which is not valid Unicode text and cannot be encoded as UTF-8 JSON"
    )


def _child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}.{key}"
    shown = _printable(key)
    if len(shown) > _MAX_KEY_IN_PATH:
        shown = shown[:_MAX_KEY_IN_PATH] + "…"
    return f"{path}.{shown}"


class _Normalizer:
    """One walk over a JSON-like value: collects every problem and builds the normalized value."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.errors: list[UserError] = []

    def refuse(self, path: str, code: ErrorCode, message: str) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(UserError(path, code, message))

    def value(self, value: object, path: str, depth: int) -> JsonValue:
        """The normalized value; a refused part is recorded and replaced by None."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return self.integer(int(value), path)
        if isinstance(value, float):
            return self.floating(float(value), path)
        if isinstance(value, str):
            problem = _surrogate_problem(value)
            if problem:
                self.refuse(path, ErrorCode.INVALID, f"{path} {problem}.")
                return None
            return str.__str__(value)
        if isinstance(value, dict | list | tuple):
            if depth > self.max_depth:
                self.refuse(
                    path,
                    ErrorCode.INVALID,
                    f"{path} is nested too deeply (more than {self.max_depth} levels).",
                )
                return None
            if isinstance(value, dict):
                return self.mapping(value, path, depth)
            return [self.value(item, _child_path(path, i), depth + 1) for i, item in enumerate(value)]
        self.refuse(
            path, ErrorCode.INVALID, f"{path} is a {type(value).__name__}, which is not a JSON value."
        )
        return None

    def integer(self, value: int, path: str) -> int | None:
        if abs(value) > MAX_SAFE_INTEGER:
            self.refuse(
                path,
                ErrorCode.UNSAFE_NUMBER,
                f"{path} is {value}, outside ±{MAX_SAFE_INTEGER} (JavaScript's Number.MAX_SAFE_INTEGER): "
                "JSON.parse in JavaScript receivers would silently round it, and the signature check "
                "would fail. Send it as a string instead.",
            )
            return None
        return value

    def floating(self, value: float, path: str) -> int | float | None:
        if not math.isfinite(value):
            self.refuse(
                path,
                ErrorCode.INVALID,
                f"{path} is {value!r}; JSON has no NaN or Infinity, send null instead.",
            )
            return None
        if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return int(value)  # 1.0 -> 1 and -0.0 -> 0, as JavaScript writes them
        return value

    def mapping(self, value: dict[object, object], path: str, depth: int) -> dict[str, JsonValue]:
        keys: list[str] = []
        for key in value:
            if not isinstance(key, str):
                self.refuse(
                    path,
                    ErrorCode.INVALID,
                    f"{path} has a key of type {type(key).__name__}; JSON object keys must be strings.",
                )
                continue
            problem = _surrogate_problem(key)
            if problem:
                self.refuse(_child_path(path, key), ErrorCode.INVALID, f"A key of {path} {problem}.")
                continue
            keys.append(key)
        return {
            str.__str__(key): self.value(value[key], _child_path(path, key), depth + 1)
            for key in js_key_order(keys)
        }


def normalize_json(value: object, path: str = "details", *, max_depth: int = MAX_DETAILS_DEPTH) -> JsonValue:
    """``value`` as a JSON value that survives ``JSON.parse`` → ``JSON.stringify`` in JavaScript.

    Integral floats become ints (``1.0`` → ``1``, ``-0.0`` → ``0``), objects get JavaScript's key
    order, str/int/float subclasses become the plain types.  Raises :class:`UserErrors` listing every
    problem (up to :data:`MAX_REPORTED_ERRORS`), each with its path (``details.candidate.score``):
    unsafe integers (``UNSAFE_NUMBER``), NaN/Infinity, lone surrogates, non-string keys, non-JSON
    types and nesting deeper than ``max_depth`` (``INVALID``).
    """
    walker = _Normalizer(max_depth)
    normalized = walker.value(value, path, 1)
    if walker.errors:
        raise UserErrors(walker.errors)
    return normalized


def _text(errors: list[UserError], field: str, value: object, max_length: int) -> str | None:
    """``value`` stripped, or None (with the problem recorded) when it is refused."""
    if not isinstance(value, str):
        errors.append(UserError(field, ErrorCode.INVALID, f"{field} must be a string."))
        return None
    text = str.__str__(value.strip())
    if not text:
        errors.append(UserError(field, ErrorCode.REQUIRED, f"{field} is required."))
    elif len(text) > max_length:
        errors.append(
            UserError(
                field, ErrorCode.TOO_LONG, f"{field} is {len(text)} characters; the limit is {max_length}."
            )
        )
    elif problem := _surrogate_problem(text):
        errors.append(UserError(field, ErrorCode.INVALID, f"{field} {problem}."))
    else:
        return text
    return None


def _hex_id(errors: list[UserError], field: str, value: object) -> str | None:
    if not is_object_id(value):
        errors.append(UserError(field, ErrorCode.INVALID_ID, f"{field} must be a 24-character hex id."))
        return None
    return value.lower()


def _email(errors: list[UserError], field: str, value: object) -> str | None:
    email = _text(errors, field, value, MAX_EMAIL_LENGTH)
    if email is None:
        return None
    local, _, domain = email.partition("@")
    if not local or not domain or "@" in domain:
        errors.append(
            UserError(field, ErrorCode.INVALID, f"{field} must be an email address like name@example.com.")
        )
        return None
    return email


def build_event_body(event: str, log: AuditLog, details: object, *, now: datetime, max_bytes: int) -> bytes:
    """The exact body of an event delivery, after validating everything the publisher sent.

    ``{"event","timestamp","data":{"log":{...},"details":{...}}}``, compact UTF-8 JSON in the spec's key
    order; ``details`` None means ``{}``.  Raises :class:`UserErrors` with every problem at once
    (fields ``event``, ``log.<field>``, ``details...``), including ``PAYLOAD_TOO_LARGE`` when the body
    would exceed ``max_bytes``.
    """
    errors: list[UserError] = []
    valid_event = isinstance(event, str) and event in WIRE_NAMES
    if not valid_event:
        shown = _printable(event) if isinstance(event, str) else type(event).__name__
        errors.append(UserError("event", ErrorCode.UNKNOWN_EVENT, f"Unknown event {shown[:100]!r}."))
    elif event in OPERATIONAL_WIRE_NAMES:
        valid_event = False
        errors.append(
            UserError(
                "event",
                ErrorCode.INVALID,
                f"{event} is an operational event: HatchBeacon emits it about your webhooks itself, "
                "so it cannot be published.",
            )
        )
    action = _text(errors, "log.action", log.action, MAX_TEXT_LENGTH)
    resource_type = _text(errors, "log.resourceType", log.resource_type, MAX_TEXT_LENGTH)
    resource_id = _hex_id(errors, "log.resourceId", log.resource_id)
    user_id = _hex_id(errors, "log.userId", log.user_id)
    user_name = _text(errors, "log.userName", log.user_name, MAX_TEXT_LENGTH)
    user_email = _email(errors, "log.userEmail", log.user_email)
    if log.timestamp is not None and not isinstance(log.timestamp, datetime):
        errors.append(UserError("log.timestamp", ErrorCode.INVALID, "log.timestamp must be a date-time."))
    log_time = log.timestamp if isinstance(log.timestamp, datetime) else now

    normalized_details: JsonValue = {}
    if details is not None:
        if isinstance(details, dict):
            walker = _Normalizer(MAX_DETAILS_DEPTH)
            normalized_details = walker.value(details, "details", 1)
            errors.extend(walker.errors)
        else:
            errors.append(UserError("details", ErrorCode.INVALID, "details must be a JSON object (or null)."))

    body = dumps_js(
        {
            # Refused parts are left out so the size can still be estimated: every problem at once.
            "event": str.__str__(event) if valid_event else "",
            "timestamp": iso_ms(as_utc(now)),
            "data": {
                "log": {
                    "action": action,
                    "resourceType": resource_type,
                    "resourceId": resource_id,
                    "userId": user_id,
                    "userName": user_name,
                    "userEmail": user_email,
                    "timestamp": iso_ms(as_utc(log_time)),
                },
                "details": normalized_details,
            },
        }
    )
    if len(body) > max_bytes:
        size = f"about {len(body)}" if errors else str(len(body))
        errors.append(
            UserError(
                "details",
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The event body would be {size} bytes, over the limit of {max_bytes} bytes; "
                "send less in details.",
            )
        )
    if errors:
        raise UserErrors(errors)
    return body


def same_content(stored: bytes, requested: bytes, *, log_time_given: bool) -> bool:
    """Whether two event bodies say the same, apart from the times the service filled in when they were
    built: the body's own ``timestamp``, and ``data.log.timestamp`` unless the publisher gave it."""

    def content(body: bytes) -> object:
        parsed = orjson.loads(body)
        parsed.pop("timestamp", None)
        if not log_time_given:
            parsed["data"]["log"].pop("timestamp", None)
        return parsed

    return content(stored) == content(requested)


def build_test_body(webhook_id: str, webhook_name: str, *, now: datetime) -> bytes:
    """The exact body of a test delivery (the spec's ``webhook.test`` event)."""
    return dumps_js(
        {
            "event": TEST_EVENT,
            "timestamp": iso_ms(as_utc(now)),
            "data": {"message": TEST_MESSAGE, "webhookId": webhook_id, "webhookName": webhook_name},
        }
    )
