"""Schema extensions (validation limits, masking, observability), in the order they wrap an operation."""

from __future__ import annotations

from collections.abc import Callable

from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache

from graphql_api.observability import OperationObservability
from graphql_api.security import MaskUnexpectedErrors, OperationLimits
from graphql_api.transport import SubscriptionsOverWebSocket
from webhooks.settings import Settings


def schema_extensions(
    settings: Settings | None = None,
) -> list[type[SchemaExtension] | Callable[[], SchemaExtension]]:
    # Limits first (they configure parsing and validation); masking wraps everything else.
    # Observability last: it sees the final (masked) result and times the whole operation.
    # The caches skip re-parsing and re-validating a query text seen before (the frontend sends the same few);
    # SubscriptionsOverWebSocket comes after ValidationCache so that its error is the one reported.
    return [
        OperationLimits,
        lambda: ParserCache(maxsize=512),
        lambda: ValidationCache(maxsize=512),
        SubscriptionsOverWebSocket,
        MaskUnexpectedErrors,
        OperationObservability,
    ]
