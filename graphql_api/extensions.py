"""Schema extensions (validation limits, masking, observability), in the order they wrap an operation."""

from __future__ import annotations

from collections.abc import Callable

from graphql import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension

from webhooks.settings import Settings


def _should_mask(error: GraphQLError) -> bool:
    """Mask unexpected errors; keep auth, input and validation errors readable."""
    if error.original_error is None:
        return False  # parse/validation errors from graphql-core itself
    return not isinstance(error.original_error, GraphQLError)


def schema_extensions(settings: Settings | None = None) -> list[type[SchemaExtension] | Callable[[], SchemaExtension]]:
    return [lambda: MaskErrors(should_mask_error=_should_mask)]
