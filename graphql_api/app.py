"""The API process: a Starlette app serving GraphQL over HTTP POST and WebSocket on ``/graphql``."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.websocket_origin import normalize_allowed_origins
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from graphql_api.after_response import AfterResponse
from graphql_api.context import Context
from graphql_api.feed import Feed
from graphql_api.graphiql import graphiql_routes, render_graphiql
from graphql_api.health import health_routes
from graphql_api.observability import RequestIdMiddleware
from graphql_api.portal import end_socket_with_session, portal_routes
from graphql_api.schema import build_schema
from graphql_api.security import RequestGuard
from graphql_api.shared_subscriptions import Hub, SharedSubscriptionsHandler, encode_json
from graphql_api.subscriptions import PARSERS
from graphql_api.transport import GraphQLOverHTTP
from webhooks import heap, metrics
from webhooks.core import Core, open_core
from webhooks.redis_conn import RedisTarget
from webhooks.settings import Settings, SettingsError, get_settings

log = logging.getLogger(__name__)

CONNECTION_INIT_TIMEOUT = timedelta(seconds=10)
MAX_SUBSCRIPTIONS_PER_CONNECTION = 20


class GraphQLView(GraphQLOverHTTP):
    # Identical subscriptions share one execution and one encoding per message (shared_subscriptions.py).
    graphql_transport_ws_handler_class = SharedSubscriptionsHandler

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if settings.graphiql else None,
            # queries only (mutations over GET get 405): bearer-token auth, no cookies, so no CSRF risk
            allow_queries_via_get=True,
            keep_alive=True,
            keep_alive_interval=15,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
            # WebSocket Origin check (Strawberry): no Origin (non-browser clients) and same-origin pages
            # are always allowed; any other origin only if listed in WEBHOOKS_ALLOWED_ORIGINS (empty:
            # none; "*": any).
            allowed_origins=settings.allowed_origins,
            connection_init_wait_timeout=CONNECTION_INIT_TIMEOUT,
            max_subscriptions_per_connection=MAX_SUBSCRIPTIONS_PER_CONNECTION,
        )
        self.core: Core | None = None
        self.hub = Hub()

    def encode_json(self, data: object) -> str:
        return encode_json(data)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        assert self.core is not None, "the app lifespan has not started"
        return Context(request=request, response=response, core=self.core)

    async def render_graphql_ide(self, request: Request) -> Response:
        return render_graphiql(request)

    async def on_ws_connect(self, context: Context) -> Any:
        """Authenticate once per connection, from ``connection_init``'s payload (close 4403 if refused)."""
        who = await context.principal()
        if who is None:
            raise ConnectionRejectionError()
        if isinstance(context.request, WebSocket):  # closed when the key is revoked or the session ends
            end_socket_with_session(context.request, who.expires_at, context.still_authenticated)
        return None


def routes(settings: Settings, view: GraphQLView) -> list[BaseRoute]:
    return [
        Route("/graphql", view),  # the view answers other methods itself (405, JSON)
        WebSocketRoute("/graphql", view),
        *graphiql_routes(settings.graphiql),
        *portal_routes(settings),
        *health_routes(),
    ]


def middleware(settings: Settings) -> list[Middleware]:
    return [
        Middleware(AfterResponse),
        Middleware(RequestIdMiddleware),
        Middleware(RequestGuard, max_bytes=settings.max_request_bytes),
    ]


def create_app(settings: Settings | None = None) -> Starlette:
    """The app; a bad API setting raises :class:`SettingsError` here, before anything starts."""
    settings = settings or get_settings()
    try:
        normalize_allowed_origins(settings.allowed_origins)
    except ValueError as exc:
        raise SettingsError(f"WEBHOOKS_ALLOWED_ORIGINS: {exc}") from None
    view = GraphQLView(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            core = await stack.enter_async_context(open_core(settings))
            stack.callback(metrics.process_exited, os.getpid())
            view.core = core
            app.state.core = core
            # One Redis pub/sub reader per process for every subscription (graphql_api/feed.py).
            app.state.feed = await stack.enter_async_context(Feed(RedisTarget.of(settings), PARSERS))
            heap.settle()
            yield

    return Starlette(routes=routes(settings, view), middleware=middleware(settings), lifespan=lifespan)
