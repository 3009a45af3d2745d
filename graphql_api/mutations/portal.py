"""Customer portal sessions: ``createPortalSession``, ``revokePortalSession`` and the ``portalSession`` query.

A portal session is a short-lived token of one account with the ``webhooks:manage`` scope only, stored
hashed next to the API keys (``webhooks/repositories/accounts.py``) and accepted by the same
``Authorization: Bearer`` check. The product's backend creates one with its API key and hands the
returned ``url`` (``…/portal#token=…``: the fragment never reaches a server log) to the browser.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import strawberry

from graphql_api.context import FORBIDDEN, Info, auth_error
from graphql_api.types import UserError, user_errors
from webhooks.errors import ErrorCode, UserErrors
from webhooks.ids import parse_id
from webhooks.models import Principal, Scope

DEFAULT_TTL_MINUTES = 60
MAX_TTL_MINUTES = 24 * 60
PORTAL_PATH = "/portal"

TTL_DESCRIPTION = (
    f"How long the session lasts, in minutes (1 to {MAX_TTL_MINUTES}; default {DEFAULT_TTL_MINUTES})."
)


@strawberry.type(description="A customer portal session: a short-lived token scoped to webhooks:manage.")
class PortalSession:
    id: strawberry.ID
    expires_at: datetime


@strawberry.type
class CreatePortalSessionPayload:
    url: str | None = strawberry.field(
        default=None, description="The portal page with the token in its fragment: open it or embed it."
    )
    token: str | None = strawberry.field(default=None, description="The session token, shown only here.")
    expires_at: datetime | None = None
    session: PortalSession | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class RevokePortalSessionPayload:
    revoked_id: strawberry.ID | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


def _portal_url(info: Info, token: str) -> str:
    base = info.context.core.settings.public_url
    if base:
        root = base.rstrip("/")
    else:
        request = info.context.request
        parts = urlsplit(str(request.base_url))
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        root = urlunsplit((scheme, parts.netloc, parts.path, "", "")).rstrip("/")
    return f"{root}{PORTAL_PATH}#token={token}"


async def _api_key_caller(info: Info) -> Principal:
    who = await info.context.require(Scope.MANAGE_WEBHOOKS)
    if who.expires_at is not None:
        raise auth_error(FORBIDDEN, "A portal session cannot create portal sessions: use an API key")
    return who


async def create_portal_session(
    info: Info,
    ttl_minutes: Annotated[
        int | None, strawberry.argument(description=TTL_DESCRIPTION)
    ] = DEFAULT_TTL_MINUTES,
) -> CreatePortalSessionPayload:
    who = await _api_key_caller(info)
    minutes = DEFAULT_TTL_MINUTES if ttl_minutes is None else ttl_minutes
    if not 1 <= minutes <= MAX_TTL_MINUTES:
        message = f"ttlMinutes must be between 1 and {MAX_TTL_MINUTES} (24 hours)"
        refused = UserErrors.one("ttlMinutes", ErrorCode.INVALID, message)
        return CreatePortalSessionPayload(errors=user_errors(refused))
    session_id, token, expires_at = await info.context.core.api_keys.issue_portal_session(
        who.account_id, timedelta(minutes=minutes)
    )
    return CreatePortalSessionPayload(
        url=_portal_url(info, token),
        token=token,
        expires_at=expires_at,
        session=PortalSession(id=strawberry.ID(str(session_id)), expires_at=expires_at),
    )


async def revoke_portal_session(
    info: Info,
    id: Annotated[
        strawberry.ID | None,
        strawberry.argument(description="The session to revoke; omitted: the calling portal session."),
    ] = None,
) -> RevokePortalSessionPayload:
    who = await info.context.require(Scope.MANAGE_WEBHOOKS)
    try:
        if id is None:
            if who.expires_at is None:
                raise UserErrors.one("id", ErrorCode.REQUIRED, "id is required when calling with an API key")
            session_id = who.key_id
        else:
            session_id = parse_id(str(id))
        if not await info.context.core.api_keys.revoke_portal_session(who.account_id, session_id):
            raise UserErrors.one("id", ErrorCode.NOT_FOUND, "No active portal session with this id")
    except UserErrors as exc:
        return RevokePortalSessionPayload(errors=user_errors(exc))
    return RevokePortalSessionPayload(revoked_id=strawberry.ID(str(session_id)))


async def portal_session(info: Info) -> PortalSession | None:
    """The calling portal session (null when the caller uses an API key)."""
    who = await info.context.require(Scope.MANAGE_WEBHOOKS)
    if who.expires_at is None:
        return None
    return PortalSession(id=strawberry.ID(str(who.key_id)), expires_at=who.expires_at)
