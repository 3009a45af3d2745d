"""API hardening: request guard middleware, GraphQL limits, error masking with a reference, rate limits.

* :class:`RequestGuard` (pure ASGI): refuses non-JSON POST bodies (CSRF: browsers can send
  ``text/plain``, ``application/x-www-form-urlencoded`` and ``multipart/form-data`` cross-site
  without a preflight) with 415, and bodies over ``max_request_bytes`` with 413, counting the bytes
  actually streamed rather than trusting ``Content-Length``.
* :class:`OperationLimits` (schema extension): depth, alias and token limits, and introspection
  off when ``WEBHOOKS_INTROSPECTION=false``, given to its constructor when the app builds its schema.
* :class:`OneOperationPerRequest`: several operations without ``operationName`` are a request error.
* :class:`MaskUnexpectedErrors`: unexpected errors become ``Unexpected error (ref <id>)`` for the
  client and are logged in full with the same id.
* :class:`RateLimit` (field extension): per-account limits on ``publishEvent`` and ``testWebhook``,
  answered as a ``RATE_LIMITED`` user error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from graphql import GraphQLError, OperationDefinitionNode
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import FieldExtension, MaskErrors, SchemaExtension
from strawberry.extensions.max_aliases import create_validator as alias_validator
from strawberry.extensions.query_depth_limiter import create_validator as depth_validator
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import Info as StrawberryInfo

from graphql_api.request_ids import masked_message, request_id
from webhooks.ratelimit import Action
from webhooks.settings import Settings

log = logging.getLogger(__name__)

JSON_MEDIA_TYPES = frozenset({"application/json", "application/graphql-response+json"})
_BODY_METHODS = frozenset({"POST"})  # the only method any route reads a body for; others get the route's 405
DRAIN_FACTOR = 8  # an oversized body is read (and dropped) up to 8x the limit before answering 413


# --- HTTP request guard -------------------------------------------------------------------------


class RequestGuard:
    """Pure ASGI middleware: JSON-only request bodies (415) of at most ``max_bytes`` (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if media_type not in JSON_MEDIA_TYPES:
            shown = media_type or "none"
            await _refuse(send, 415, f"Unsupported Content-Type '{shown}': send the body as application/json")
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body: bytes = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._drain(receive, message, size)
                await _refuse(send, 413, self._too_large())
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        buffered: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive, message: Message, size: int) -> None:
        """Read and discard a bounded rest of the body, so that the client sees the 413 instead of a reset."""
        budget = DRAIN_FACTOR * self.max_bytes
        while message.get("more_body", False) and size <= budget:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))

    def _too_large(self) -> str:
        return f"Request body too large: at most {self.max_bytes} bytes are accepted"


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"errors": [{"message": message}]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- GraphQL operation limits -------------------------------------------------------------------


@lru_cache(maxsize=16)
def _depth_rule(max_depth: int) -> type[ASTValidationRule]:
    return depth_validator(max_depth, None)


@lru_cache(maxsize=16)
def _alias_rule(max_aliases: int) -> type[ASTValidationRule]:
    return alias_validator(max_aliases)


@dataclass(frozen=True, slots=True)
class Limits:
    """What :class:`OperationLimits` enforces, taken from the app's settings when the schema is built."""

    max_tokens: int
    max_query_depth: int
    max_aliases: int
    introspection: bool

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            max_tokens=settings.max_tokens,
            max_query_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
            introspection=settings.introspection,
        )


class OperationLimits(SchemaExtension):
    """Depth, alias and token limits and the introspection switch."""

    def __init__(self, *, limits: Limits) -> None:
        self.limits = limits
        rules: list[type[ASTValidationRule]] = [
            _depth_rule(limits.max_query_depth),
            _alias_rule(limits.max_aliases),
        ]
        if not limits.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules = tuple(rules)

    def on_operation(self) -> Iterator[None]:
        ec = self.execution_context
        ec.parse_options["max_tokens"] = self.limits.max_tokens
        ec.validation_rules = (*ec.validation_rules, *self.rules)
        yield


class OneOperationPerRequest(SchemaExtension):
    """A document with several operations needs ``operationName`` (Strawberry would run the first one)."""

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        # Strawberry keeps the client's operationName only as this InitVar-backed attribute (its public
        # ``operation_name`` falls back to the first operation); tests/test_bad_input.py pins the behaviour.
        provided = getattr(ec, "_provided_operation_name", None)
        if document is not None and provided is None and not ec.pre_execution_errors:
            operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            if len(operations) > 1:
                # graphql-core's rule; Strawberry would otherwise run the first operation
                ec.pre_execution_errors = [
                    GraphQLError(
                        "Must provide operation name if query contains multiple operations.",
                        extensions={"code": "GRAPHQL_VALIDATION_FAILED"},
                    )
                ]
        yield


# --- masking ------------------------------------------------------------------------------------


# Strawberry's own refusals of a request, raised before validation: no operation of that name (or none at
# all), an operation type not allowed on this transport, no query. Over HTTP its view answers them with a
# 400; over a WebSocket they arrive as errors wrapping these exceptions. The client's mistake, not ours.
REQUEST_ERRORS = (CannotGetOperationTypeError, InvalidOperationTypeError, MissingQueryError)


def is_client_error(error: GraphQLError) -> bool:
    """Auth, input, limit, parse and validation errors, and Strawberry's refusals of a request."""
    original = error.original_error
    return original is None or isinstance(original, (GraphQLError, *REQUEST_ERRORS))


def should_mask(error: GraphQLError) -> bool:
    """Mask unexpected errors; keep the client's errors readable."""
    return not is_client_error(error)


class MaskUnexpectedErrors(MaskErrors):
    def __init__(self) -> None:
        super().__init__(should_mask_error=should_mask)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        request = getattr(self.execution_context.context, "request", None)
        ref = request_id(request if isinstance(request, HTTPConnection) else None)
        original = error.original_error
        log.error(
            "unexpected error (ref %s) at %s: %s",
            ref,
            ".".join(str(p) for p in error.path or ()) or "-",
            type(original).__name__,
            exc_info=(type(original), original, original.__traceback__) if original is not None else None,
            extra={"request_id": ref},
        )
        return GraphQLError(
            message=masked_message(ref),
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=None,
            extensions={"code": "INTERNAL_SERVER_ERROR", "ref": ref},
        )


# --- rate limits --------------------------------------------------------------------------------


class RateLimit(FieldExtension):
    """Count the call against the caller's account; over the limit, raise a ``RATE_LIMITED`` user error.

    Runs inside the scope check (``graphql_api.permissions.scoped_mutation``), so only allowed callers count,
    and the error becomes the payload's ``errors``.
    """

    def __init__(self, action: Action) -> None:
        super().__init__()
        self.action = action

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: StrawberryInfo[Any, Any], **kwargs: Any
    ) -> Any:
        ctx = info.context
        await ctx.core.rate_limiter.check(self.action, ctx.caller.account_id)
        return await next_(source, info, **kwargs)
