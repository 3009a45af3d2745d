"""Logging for every process: readable lines in `dev`, JSON lines otherwise (``WEBHOOKS_LOG_*`` settings).

JSON lines are formatted by python-json-logger: one object per line with ``ts``, ``level``, ``logger``,
``msg``, the ``extra={"fields": {...}}`` of the call flattened in, and ``exc`` for a traceback.

Query strings never reach the log: uvicorn's access log line names the path only, because a GraphQL query
sent with GET carries the query text and variables (customer data) in the URL. Nor do the documents that a
MongoDB write error quotes (``ScrubStoreErrors``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pymongo.errors import PyMongoError
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from webhooks.settings import Settings, get_settings


class JsonFormatter(_JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg", "exc_info": "exc"},
            reserved_attrs=[*_RESERVED, "fields"],
            exc_info_as_array=False,
        )
        self.converter = time.gmtime

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message: dict[str, Any]
    ) -> None:
        log_data["ts"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        super().add_fields(log_data, record, message)
        log_data["level"] = str(log_data.get("level", "")).lower()
        fields = record.__dict__.get("fields")
        if isinstance(fields, dict):
            log_data.update(fields)


_RESERVED = [
    "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelno", "lineno",
    "module", "msecs", "msg", "pathname", "process", "processName", "relativeCreated", "stack_info", "thread",
    "threadName", "taskName",
]  # fmt: skip


class DropQueryStrings(logging.Filter):
    """uvicorn's access line ``'%s - "%s %s HTTP/%s" %d'`` has the path and query as its third argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


class StoreErrorDetails(Exception):
    """Stands in, in a log record, for a MongoDB error whose message would carry documents."""


class ScrubStoreErrors(logging.Filter):
    """A MongoDB write error's message holds its details: for a failed insert or update, the document itself
    (a receiver's response body and headers, an event's payload, an idempotency key). A record whose
    exception is, or was caused by, such an error keeps its traceback but shows the error's type and code
    only."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if info and info[1] is not None and (summary := _store_error_summary(info[1])) is not None:
            scrubbed = StoreErrorDetails(summary)
            record.exc_info = (StoreErrorDetails, scrubbed, info[2])
            record.exc_text = None
        return True


def _store_error_summary(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, PyMongoError) and getattr(seen, "details", None) is not None:
            code = getattr(seen, "code", None)
            return f"{type(seen).__name__} (code {code}); its details are left out of the log"
        seen = seen.__cause__ or seen.__context__
    return None


# Libraries whose DEBUG lines quote what customers sent or stored: PyMongo's command log (every document
# written and read: webhook URLs and names, event payloads, receivers' responses) and uvicorn's protocol
# trace (request headers and WebSocket frames: API keys, queries). They log at INFO at most, whatever
# WEBHOOKS_LOG_LEVEL says; their INFO lines and above are kept.
DATA_LOGGERS = ("pymongo.command", "uvicorn.error", "websockets")


def configure_logging(json_lines: bool | None = None, settings: Settings | None = None) -> None:
    """Configure the root logger from ``settings`` (default: the environment's); ``json_lines`` overrides."""
    settings = settings or get_settings()
    if json_lines is None:
        json_lines = settings.log_format == "json"
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    handler.setFormatter(formatter)
    handler.addFilter(ScrubStoreErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    data_level = max(logging.getLevelNamesMapping()[settings.log_level], logging.INFO)
    for name in DATA_LOGGERS:
        logging.getLogger(name).setLevel(data_level)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQueryStrings) for f in access.filters):
        access.addFilter(DropQueryStrings())
