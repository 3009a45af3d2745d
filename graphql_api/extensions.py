"""Schema extensions (validation limits, masking, observability), in the order they wrap an operation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

from graphql import GraphQLSyntaxError
from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache

from graphql_api.observability import OperationObservability
from graphql_api.security import Limits, MaskUnexpectedErrors, OneOperationPerRequest, OperationLimits
from graphql_api.transport import SubscriptionsOverWebSocket


def schema_extensions(limits: Limits) -> list[type[SchemaExtension] | Callable[[], SchemaExtension]]:
    # Limits first (they configure parsing and validation); masking wraps everything else.
    # Observability last: it sees the final (masked) result and times the whole operation.
    # The caches skip re-parsing and re-validating a query text seen before (the frontend sends the same few);
    # SubscriptionsOverWebSocket and OneOperationPerRequest come after ValidationCache so that their error is
    # the one reported.
    return [
        partial(OperationLimits, limits=limits),
        lambda: ReportingParserCache(maxsize=512),
        lambda: ValidationCache(maxsize=512),
        SubscriptionsOverWebSocket,
        OneOperationPerRequest,
        MaskUnexpectedErrors,
        OperationObservability,
    ]


class ReportingParserCache(ParserCache):
    """Strawberry's parser cache, except that a document that does not parse is left to Strawberry to parse.

    The cache parses in ``on_parse``, outside the error handling that turns a syntax error into the result's
    error. Over HTTP a catch-all further out still did; for a subscription the error escaped as an exception:
    the client got a bare ``complete`` and the server logged "Exception in worker task". Strawberry parses
    again when no document is set, inside that handling: a document that does not parse is parsed twice (a
    failed parse is not cached either way).
    """

    def on_parse(self) -> Iterator[None]:
        ec = self.execution_context
        try:
            ec.graphql_document = self.cached_parse_document(ec.query, **ec.parse_options)
        except GraphQLSyntaxError:
            ec.graphql_document = None
        yield
