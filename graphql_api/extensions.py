"""Schema extensions (validation limits, masking, observability), in the order they wrap an operation."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

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
        lambda: ParserCache(maxsize=512),
        lambda: ValidationCache(maxsize=512),
        SubscriptionsOverWebSocket,
        OneOperationPerRequest,
        MaskUnexpectedErrors,
        OperationObservability,
    ]
