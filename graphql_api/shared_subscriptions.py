"""Shared subscriptions: each live-feed message is executed once per *distinct* subscription, not per socket.

Without this, every open subscription runs its own GraphQL execution for every message (graphql-core maps
the source stream through ``execute`` per subscriber), and every ``next`` frame is JSON-encoded again per
socket.  With 1,000 subscribers of the same query that is 1,000 executions and 1,000 encodings of the
same value.

Here, subscriptions over graphql-transport-ws that are the same operation (same query text, operation
name and variables) for the same caller (same account and the same API-key scopes, so authorization gives
the same answer) share one :class:`Group`:

- the group runs ONE Strawberry stream (``schema.subscribe``, with the first member's context) and
  encodes each result's payload once;
- every member gets that payload wrapped in its own ``{"id": …, "type": "next", "payload": …}`` frame
  (a string concatenation: the operation id differs per socket, the payload bytes do not);
- frames go through a per-connection :class:`Outbox` written by one task per connection, so a slow socket
  never holds up the group or the other sockets.  A member with ``feed.QUEUE_SIZE`` frames still unsent is
  dropped exactly as a slow feed subscriber is: a ``next`` with the ``SUBSCRIBER_TOO_SLOW`` error, then
  ``complete``;
- a result with errors, the first result being an error (``NOT_FOUND``, ``FORBIDDEN``, …) and the end of
  the stream reach every member the same way a private stream would send them.

Anything else (queries or mutations over the socket, a document that does not parse, the legacy
graphql-ws protocol) takes Strawberry's ordinary path.

Strawberry's public hooks used: ``GraphQL.graphql_transport_ws_handler_class`` (this handler), the
handler's ``run_operation`` / ``send_message``, ``Operation.send_operation_message`` and the view's
``encode_json`` (:func:`encode_json` passes a pre-encoded :class:`RawFrame` through).  The behaviour these
rely on is pinned by ``tests/test_shared_subscriptions.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import (
    FieldNode,
    GraphQLError,
    NullValueNode,
    OperationType,
    StringValueNode,
    VariableNode,
    get_operation_ast,
    parse,
)
from graphql.error import GraphQLSyntaxError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message, NextMessage
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.utils.aio import aclosing

from graphql_api import feed as feed_module
from graphql_api.context import Context
from graphql_api.transport import NullPayloadTransportWS
from webhooks import metrics
from webhooks.models import Scope

log = logging.getLogger(__name__)

TOO_SLOW_CODE = "SUBSCRIBER_TOO_SLOW"

# True inside a group's stream: the subscription resolvers count members, not groups (see subscriptions.py).
IN_SHARED_STREAM: contextvars.ContextVar[bool] = contextvars.ContextVar("in_shared_stream", default=False)

Key = tuple[str, tuple[str, ...], str, str | None, bytes]


class RawFrame(dict[str, Any]):
    """A message already encoded: :func:`encode_json` sends its text as is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


def encode_json(data: object) -> str:
    """The view's ``encode_json``: pre-encoded frames pass through, anything else as Strawberry does."""
    if isinstance(data, RawFrame):
        return data.text
    return json.dumps(data)


def _encode_payload(payload: Mapping[str, Any]) -> str:
    try:
        return orjson.dumps(payload).decode()
    except TypeError:  # e.g. an int beyond 64 bits: the standard encoder handles it
        return json.dumps(payload)


def result_payload(result: ExecutionResult) -> dict[str, Any]:
    """What graphql-transport-ws's ``next`` carries for ``result`` (as ``Operation.send_next`` builds it)."""
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [err.formatted for err in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    return payload


def too_slow_payload(field_name: str) -> dict[str, Any]:
    error = GraphQLError(feed_module.TOO_SLOW, path=[field_name], extensions={"code": TOO_SLOW_CODE})
    return {"data": None, "errors": [error.formatted]}


@dataclass(slots=True)
class Ending:
    """How a member's subscription ends: an ``error`` message, a last ``next``, then ``complete``."""

    error: list[Any] | None = None  # graphql-transport-ws ``error`` payload (nothing sent after it)
    last_next: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------- outbox


class Outbox:
    """The frames waiting for one socket, written in order by one task."""

    def __init__(self, handler: SharedSubscriptionsHandler) -> None:
        self._handler = handler
        self._frames: deque[tuple[Member | None, RawFrame, asyncio.Future[None] | None]] = deque()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._write(), name="graphql-ws-outbox")
        self.closed = False

    def push(self, member: Member | None, frame: RawFrame, done: asyncio.Future[None] | None = None) -> None:
        if member is not None:
            member.pending += 1
        self._frames.append((member, frame, done))
        self._wake.set()

    def discard(self, member: Member) -> None:
        """Drop the frames still queued for ``member``: it has left (completed by its client, or dropped as
        too slow). Sent after, they went out under an operation id the client may have reused (another
        subscription's), and a client that never read kept them in memory, cycle after cycle."""
        if member.pending:
            self._frames = deque(f for f in self._frames if f[0] is not member)
            member.pending = 0

    async def send(self, frame: RawFrame) -> None:
        """Queue ``frame`` behind everything queued before it, and wait until it is written."""
        if self.closed:
            raise ConnectionError("the socket is closed")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.push(None, frame, done)
        await done

    async def _write(self) -> None:
        websocket = self._handler.websocket
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._frames:
                    member, frame, done = self._frames.popleft()
                    if member is not None:
                        member.pending -= 1
                    try:
                        await websocket.send_json(frame)
                    except Exception as exc:
                        if done is not None and not done.done():
                            done.set_exception(exc)
                        raise
                    if done is not None and not done.done():
                        done.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away: the handler's own shutdown ends its operations
            pass
        finally:
            self.closed = True
            for _member, _frame, done in self._frames:
                if done is not None and not done.done():
                    done.set_exception(ConnectionError("the socket is closed"))
            self._frames.clear()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ---------------------------------------------------------------------------------------------- groups


@dataclass(eq=False, slots=True)
class Member:
    outbox: Outbox
    prefix: str  # '{"id":"<op id>","type":"next","payload":'
    ended: asyncio.Future[Ending]
    pending: int = 0


@dataclass(eq=False)
class Group:
    """One stream of one distinct subscription, fanned out to its members' sockets."""

    hub: Hub
    key: Key
    field_name: str
    members: set[Member] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    closed: bool = False
    feed_stats: Any = None

    def start(self, handler: SharedSubscriptionsHandler, operation: Operation[Context, None]) -> None:
        feed = getattr(handler.context.request.app.state, "feed", None)
        self.feed_stats = getattr(feed, "stats", None)
        self.task = asyncio.create_task(self._run(handler, operation), name="graphql-shared-subscription")

    async def _run(self, handler: SharedSubscriptionsHandler, operation: Operation[Context, None]) -> None:
        IN_SHARED_STREAM.set(True)
        ending = Ending()
        try:
            stream = await handler.schema.subscribe(
                operation.query,
                variable_values=operation.variables,
                context_value=handler.context,
                root_value=handler.root_value,
                operation_name=operation.operation_name,
            )
            first = True
            async with aclosing(stream):
                async for result in stream:
                    if first and isinstance(result, PreExecutionError):
                        ending = Ending(error=[err.formatted for err in result.errors or []])
                        return
                    first = False
                    self._fan_out(_encode_payload(result_payload(result)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("shared subscription failed")
            ending = Ending(error=[{"message": "Unexpected error"}])
        finally:
            self._close(ending)

    def _fan_out(self, payload: str) -> None:
        limit = feed_module.QUEUE_SIZE
        slow: list[Member] = []
        for member in self.members:
            if member.pending >= limit:
                slow.append(member)
            else:
                member.outbox.push(member, RawFrame(member.prefix + payload + "}"))
        for member in slow:
            self.hub.dropped(member, self.feed_stats)
            self.leave(member, discard=True)
            if not member.ended.done():
                member.ended.set_result(Ending(last_next=too_slow_payload(self.field_name)))

    def join(self, member: Member) -> None:
        self.members.add(member)

    def leave(self, member: Member, *, discard: bool = False) -> None:
        """``member`` leaves; with ``discard``, its frames not yet written are dropped (a member whose
        stream ended keeps them: they go out before its ``complete``)."""
        self.members.discard(member)
        if discard:
            member.outbox.discard(member)
        if not self.members and not self.closed:
            self.closed = True
            self.hub.forget(self)
            if self.task is not None:
                self.task.cancel()

    def _close(self, ending: Ending) -> None:
        self.closed = True
        self.hub.forget(self)
        for member in self.members:
            if not member.ended.done():
                member.ended.set_result(ending)
        self.members.clear()


class Hub:
    """The groups of one API process (one per view)."""

    def __init__(self) -> None:
        self.groups: dict[Key, Group] = {}
        self.members_dropped = 0

    def group_for(self, key: Key, field_name: str) -> tuple[Group, bool]:
        """The open group for ``key`` (and whether it is new: the caller starts it)."""
        group = self.groups.get(key)
        if group is not None and not group.closed:
            return group, False
        group = Group(self, key, field_name)
        self.groups[key] = group
        return group, True

    def forget(self, group: Group) -> None:
        if self.groups.get(group.key) is group:
            del self.groups[group.key]

    def dropped(self, member: Member, stats: Any) -> None:
        self.members_dropped += 1
        if stats is not None:  # counted with the feed's own drops
            stats.dropped += 1
        log.warning("live feed: dropped a slow shared subscriber (%d frames unsent)", member.pending)

    def subscriber_count(self) -> int:
        return sum(len(g.members) for g in self.groups.values())


# --------------------------------------------------------------------------------------------- handler


def _subscription_field(query: str, operation_name: str | None) -> FieldNode | None:
    """The root field of ``query`` if it is a subscription operation, else None (ordinary path)."""
    try:
        document = parse(query)
    except GraphQLSyntaxError:
        return None
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation is not OperationType.SUBSCRIPTION:
        return None
    selections = operation.selection_set.selections
    first = selections[0] if selections else None
    return first if isinstance(first, FieldNode) else None


def _webhook_argument(root: FieldNode, variables: Mapping[str, Any] | None) -> object:
    """The root field's ``webhookId`` (a literal, or the variable's value), None if not given."""
    for argument in root.arguments or ():
        if argument.name.value != "webhookId":
            continue
        value = argument.value
        if isinstance(value, VariableNode):
            return (variables or {}).get(value.name.value)
        if isinstance(value, StringValueNode):
            return value.value
        return None if isinstance(value, NullValueNode) else value
    return None


class SharedSubscriptionsHandler(NullPayloadTransportWS):
    """graphql-transport-ws with shared subscriptions (see the module docstring); a null
    ``connection_init`` payload is read as none."""

    _outbox: Outbox | None = None

    @property
    def hub(self) -> Hub:
        """The view's (one per process); a view without one gets its own on first use."""
        hub: Hub | None = getattr(self.view, "hub", None)
        if hub is None:
            hub = Hub()
            self.view.hub = hub  # type: ignore[attr-defined]
        return hub

    async def _share_key(self, operation: Operation[Context, None]) -> tuple[Key, str] | None:
        if not isinstance(operation.query, str):
            return None
        root = _subscription_field(operation.query, operation.operation_name)
        if root is None:
            return None
        field_name = (root.alias or root.name).value
        who = await self.context.principal()
        if who is None:
            return None
        try:
            variables = orjson.dumps(operation.variables or {}, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return None
        scopes = tuple(sorted(s.value for s in who.scopes))
        key = (str(who.account_id), scopes, operation.query, operation.operation_name, variables)
        existing = self.hub.groups.get(key)
        if existing is not None and not existing.closed and not await self._may_join(root, operation):
            return None  # the ordinary path runs the resolver, which answers with the error
        return key, field_name

    async def _may_join(self, root: FieldNode, operation: Operation[Context, None]) -> bool:
        """What the resolver checks of a caller, for one joining a running group (which never runs it for
        the joiner): still allowed, and the webhook it filters by still exists in its account. A webhook
        deleted since the group started made an identical subscription live, where a new one was NOT_FOUND."""
        try:
            who = await self.context.require(Scope.MANAGE_WEBHOOKS)
            await self.context.webhook_filter(who, _webhook_argument(root, operation.variables))
        except GraphQLError:
            return False
        return True

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        shared = await self._share_key(operation)
        if shared is None:
            await super().run_operation(operation)
            return
        key, field_name = shared
        if self._outbox is None:
            self._outbox = Outbox(self)
        prefix = '{"id":' + json.dumps(operation.id) + ',"type":"next","payload":'
        member = Member(self._outbox, prefix, asyncio.get_running_loop().create_future())
        group, new = self.hub.group_for(key, field_name)
        group.join(member)
        if new:
            group.start(self, operation)
        metrics.subscription_opened()
        try:
            ending = await member.ended
        except asyncio.CancelledError:  # the client completed it (or left): nothing more goes out for it
            group.leave(member, discard=True)
            raise
        finally:
            group.leave(member)
            metrics.subscription_closed()
        with contextlib.suppress(Exception):
            if ending.error is not None:
                await operation.send_operation_message(
                    {"id": operation.id, "type": "error", "payload": ending.error}
                )
                return
            if ending.last_next is not None:
                last: NextMessage = {"id": operation.id, "type": "next", "payload": ending.last_next}  # type: ignore[typeddict-item]
                await operation.send_operation_message(last)
            await operation.send_operation_message({"id": operation.id, "type": "complete"})

    async def send_message(self, message: Message) -> None:
        # Once shared frames flow on this socket, every message queues behind them (keeps the order).
        if self._outbox is not None and not self._outbox.closed:
            await self._outbox.send(RawFrame(encode_json(message)))
        else:
            await super().send_message(message)

    async def shutdown(self) -> None:
        await super().shutdown()
        if self._outbox is not None:
            await self._outbox.close()
