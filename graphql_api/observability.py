"""The request id middleware (ids from ``graphql_api.request_ids``); a log line and metrics per operation."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from graphql_api.context import Context
from graphql_api.request_ids import request_id
from webhooks import metrics

log = logging.getLogger("graphql_api.operations")
HEADER = "X-Request-ID"


class RequestIdMiddleware:
    """Take ``X-Request-ID`` from the request (if short and plain) or make one; echo it on HTTP responses.

    The id is kept on the connection's state (``graphql_api.request_ids.request_id``), so the operation log
    line and the masked-error reference name the same id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id(HTTPConnection(scope))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)


def _account_id(context: Any) -> str | None:
    """The caller's account, if authentication already ran (never triggers a lookup here)."""
    principal = context.authenticated if isinstance(context, Context) else None
    return str(principal.account_id) if principal is not None else None


_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")


def _loggable_name(name: str | None) -> str:
    """An operation name as the log may show it: a GraphQL name, else a placeholder (never client text)."""
    if name is None:
        return "anonymous"
    return name if _NAME.fullmatch(name) else "invalid"


def _request_id(context: Any) -> str | None:
    conn = getattr(context, "request", None)
    return request_id(conn) if isinstance(conn, HTTPConnection) else None


class OperationObservability(SchemaExtension):
    """One structured log line and the operation metrics for every GraphQL operation."""

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        refused = False
        try:
            yield
        except Exception:  # refused before it ran, e.g. an operationName its document lacks
            refused = True
            raise
        finally:
            self._report(time.perf_counter() - started, refused)

    def _report(self, seconds: float, refused: bool = False) -> None:
        ctx = self.execution_context
        try:
            kind = ctx.operation_type.value
        except Exception:  # no document (parse error, empty query)
            kind = "unknown"
        try:
            name = ctx.operation_name
        except Exception:
            name = None
        result = ctx.result
        errors = list(ctx.pre_execution_errors or []) + list(getattr(result, "errors", None) or [])
        outcome = "error" if errors or refused else "ok"
        shown = _loggable_name(name)
        metrics.graphql_operation(name, kind, outcome, seconds)
        fields: dict[str, object] = {
            "operation": shown,
            "operation_type": kind,
            "duration_ms": round(seconds * 1000, 1),
            "outcome": outcome,
            "account_id": _account_id(ctx.context),
            "request_id": _request_id(ctx.context),
        }
        if errors or refused:
            codes = sorted({str((e.extensions or {}).get("code", "ERROR")) for e in errors}) or ["ERROR"]
            fields["error_codes"] = codes
        # one line per operation; a client's mistake is a warning, never its query, variables or values
        log.log(
            logging.WARNING if outcome == "error" else logging.INFO,
            "graphql %s %s %s in %.1f ms",
            kind,
            shown,
            outcome,
            seconds * 1000,
            extra={"fields": fields},
        )
