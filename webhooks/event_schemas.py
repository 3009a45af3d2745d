"""JSON Schemas (draft 2020-12) of every event's payload, as receivers get it.

``data.log`` is fixed by the spec and is exactly what ``publishEvent`` accepts (``webhooks.payloads``
validates the same rules with its own precise errors); ``data.details`` is described from the spec's
example for each event (``method`` and ``path`` always, the other fields as shown) and stays open to
more fields. Operational events describe their flat ``data``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from webhooks.events import CATALOG, EventName, EventSpec, OperationalSpec
from webhooks.payloads import MAX_EMAIL_LENGTH, MAX_TEXT_LENGTH

DIALECT = "https://json-schema.org/draft/2020-12/schema"
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "description": "ISO-8601 UTC with milliseconds and Z, e.g. 2024-01-20T10:30:00.000Z.",
}
OBJECT_ID = {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "A 24-character hex id."}


def _ranges(codes: list[int]) -> str:
    """Code points as the inside of a regex character class, runs written as ranges (``\\u2000-\\u200a``)."""
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(f"\\u{a:04x}" + (f"-\\u{b:04x}" if b > a else "") for a, b in runs)


# The characters publishEvent trims from log texts (Python's ``str.strip``), spelled out: ``\s`` means
# another set in ECMA-262, the regex dialect of JSON Schema (U+FEFF is whitespace there and not here;
# U+001C-U+001F and U+0085 the reverse), so a JavaScript validator refused real deliveries with it.
_TRIMMED = _ranges([code for code in range(0x10000) if chr(code).isspace()])  # none lies beyond U+FFFF
_EDGE = f"[^{_TRIMMED}]"
"""A character that may begin or end a log text: one publishEvent does not trim."""


def _text(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TEXT_LENGTH,
        "pattern": f"^{_EDGE}([\\s\\S]*{_EDGE})?$",
        "description": description,
    }


LOG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The audit-log entry of the action that caused the event.",
    "properties": {
        "action": _text("What was done, e.g. create_application."),
        "resourceType": _text("The kind of resource acted on, e.g. job_application."),
        "resourceId": {**OBJECT_ID, "description": "The id of the resource acted on."},
        "userId": {**OBJECT_ID, "description": "The id of the user who acted."},
        "userName": _text("The name of the user who acted."),
        "userEmail": {
            "type": "string",
            "minLength": 3,
            "maxLength": MAX_EMAIL_LENGTH,
            "pattern": f"^[^@{_TRIMMED}][^@]*@[^@]*[^@{_TRIMMED}]$",
            "description": "The email address of the user who acted.",
        },
        "timestamp": {**TIMESTAMP, "description": "When the action happened."},
    },
    "required": ["action", "resourceType", "resourceId", "userId", "userName", "userEmail", "timestamp"],
    "additionalProperties": False,
}


def _kind_of(example: object) -> str:
    """What the spec's example shows a field to be, in words."""
    kinds: list[tuple[type, str]] = [(bool, "a boolean"), (int, "an integer"), (float, "a number")]
    kinds += [(str, "a string"), (list, "a list"), (dict, "an object")]
    return next((word for kind, word in kinds if isinstance(example, kind)), "a JSON value")


def _details_schema(spec: EventSpec) -> dict[str, Any]:
    shown = {"method": spec.method, "path": spec.path, **spec.extra}
    # publishEvent takes ``details`` as any JSON object, so these fields are described by example and not
    # constrained: a schema that typed them would make receivers that validate refuse real deliveries (a
    # "jobTitle" sent as null, say).
    method = "The HTTP method of the API call behind the event."
    properties: dict[str, Any] = {
        "method": {"description": method, "examples": [spec.method]},
        "path": {"description": "The API path of that call.", "examples": [spec.path]},
    }
    for key, value in spec.extra.items():
        described = f"Usually {_kind_of(value)}, as in the spec's example."
        properties[key] = {"description": described, "examples": [value]}
    return {
        "type": "object",
        "description": "Event-specific fields, as the publisher sent them: any JSON object. The spec's "
        "example shows these; their types are not enforced, and more may be present.",
        "properties": properties,
        "examples": [shown],
        "additionalProperties": True,
    }


def _envelope(name: EventName, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "title": name.value,
        "type": "object",
        "properties": {
            "event": {"const": name.value},
            "timestamp": {**TIMESTAMP, "description": "When the event was published."},
            "data": data,
        },
        "required": ["event", "timestamp", "data"],
        "additionalProperties": False,
    }


def _operational_data(spec: OperationalSpec) -> dict[str, Any]:
    descriptions: dict[str, tuple[str, dict[str, Any]]] = {
        "webhookId": ("The webhook this is about.", OBJECT_ID),
        "webhookName": ("Its name.", {"type": "string"}),
        "consecutiveFailures": ("Consecutive failed deliveries so far.", {"type": "integer", "minimum": 0}),
        "disableAfter": (
            "The count at which the webhook is disabled.",
            {"type": "integer", "minimum": 1},
        ),
        "reason": ("Why it was disabled.", {"type": "string"}),
        "deliveryId": ("The delivery this is about.", OBJECT_ID),
        "event": ("The wire name of the delivered event.", {"type": "string"}),
        "attempts": ("Attempts made, all told.", {"type": "integer", "minimum": 1}),
    }
    properties = {key: {**descriptions[key][1], "description": descriptions[key][0]} for key in spec.data}
    return {
        "type": "object",
        "properties": properties,
        "required": list(spec.data),
        "additionalProperties": False,
    }


@cache
def payload_schema(name: EventName) -> dict[str, Any]:
    """The JSON Schema of ``name``'s payload (``{"event", "timestamp", "data"}``)."""
    spec = CATALOG[name]
    if isinstance(spec, OperationalSpec):
        return _envelope(name, _operational_data(spec))
    data = {
        "type": "object",
        "properties": {"log": LOG_SCHEMA, "details": _details_schema(spec)},
        "required": ["log", "details"],
        "additionalProperties": False,
    }
    return _envelope(name, data)
