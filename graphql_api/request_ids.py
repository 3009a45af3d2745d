"""Request (correlation) ids: one place that makes them, shared by request logging and masked errors.

The id is the request's ``X-Request-ID`` header when the client (or a proxy) sent a sane one,
else a fresh random one. Clients see only ``Unexpected error (ref <id>)``; the log has the
full exception with the same id.
"""

from __future__ import annotations

import re
import secrets

from starlette.requests import HTTPConnection

REQUEST_ID_HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STATE_KEY = "request_id"


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id(conn: HTTPConnection | None) -> str:
    """The correlation id of this request or WebSocket connection, created once and kept on its state."""
    if conn is None:
        return new_request_id()
    existing = getattr(conn.state, _STATE_KEY, None)
    if isinstance(existing, str):
        return existing
    sent = conn.headers.get(REQUEST_ID_HEADER, "")
    rid = sent if _SANE.fullmatch(sent) else new_request_id()
    setattr(conn.state, _STATE_KEY, rid)
    return rid


def masked_message(ref: str) -> str:
    return f"Unexpected error (ref {ref})"
