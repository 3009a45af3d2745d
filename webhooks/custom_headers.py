"""Custom request headers of a webhook: validated, encrypted at rest, shown masked, never logged.

Values often hold the receiver's own token, so they are write-only: stored encrypted with the same
:class:`~webhooks.crypto.SecretBox` as the signing secret, shown as a mask, decrypted only to send.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webhooks.crypto import SecretBox
from webhooks.db import Doc
from webhooks.errors import ErrorCode, UserError, UserErrors

if TYPE_CHECKING:
    from webhooks.models import Webhook

MAX_HEADERS = 10
MAX_NAME_LENGTH = 100
MAX_VALUE_LENGTH = 1000
MASK = "••••••••"
SHOW_LAST = 4
"""A value this many times longer than the shown tail (16+ characters) shows its last 4 characters."""

# RFC 9110 token: the characters a field name may use.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)
# Visible ASCII, space and tab: no CR, LF, NUL or other control characters.
_VALUE = re.compile(r"[\t\x20-\x7e]*", re.ASCII)

RESERVED_NAMES = frozenset(
    {
        # set by HatchBeacon on every request
        "content-type",
        "content-length",
        "content-encoding",
        "user-agent",
        "host",
        # hop-by-hop (RFC 9110 §7.6.1) and friends
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
RESERVED_PREFIXES = {
    "webhook-": "carry HatchBeacon's own signature and delivery metadata",
    "x-webhook-": "carry HatchBeacon's own signature and delivery metadata",
    "proxy-": "are meant for proxies on the way, not for the receiver",
}


def reserved_reason(name: str) -> str | None:
    lowered = name.lower()
    if lowered in RESERVED_NAMES:
        return f"{name} is set by HatchBeacon or by the HTTP connection itself"
    for prefix, why in RESERVED_PREFIXES.items():
        if lowered.startswith(prefix):
            return f"{prefix}* headers {why}"
    return None


@dataclass(frozen=True, slots=True)
class HeaderInput:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class CustomHeader:
    """A stored header: the name in clear, the value encrypted, and its mask for display."""

    name: str
    value_enc: str
    masked_value: str

    @classmethod
    def from_doc(cls, doc: Doc) -> CustomHeader:
        return cls(doc["name"], doc["value_enc"], doc["masked_value"])

    def to_doc(self) -> Doc:
        return {"name": self.name, "value_enc": self.value_enc, "masked_value": self.masked_value}


def mask(value: str) -> str:
    if len(value) >= 4 * SHOW_LAST:
        return MASK + value[-SHOW_LAST:]
    return MASK


def validate_headers(raw: Sequence[HeaderInput], field: str = "headers") -> list[HeaderInput]:
    """The headers, names and values trimmed, or :class:`UserErrors` (``headers.<i>.name`` / ``.value``)."""
    errors: list[UserError] = []
    if len(raw) > MAX_HEADERS:
        raise UserErrors.one(
            field,
            ErrorCode.LIMIT_EXCEEDED,
            f"a webhook can have at most {MAX_HEADERS} custom headers ({len(raw)} given).",
        )
    seen: dict[str, int] = {}
    clean: list[HeaderInput] = []
    for i, header in enumerate(raw):
        name_field, value_field = f"{field}.{i}.name", f"{field}.{i}.value"
        name = header.name.strip()
        value = header.value.strip(" \t")
        if not name:
            errors.append(UserError(name_field, ErrorCode.REQUIRED, f"{name_field} must not be empty."))
        elif len(name) > MAX_NAME_LENGTH:
            errors.append(
                UserError(
                    name_field,
                    ErrorCode.TOO_LONG,
                    f"{name_field} is {len(name)} characters; the limit is {MAX_NAME_LENGTH}.",
                )
            )
        elif _TOKEN.fullmatch(name) is None:
            errors.append(
                UserError(
                    name_field,
                    ErrorCode.INVALID,
                    f"{name_field} is not a valid header name: use letters, digits and "
                    "!#$%&'*+-.^_`|~ only (no spaces, colons or control characters).",
                )
            )
        elif (reason := reserved_reason(name)) is not None:
            errors.append(
                UserError(name_field, ErrorCode.INVALID, f"{name_field}: {name} is reserved ({reason}).")
            )
        elif name.lower() in seen:
            errors.append(
                UserError(
                    name_field,
                    ErrorCode.CONFLICT,
                    f"{name_field}: {name} is already given as {field}.{seen[name.lower()]}.name "
                    "(header names are case-insensitive).",
                )
            )
        else:
            seen[name.lower()] = i
        if not value:
            errors.append(UserError(value_field, ErrorCode.REQUIRED, f"{value_field} must not be empty."))
        elif len(value) > MAX_VALUE_LENGTH:
            errors.append(
                UserError(
                    value_field,
                    ErrorCode.TOO_LONG,
                    f"{value_field} is {len(value)} characters; the limit is {MAX_VALUE_LENGTH}.",
                )
            )
        elif _VALUE.fullmatch(value) is None:
            errors.append(
                UserError(
                    value_field,
                    ErrorCode.INVALID,
                    f"{value_field} may hold printable ASCII, spaces and tabs only "
                    "(no CR, LF, NUL or other control characters, no non-ASCII text).",
                )
            )
        clean.append(HeaderInput(name, value))
    if errors:
        raise UserErrors(errors)
    return clean


def seal_headers(headers: Sequence[HeaderInput], encrypt: Callable[[str], str]) -> list[CustomHeader]:
    """Validated headers, each value encrypted (``SecretBox.encrypt``) and masked."""
    return [CustomHeader(h.name, encrypt(h.value), mask(h.value)) for h in headers]


def headers_doc(headers: Sequence[CustomHeader]) -> list[Doc]:
    return [h.to_doc() for h in headers]


def decrypted_headers(webhook: Webhook, box: SecretBox) -> dict[str, str]:
    """The webhook's custom headers to send, values in clear. Only the sender should call this."""
    return {h.name: box.decrypt(h.value_enc) for h in webhook.headers}


def custom_header_names(webhook: Webhook) -> frozenset[str]:
    """Lower-cased names of the webhook's custom headers (their values are redacted in the log)."""
    return frozenset(h.name.lower() for h in webhook.headers)
