"""Subscriptions are served over WebSocket only: a subscription sent over HTTP gets a clear error.

Strawberry accepts subscription operations in an HTTP POST (for its multipart/SSE transports, which this
service does not enable) and then runs them like a query, which fails deep inside graphql-core with a
``TypeError`` that :class:`graphql_api.security.MaskUnexpectedErrors` would mask as "Unexpected error".
:class:`SubscriptionsOverWebSocket` refuses them up front, before validation, with a readable error
(``extensions.code`` ``BAD_REQUEST``) telling the client where subscriptions are served.
"""

from __future__ import annotations

from collections.abc import Iterator

from graphql import GraphQLError
from starlette.websockets import WebSocket
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

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
