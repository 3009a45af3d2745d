"""Scopes as a Strawberry permission, and the one shape of every scoped query and mutation.

* :class:`HasScope`: the caller must be authenticated (``UNAUTHENTICATED``) and hold the scope
  (``FORBIDDEN``): a top-level GraphQL error, checked before the resolver runs. Inside the resolver,
  ``info.context.caller`` is the authenticated principal.
* :class:`ErrorsAsData`: a mutation's ``UserErrors`` become its payload's ``errors`` (Saleor's
  ``BaseMutation`` idea): the resolver only calls the service and builds the success payload.
* :class:`ErrorsAsBadInput`: a query's ``UserErrors`` become one ``BAD_USER_INPUT`` error naming the field.
* :func:`scoped_mutation` and :func:`scoped_query` put these together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions.field_extension import FieldExtension
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.types import Info as StrawberryInfo
from strawberry.types.nodes import SelectedField, Selection

from graphql_api.types import user_errors
from webhooks.errors import UserErrors
from webhooks.models import Scope

BAD_USER_INPUT = "BAD_USER_INPUT"


class HasScope(BasePermission):
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def has_permission(self, source: Any, info: StrawberryInfo[Any, Any], **kwargs: Any) -> bool:
        await info.context.require(self.scope)  # raises the UNAUTHENTICATED / FORBIDDEN error itself
        return True


def bad_input(exc: UserErrors) -> GraphQLError:
    first = exc.errors[0]
    return GraphQLError(
        str(exc), extensions={"code": BAD_USER_INPUT, "field": first.field, "reason": first.code.value}
    )


class ErrorsAsData(FieldExtension):
    """``UserErrors`` raised by the resolver (or a service it calls) become ``payload(errors=[...])``."""

    def __init__(self, payload: Callable[..., Any]) -> None:
        super().__init__()
        self.payload = payload

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: StrawberryInfo[Any, Any], **kwargs: Any
    ) -> Any:
        try:
            return await next_(source, info, **kwargs)
        except UserErrors as exc:
            return self.payload(errors=user_errors(exc))


class ErrorsAsBadInput(FieldExtension):
    """``UserErrors`` raised by a query resolver become a ``BAD_USER_INPUT`` GraphQL error."""

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: StrawberryInfo[Any, Any], **kwargs: Any
    ) -> Any:
        try:
            return await next_(source, info, **kwargs)
        except UserErrors as exc:
            raise bad_input(exc) from exc


class SelectionNeeds(FieldExtension):
    """A mutation whose answer may select a field that needs another scope (a ``Delivery``'s ``attempts``
    needs webhooks:manage): checked before the mutation runs, so a caller refused that field is refused the
    whole mutation (``FORBIDDEN``) and nothing is written. Refused only after the write, a client would not
    know that its event was stored, and would publish it again."""

    def __init__(self, field: str, scope: Scope) -> None:
        super().__init__()
        self.field = field
        self.scope = scope

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: StrawberryInfo[Any, Any], **kwargs: Any
    ) -> Any:
        if any(self.field in _names_below(selected) for selected in info.selected_fields):
            await info.context.require(self.scope)
        return await next_(source, info, **kwargs)


def _names_below(node: Selection) -> set[str]:
    """The names of every field selected under ``node`` (through fragments too), leaving out what
    ``@skip`` / ``@include`` leave out: such a field is not resolved, so it needs no scope."""
    names: set[str] = set()
    for child in node.selections:
        if not _included(child):
            continue
        if isinstance(child, SelectedField):
            names.add(child.name)
        names |= _names_below(child)
    return names


def _included(node: Selection) -> bool:
    """False when ``@skip(if: true)`` or ``@include(if: false)`` leaves ``node`` out (their variables are
    already substituted)."""
    skip = node.directives.get("skip", {}).get("if", False)
    include = node.directives.get("include", {}).get("if", True)
    return not skip and bool(include)


def _guard(scope: Scope) -> PermissionExtension:
    # no schema directive: the SDL clients see does not change
    return PermissionExtension(permissions=[HasScope(scope)], use_directives=False)


def scoped_mutation(
    resolver: Callable[..., Any],
    *,
    scope: Scope,
    payload: Callable[..., Any],
    extensions: Sequence[FieldExtension] = (),
    description: str | None = None,
) -> Any:
    """A mutation that needs ``scope`` and answers expected failures as ``payload.errors``.

    Order: the scope check first, then ``extensions`` (e.g. a rate limit), then the resolver; the
    ``UserErrors`` of both become payload errors. (Strawberry makes the *last* extension the outermost.)
    """
    return strawberry.mutation(
        resolver=resolver,
        description=description,
        extensions=[*extensions, ErrorsAsData(payload), _guard(scope)],
    )


def scoped_query(resolver: Callable[..., Any], *, scope: Scope, description: str | None = None) -> Any:
    """A query field that needs ``scope`` and reports refused input as ``BAD_USER_INPUT``."""
    return strawberry.field(
        resolver=resolver, description=description, extensions=[ErrorsAsBadInput(), _guard(scope)]
    )
