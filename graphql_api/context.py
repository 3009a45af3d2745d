"""Per-request context: the wired core and the authenticated caller (resolved once, lazily)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader
from strawberry.types import Info as _Info

from webhooks.core import Core
from webhooks.errors import ErrorCode, UserErrors
from webhooks.ids import parse_id
from webhooks.lanes import LaneState
from webhooks.models import Attempt, Delivery, Principal, Scope
from webhooks.timeutil import utcnow

UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"


def auth_error(code: str, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


def bearer_token(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass
class Context:
    request: Request | WebSocket
    response: Response | WebSocket | None
    core: Core
    connection_params: dict[str, Any] = field(default_factory=dict)
    _principal: Principal | None = None
    _resolved: bool = False
    _attempts: DataLoader[Delivery, list[Attempt]] | None = None
    _lane_states: DataLoader[str, LaneState] | None = None

    @property
    def lane_states_loader(self) -> DataLoader[str, LaneState]:
        """Batches ``Webhook.breaker`` of one request into one Redis round trip."""
        if self._lane_states is None:

            async def load(ids: list[str]) -> list[LaneState]:
                found = await self.core.lanes.states(ids, utcnow())
                return [found[i] for i in ids]

            self._lane_states = DataLoader(load_fn=load, cache=False)
        return self._lane_states

    @property
    def attempts_loader(self) -> DataLoader[Delivery, list[Attempt]]:
        """Batches ``Delivery.attempts`` of one request into a single query."""
        if self._attempts is None:
            # batching only, no cache: a WebSocket context lives as long as its connection
            self._attempts = DataLoader(load_fn=self.core.deliveries.attempts, cache=False)
        return self._attempts

    def _authorization(self) -> object:
        if self.connection_params:
            return self.connection_params.get("Authorization") or self.connection_params.get("authorization")
        return self.request.headers.get("authorization")

    async def principal(self) -> Principal | None:
        if not self._resolved:
            token = bearer_token(self._authorization())
            self._principal = await self.core.api_keys.authenticate(token) if token else None
            self._resolved = True
        return self._principal

    @property
    def authenticated(self) -> Principal | None:
        """The caller if authentication already ran and succeeded; never triggers a lookup."""
        return self._principal

    @property
    def caller(self) -> Principal:
        """The caller, inside a resolver guarded by :class:`graphql_api.permissions.HasScope`."""
        if self._principal is None:
            raise RuntimeError("caller used in a resolver without a HasScope permission")
        return self._principal

    async def still_authenticated(self) -> bool:
        """Whether the caller's credentials are still accepted now (not cached): for long connections."""
        token = bearer_token(self._authorization())
        return token is not None and await self.core.api_keys.authenticate(token) is not None

    async def webhook_filter(self, who: Principal, webhook_id: object) -> ObjectId | None:
        """The webhook a subscription filters by, checked against the caller's account (unknown and foreign
        ids alike); None for no filter. Raises the GraphQL error its subscriber gets."""
        if webhook_id is None:
            return None
        try:
            oid = parse_id(str(webhook_id), "webhookId")
            webhook = await self.core.webhook_repo.get(who.account_id, oid)
        except UserErrors as exc:
            raise GraphQLError(exc.errors[0].message, extensions={"code": "BAD_USER_INPUT"}) from exc
        if webhook is None:
            not_found = {"code": ErrorCode.NOT_FOUND.value}
            raise GraphQLError(f"no webhook with id {webhook_id}", extensions=not_found)
        return oid

    async def require(self, scope: Scope) -> Principal:
        """The caller, if authenticated and allowed ``scope``; else a top-level GraphQL error."""
        who = await self.principal()
        if who is None:
            raise auth_error(
                UNAUTHENTICATED, "A valid API key is required: send 'Authorization: Bearer <key>'"
            )
        if who.expires_at is not None and who.expires_at <= utcnow():  # a portal session, on a long socket
            raise auth_error(UNAUTHENTICATED, "The portal session has expired")
        if scope not in who.scopes:
            raise auth_error(FORBIDDEN, f"This API key lacks the '{scope.value}' scope")
        return who


Info = _Info[Context, None]
