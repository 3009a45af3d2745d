"""How GraphQL travels: the HTTP view (GraphQL over HTTP, below) and WebSocket-only subscriptions.

Subscriptions are served over WebSocket only: a subscription sent over HTTP gets a clear error.

Strawberry accepts subscription operations in an HTTP POST (for its multipart/SSE transports, which this
service does not enable) and then runs them like a query, which fails deep inside graphql-core with a
``TypeError`` that :class:`graphql_api.security.MaskUnexpectedErrors` would mask as "Unexpected error".
:class:`SubscriptionsOverWebSocket` refuses them up front, before validation, with a readable error
(``extensions.code`` ``BAD_REQUEST``) telling the client where subscriptions are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, GraphQLSyntaxError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.extensions import SchemaExtension
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from graphql_api.context import Context
from graphql_api.request_ids import request_id

log = logging.getLogger(__name__)

SUBSCRIPTION_OVER_HTTP = (
    "Subscriptions are served over WebSocket on /graphql (graphql-transport-ws or graphql-ws); "
    "send them over a WebSocket connection, not an HTTP request"
)
BAD_REQUEST = "BAD_REQUEST"


def _over_websocket(context: object) -> bool:
    return isinstance(getattr(context, "request", None), WebSocket)


class SubscriptionsOverWebSocket(SchemaExtension):
    """Refuse subscription operations that did not arrive over a WebSocket connection."""

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        try:
            operation_type = ec.operation_type
        except RuntimeError:  # no such operation: left to Strawberry's own error
            operation_type = None
        if operation_type is OperationType.SUBSCRIPTION and not _over_websocket(ec.context):
            # Set before validation runs, so it is the only error reported (validation is skipped).
            ec.pre_execution_errors = [GraphQLError(SUBSCRIPTION_OVER_HTTP, extensions={"code": BAD_REQUEST})]
        yield


CLOSE_REASON_BYTES = 123  # what a WebSocket close frame can carry (RFC 6455, 5.5.1)


class NullPayloadTransportWS(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws, with two corrections to Strawberry's handler:

    - ``connection_init`` with ``"payload": null`` (the protocol allows it) reads as no payload;
    - a ``subscribe`` that names an operation its document lacks gets an ``error`` message for that operation,
      as a validation error does, rather than closing the connection; a document that does not parse still
      closes it (4400), with the reason cut to what a close frame holds. Strawberry put the client's text in
      the close reason whole: a long one broke the close (the client saw 1006) and logged an exception.
    """

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        if message.get("payload", {}) is None:
            message = {"type": "connection_init"}
        await super().handle_connection_init(message)

    @staticmethod
    def _get_pre_execution_close_reason(error: GraphQLError) -> str | None:
        if not isinstance(error, GraphQLSyntaxError):
            return None
        return error.message.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore")


class LegacyTransportWS(BaseGraphQLWSHandler[Context, None]):
    """Legacy graphql-ws (subscriptions-transport-ws), held to the rules graphql-transport-ws already keeps:

    - ``connection_init`` must arrive within the view's ``connection_init_wait_timeout`` (else close 4408):
      Strawberry's legacy handler waited for ever, so an unauthenticated socket stayed open as long as its
      client liked;
    - one ``connection_init`` per socket (a second closes it with 4429). Strawberry's accepted any number, and
      each replaced the credentials the socket's revocation check reads while the caller stayed the one the
      first authenticated: a second init with any valid key kept a revoked key's live feed open for good.
    """

    _init_received = False
    _init_timeout: asyncio.Task[None] | None = None

    async def handle(self) -> None:
        self._init_timeout = asyncio.create_task(self._close_without_init())
        try:
            await super().handle()
        finally:
            self._init_timeout.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._init_timeout

    async def _close_without_init(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self._init_received:
            with contextlib.suppress(Exception):  # the client may be gone at this very moment
                await self.websocket.close(code=4408, reason="Connection initialisation timeout")

    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        if self._init_received:
            await self.websocket.close(code=4429, reason="Too many initialisation requests")
            return
        self._init_received = True
        await super().handle_connection_init(message)


# --- GraphQL over HTTP --------------------------------------------------------------------------

GRAPHQL_RESPONSE = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
JSON_BODY_TYPES = frozenset({APPLICATION_JSON, GRAPHQL_RESPONSE})
MUTATION_OVER_GET = "Mutations are accepted over POST only; GET serves queries"
NOT_AN_OBJECT = 'The request body must be a JSON object such as {"query": "{ eventTypes { name } }"}'
_STATUS_KEY = "graphql_status"


class BadJson(json.JSONDecodeError):
    """A request body that cannot be read as JSON, with the specific reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "", 0)
        self.reason = reason


def decode_json(data: str | bytes, what: str = "The request body") -> object:
    """``json.loads`` whose every failure is a ``JSONDecodeError`` (HTTP 400, WebSocket close 4400), saying
    which part of the request (``what``) it could not read."""
    try:
        return json.loads(data)
    except RecursionError:
        raise BadJson(f"{what} nests too deeply to be read as JSON") from None
    except UnicodeDecodeError:
        raise BadJson(f"{what} is not valid UTF-8") from None
    except json.JSONDecodeError:
        raise BadJson(f"{what} is not valid JSON") from None
    except ValueError:  # e.g. an integer of more than 4,300 digits
        raise BadJson(f"{what} has a number too long to read") from None


def response_media_type(accept: str) -> str:
    """``application/graphql-response+json`` when the client prefers it (q-values honoured), else JSON."""
    best, best_q = APPLICATION_JSON, -1.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == GRAPHQL_RESPONSE and q > 0 and q >= best_q:
            best, best_q = GRAPHQL_RESPONSE, q
        elif media in (APPLICATION_JSON, "application/*", "*/*") and q > best_q:
            best, best_q = APPLICATION_JSON, q
    return best


def is_request_error(result: ExecutionResult) -> bool:
    """No data and no field error: the request failed before execution (parse, validation, variables)."""
    errors = result.errors or []
    return result.data is None and bool(errors) and all(e.path is None for e in errors)


def error_response(request: Request, status: int, message: str) -> Response:
    """A transport error as JSON ``{"errors": [{"message"}]}`` in the media type the client accepts."""
    media_type = response_media_type(request.headers.get("accept", ""))
    body = json.dumps({"errors": [{"message": message}]}).encode()
    allow = "POST" if request.method == "GET" else "GET, POST"  # a mutation over GET, or another method
    headers = {"Allow": allow} if status == 405 else None
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def parse_request(data: object) -> GraphQLRequestData:
    """The fields of one GraphQL request; 400 for anything but an object with well-typed fields."""
    if not isinstance(data, dict):
        raise HTTPException(400, NOT_AN_OBJECT)
    query = data.get("query")
    if not isinstance(query, str | None):
        raise HTTPException(400, "The request's 'query' must be a string")
    variables = data.get("variables")
    if not isinstance(variables, dict | None):
        raise HTTPException(400, "The request's 'variables' must be an object or null")
    operation_name = data.get("operationName")
    if not isinstance(operation_name, str | None):
        raise HTTPException(400, "The request's 'operationName' must be a string or null")
    extensions = data.get("extensions")
    if not isinstance(extensions, dict | None):
        raise HTTPException(400, "The request's 'extensions' must be an object or null")
    return GraphQLRequestData(
        query=query, variables=variables, operation_name=operation_name, extensions=extensions
    )


class GraphQLOverHTTP(GraphQL[Context, None]):
    """Strawberry's ASGI view, held to the GraphQL-over-HTTP specification.

    * GET serves queries (never mutations: 405); POST takes ``application/json`` in any letter case.
    * Malformed requests (not JSON, not an object, wrong field types, too deep, a number too long) get a
      400 with a JSON ``{"errors": [...]}`` body, like every transport error, never a 500.
    * ``Accept: application/graphql-response+json`` is honoured: a request error (parse, validation or
      variables) is a 400 without ``data``; with ``application/json`` it stays a 200.
    * graphql-transport-ws ``connection_init`` may carry ``"payload": null``; legacy graphql-ws gets the same
      ``connection_init`` timeout and one-init rule (:class:`LegacyTransportWS`).
    """

    graphql_transport_ws_handler_class = NullPayloadTransportWS
    graphql_ws_handler_class = LegacyTransportWS

    def decode_json(self, data: str | bytes) -> object:
        return decode_json(data)

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return decode_json(data)
        except BadJson as exc:
            raise HTTPException(400, exc.reason) from exc

    def parse_query_params(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        """A GET's parameters; ``variables`` and ``extensions`` are JSON, and an error says which is not."""
        found: dict[str, Any] = dict(params)
        for name in ("variables", "extensions"):
            if text := found.get(name):
                try:
                    found[name] = decode_json(text, f"The '{name}' query parameter")
                except BadJson as exc:
                    raise HTTPException(400, exc.reason) from exc
        return found

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData:
        if request.method == "GET":
            return parse_request(self.parse_query_params(request.query_params))
        media_type = (request.content_type or "").split(";")[0].strip().lower()
        if media_type not in JSON_BODY_TYPES:
            raise HTTPException(415, "Send the request body as application/json")
        return parse_request(self.parse_json(await request.get_body()))

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        try:
            return await super().execute_single(
                request, request_adapter, sub_response, context, root_value, request_data
            )
        except HTTPException as exc:
            if isinstance(exc.__cause__, InvalidOperationTypeError) and request_adapter.method == "GET":
                raise HTTPException(405, MUTATION_OVER_GET) from exc
            raise

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        processed = await super().process_result(request, result)
        if response_media_type(request.headers.get("accept", "")) == GRAPHQL_RESPONSE and is_request_error(
            result
        ):
            processed.pop("data", None)
            setattr(request.state, _STATUS_KEY, 400)
        return processed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        try:
            response = await self.run(request)
        except HTTPException as exc:
            log.info(
                "graphql request refused: %d", exc.status_code, extra={"request_id": request_id(request)}
            )
            response = error_response(request, exc.status_code, exc.reason)
        if response.headers.get("content-type", "").startswith(APPLICATION_JSON):
            response.headers["content-type"] = response_media_type(request.headers.get("accept", ""))
            response.status_code = getattr(request.state, _STATUS_KEY, response.status_code)
        await response(scope, receive, send)
